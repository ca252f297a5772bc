"""One run of `vit-explain` on this machine: images in, one explanation each, written by the sinks.

The local engine is one `Run`; under torchrun every rank is one `Run` of the same code on its
shard of the inputs (engines/torchrun.py gives it a `Group` of processes). The per-image work,
decoding, explaining and describing each image, is `Explaining` (explaining.py), shared with the
Ray engine's actors.

A run holds a lock on its output folder (the group's leader does), so a second run into it is
refused. Two ways to know an image is done from an earlier run:
* with the Parquet table (`--outputs parquet`): the table has an explained row for the same
  request (input, method, parameters, model weights); the table is the per-image record and
  manifest.json describes the runs (versions, command lines, counts, failures);
* otherwise: the manifest has an entry for the same request made by the same model (name,
  checkpoint hash, weights fingerprint), and every selected output exists with the size
  recorded for it; anything else is redone.
SIGTERM ends a run like Ctrl-C: the decoding workers stop, finished images are written and
listed, and the command exits with 143.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import timm
import torch
import tqdm

from .._version import __version__
from ..io.dataset import image_batches
from ..io.images import ImageError
from ..io.inputs import find_run_inputs
from ..io.manifest import Manifest, entry_key
from ..io.messages import shown
from ..io.models import ModelLoadError, load_model
from ..io.outputs import OutputError, OutputLock, check_inputs_outside, check_output_dir, remove_leftovers
from ..io.sinks import SHEETS, SINKS, ExplainedImage, close_all
from ..io.table import COLUMNS, DATASET, new_run_id, repair, survey
from ..io.writer import BackgroundWriter
from ..methods.sharing import share_recordings
from .common import misnamed_message, report, resolve_device
from .errors import EXIT_INPUT, EXIT_MODEL, EXIT_OK, EXIT_OUTPUT, EXIT_SOME_FAILED, CommandError, cannot_write
from .explaining import Explaining, Outcome
from .options import Options
from .selection import selected_sinks

EXIT_TERMINATED = 128 + signal.SIGTERM  # the shell's code for a process ended by SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C (finally blocks run), then exit with 143."""


@contextlib.contextmanager
def sigterm_unwinds():
    """While the run lasts, SIGTERM raises Terminated in the main thread instead of killing the
    process on the spot (which would leave decoding workers behind and the manifest unsaved)."""
    def handler(signum, frame):
        raise Terminated()
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def writes_table(options: Options) -> bool:
    """The run writes the Parquet table, which is then its per-image record."""
    return any(getattr(SINKS.get(name), "table", False) for name in selected_sinks(options))


def run_methods(options: Options) -> tuple[str, ...]:
    return options.method_list or (options.method,)


class Group:
    """The processes of one run: just this one for the local engine. torchrun's ranks have one
    with collective operations (engines/torchrun.py)."""
    rank, world = 0, 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        pass

    def broadcast(self, value):
        """The leader's value, on every process."""
        return value

    def gather(self, value) -> list:
        """Every process's value, in rank order (on every process)."""
        return [value]


# --- manifest.json: the header every engine writes -----------------------------------------------

def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def versions(**more) -> dict:
    found = {"vit_explain": __version__, "torch": torch.__version__, "timm": timm.__version__}
    with contextlib.suppress(ImportError):
        import pyarrow
        found["pyarrow"] = pyarrow.__version__
    return {**found, **more}


def run_entry(options: Options, explaining: Explaining, engine: str, lanes=(), **more) -> dict:
    """This run, as manifest.json's `runs` lists it (counts are added at the end); a run of
    several methods lists each with its parameters under `methods`, and every method's outputs."""
    outputs = list(dict.fromkeys(name for lane in lanes for name in lane.names)) if lanes else \
        list(selected_sinks(options))
    entry = {"run": explaining.run, "engine": engine, "command_line": list(options.command_line),
             "started": now(), "method": options.method, "parameters": explaining.parameters,
             "model": explaining.identity, "outputs": outputs, **more}
    if len(lanes) > 1:
        entry["methods"] = {lane.explaining.options.method: lane.explaining.parameters for lane in lanes}
    return entry


def open_manifest(options: Options, entry: dict, table: bool, **extra_versions) -> Manifest:
    """The manifest of the output folder with this run added to its `runs`; the images listed by
    earlier runs (and, when this run does not write the table, the table's summary) are kept."""
    path = Path(options.output_dir) / "manifest.json"
    try:
        previous = json.loads(path.read_text())
        previous = previous if isinstance(previous, dict) else {}
    except (OSError, ValueError):
        previous = {}
    runs = previous.get("runs") if isinstance(previous.get("runs"), list) else []
    header = {**versions(**extra_versions), "model": options.model, "hub": options.hub,
              "checkpoint": options.checkpoint, "runs": [*runs, entry]}
    if not table:
        header.update({k: previous[k] for k in ("table", "failures") if k in previous})
    return Manifest(Path(options.output_dir), header)


def finish_manifest(manifest: Manifest, counts: dict, table: bool) -> dict | None:
    """Count this run, and with the table: keep one row per request (survey) and list the table's
    totals and failures. Saves manifest.json. Returns the table's survey (None without it)."""
    state = None
    manifest.header["runs"][-1].update(counts=counts, finished=now())
    if table:
        state = survey(manifest.path.parent / DATASET)
        manifest.header["table"] = {**{k: state[k] for k in ("path", "rows", "explained", "failed", "files")},
                                    "columns": COLUMNS}
        manifest.header["failures"] = state["failures"]
    manifest.save()
    return state


def summary_line(explained: int, failed: int, skipped: int) -> str:
    line = f"{explained} explained, {failed} failed"
    if skipped:
        line += f" ({skipped} skipped: outputs exist; --overwrite redoes them)"
    return line


# --- the run ---------------------------------------------------------------------------------------

@dataclass
class Lane:
    """One method of a run: its Explaining, the names of its outputs and the sinks that write
    them (its own file sinks, then the ones the run shares between its methods: the folder sheet
    and the table, which goes last: its row stands for what the others wrote)."""
    explaining: Explaining
    names: tuple[str, ...]
    sinks: list


class Run:
    def __init__(self, options: Options, group: Group | None = None, engine: str = "local"):
        self.group = group or Group()
        self.engine = engine
        self.table = writes_table(options)
        self.inputs = self.find_inputs(options)
        run_id = self.group.broadcast(new_run_id() if self.group.leader else None)
        self.options = options = dataclasses.replace(options, run_id=run_id, rank=self.group.rank)
        try:
            model = load_model(options.model, options.hub, options.checkpoint, resolve_device(options.device))
        except ModelLoadError as error:
            raise CommandError(str(error), EXIT_MODEL) from None
        # one Explaining per method, sharing the model, its fingerprint and the output names
        methods = run_methods(options)
        self.explaining = Explaining(dataclasses.replace(options, method=methods[0]), model, run=run_id)
        self.explaining.name_outputs(self.inputs.images, self.inputs.root)
        explainings = [self.explaining] + [
            Explaining(dataclasses.replace(options, method=name), model, run=run_id, identity=self.explaining.identity)
            for name in methods[1:]]
        for other in explainings[1:]:
            other.stems = self.explaining.stems
        # methods that read the same recording (rollout, raw attention, flow; grad-rollout, chefer,
        # gradsam) share one forward (and backward) per batch
        share_recordings([explaining.explainer for explaining in explainings])
        self.spec = self.explaining.spec
        self.lanes = self.make_lanes(explainings)
        self.lock = OutputLock(options.output_dir)
        self.manifest: Manifest | None = None
        problem = None
        if self.group.leader:
            try:
                check_inputs_outside(options.output_dir, self.inputs.local)
                self.lock.acquire()
                remove_leftovers(options.output_dir)  # temporary files of killed runs; ours is the only run now
                if self.table:
                    repair(Path(options.output_dir) / DATASET)  # journals of killed runs, torn part files
                self.manifest = open_manifest(options, run_entry(options, self.explaining, engine, self.lanes,
                                                                 processes=self.group.world), self.table)
            except (OutputError, OSError) as error:
                self.lock.release()
                problem = str(error) if isinstance(error, OutputError) else \
                    f"cannot prepare {shown(options.output_dir)}: {error.strerror or error}"
        problem = self.group.broadcast(problem)
        if problem is not None:
            raise CommandError(problem, EXIT_OUTPUT)
        self.group.barrier()  # the leader has repaired the table: every process reads it whole
        self.explained = self.failed = self.skipped = 0
        self._lock = threading.Lock()  # the counters, shared with the writer threads
        self._writer: BackgroundWriter | None = None
        self.stop: CommandError | None = None  # set by a writer thread when no output can be written
        self.plan: dict = {}  # input -> the lanes this run explains it with

    def make_lanes(self, explainings: list[Explaining]) -> list[Lane]:
        """Each method's sinks; one instance of each shared sink (the table, the folder sheet)
        and of the comparison sheet, which the run feeds itself."""
        shared: dict = {}
        self.sheet = self.folder_sheet = self.rows = None
        lanes = []
        for explaining in explainings:
            names = selected_sinks(explaining.options)
            sinks = []
            for name in sorted((n for n in names if n in SINKS),
                               key=lambda n: bool(getattr(SINKS[n], "table", False))):
                if getattr(SINKS[name], "table", False):
                    sinks.append(shared.setdefault(name, SINKS[name](self.options)))
                else:
                    sinks.append(SINKS[name](explaining.options))
            if "folder-sheet" in names:
                if self.folder_sheet is None:
                    self.folder_sheet = SHEETS["folder-sheet"](self.options, run_methods(self.options))
                sinks.insert(len(sinks) - bool(self.table), self.folder_sheet)
            if "sheet" in names and self.sheet is None:
                self.sheet = SHEETS["sheet"](self.options)
            lanes.append(Lane(explaining, names, sinks))
        self.rows = shared.get(next((n for n in shared), None))
        return lanes

    @staticmethod
    def find_inputs(options: Options):
        """The inputs, then the output folder, checked before the slow model load."""
        try:
            inputs = find_run_inputs(options.image_path)
        except ImageError as error:
            raise CommandError(str(error), EXIT_INPUT) from None
        try:
            check_output_dir(options.output_dir, Path(options.image_path))
        except OutputError as error:
            raise CommandError(str(error), EXIT_OUTPUT) from None
        return inputs

    def lane_done(self, lane: Lane, path) -> tuple[bool, list[dict]]:
        """(whether an earlier run made this method's outputs of the input with this model, whole,
        for every prompt or reference of a target run; the manifest entries it left)."""
        states = [self.request_done(lane, path, request) for request in lane.explaining.requests(path)]
        # the entries also when outputs are missing: the comparison sheet may still be whole
        return all(done for done, _ in states), [entry for _, entry in states]

    def request_done(self, lane: Lane, path, request: dict) -> tuple[bool, dict | None]:
        if self.table:
            return self.rows.done(None, request), None
        entry = self.manifest.get(entry_key(request))
        if entry is None or entry.get("status") != "explained" or entry.get("model") != lane.explaining.identity:
            return False, None
        category = (entry.get("explained_class") or {}).get("index")  # named after what it explains
        explaining = lane.explaining
        base = explaining.base_for(path, explaining.label(category) if explaining.spec.class_specific else None)
        return all(sink.done(base, entry) for sink in lane.sinks) and self.manifest.done(base, entry), entry

    def lanes_to_do(self, path) -> list[Lane]:
        """The methods this run explains the input with: those not done by an earlier run; all of
        them when its comparison sheet is missing or stale (the sheet needs every method's map)."""
        if self.options.overwrite:
            return list(self.lanes)
        states = [self.lane_done(lane, path) for lane in self.lanes]
        if self.sheet is not None and not self.table and not self.sheet.done_group(
                self.explaining.stems.get(path), [entry for _, entries in states for entry in entries]):
            return list(self.lanes)
        return [lane for lane, (done, _) in zip(self.lanes, states) if not done]

    def already_done(self, path) -> bool:
        """Every method's outputs of the input are there from an earlier run (see lanes_to_do)."""
        return not self.lanes_to_do(path)

    def fail(self, path, message: str, lanes=None) -> None:
        """The input failed (for the given methods; default all): one line, and an entry or a
        row for each method."""
        with self._lock:
            self.failed += 1
            report(message)
        self.record_failures(path, [(lane, message) for lane in (lanes or self.lanes)])

    def record_failures(self, path, failures) -> None:
        for lane, message in failures:
            entry = lane.explaining.failure(path, message)
            if self.table:
                self.rows.fail(entry, message)
            else:
                self.manifest.add(entry)

    def execute(self) -> int:
        finished = False
        try:
            with sigterm_unwinds():
                self.explain_all()
                finished = True
                if self.table:
                    self.finish_table()
        except Terminated:
            raise CommandError(f"terminated (SIGTERM): {self.explained} images explained, written and listed "
                               "in the manifest; a re-run does the rest", EXIT_TERMINATED) from None
        finally:
            try:
                if not finished and self.table and self.group.world == 1:
                    # interrupted: the rows written so far are the table; list them in the manifest too
                    with contextlib.suppress(OSError):
                        finish_manifest(self.manifest, self.counts(), True)
            finally:
                self.lock.release()
        if not self.table:
            print(summary_line(self.explained, self.failed, self.skipped), file=sys.stderr)
        failed = self.group.broadcast(self.failed)
        return EXIT_SOME_FAILED if failed else EXIT_OK

    def counts(self) -> dict:
        return {"explained": self.explained, "failed": self.failed, "skipped": self.skipped}

    def finish_table(self) -> None:
        """Every process has written its part files: the leader surveys the table, saves the
        manifest and prints the run's totals."""
        counts = self.group.gather((self.explained, self.failed, self.skipped))
        explained, failed, skipped = (sum(c[i] for c in counts) for i in range(3))
        self.failed = failed
        if not self.group.leader:
            return
        try:
            finish_manifest(self.manifest, {"explained": explained, "failed": failed, "skipped": skipped}, True)
        except OSError as error:
            raise CommandError(f"cannot save the table and manifest in {shown(self.options.output_dir)}: "
                               f"{error.strerror or error}", EXIT_OUTPUT) from None
        print(summary_line(explained, failed, skipped), file=sys.stderr)

    def explain_all(self) -> None:
        o, group = self.options, self.group
        if group.leader:
            for path in self.inputs.misnamed:
                self.fail(path, misnamed_message(path))
            for uri in self.inputs.uris:
                self.fail(uri, f"{shown(uri)}: URIs are read by --engine ray only")
        for path in self.inputs.local:
            lanes = self.lanes_to_do(path)
            if lanes:
                self.plan[path] = lanes
        todo = [p for p in self.inputs.local if p in self.plan]
        mine = todo[group.rank::group.world]  # strided over the sorted inputs: no padding, no repeats
        self.skipped = len(self.inputs.local) - len(todo) if group.leader else 0
        workers = o.workers if o.workers is not None else (
            0 if len(mine) <= o.batch_size else max(1, min(4, (os.cpu_count() or 1) // group.world)))
        progress = tqdm.tqdm(total=len(mine), unit="img", disable=o.quiet or not mine or not group.leader,
                             desc="explaining", file=sys.stderr)
        # images waiting to be written stay in memory: at most two batches of them
        self._writer = BackgroundWriter(pending=2 * o.batch_size)
        # decoded and preprocessed once, whatever the number of methods
        batches = image_batches(mine, self.explaining.preprocess, o.batch_size, workers)
        try:
            for batch in batches:
                # per input, every method's outcomes (several per method with several prompts)
                outcomes: dict = {item["path"]: [] for item in batch}
                for lane in self.lanes:
                    items = [item for item in batch if lane in self.plan[item["path"]]]
                    for outcome in lane.explaining.explain(items) if items else ():
                        outcomes[outcome.path].append((lane, outcome))
                for path, found in outcomes.items():
                    self.settle(path, found)
                progress.update(len(batch))
                if self.stop is not None:
                    break
        finally:
            batches.close()  # stops the decoding workers now, also on an interrupt
            try:
                self._writer.close()  # every finished image is written before the sinks close
            finally:
                progress.close()
                self.close_sinks()
        if self.stop is not None:
            raise self.stop

    def close_sinks(self) -> None:
        """Close every sink once (the folder sheet writes its pages, the table its last part), then
        save the manifest with this run's counts and pages, also when a sink could not close."""
        sinks = list({id(sink): sink for lane in self.lanes for sink in lane.sinks}.values())
        problem = None
        try:
            close_all(sinks)
        except OSError as error:
            problem = error
        if self.manifest is not None and self.folder_sheet is not None and self.folder_sheet.pages:
            self.manifest.header["runs"][-1]["sheets"] = [str(p) for p in self.folder_sheet.pages]
        if not self.table:  # this run's counts, in the manifest it saves now
            self.manifest.header["runs"][-1].update(counts=self.counts(), finished=now())
            try:
                self.manifest.close()
            except OSError as error:
                problem = problem or error
        if problem is not None:
            raise CommandError(f"cannot save the manifest in {shown(self.options.output_dir)}: "
                               f"{problem.strerror or problem}", EXIT_OUTPUT)

    def settle(self, path, found: list[tuple[Lane, Outcome]]) -> None:
        """One input's outcomes, a method each: failures recorded here (a decoding error, the same
        for every method, is one line), the explained maps handed to a writer thread."""
        failures = [(lane, outcome.error) for lane, outcome in found if outcome.error]
        for message in dict.fromkeys(message for _, message in failures):
            report(message)
        self.record_failures(path, failures)
        explained = [(lane, outcome.image) for lane, outcome in found if not outcome.error]
        if explained:
            self._writer.submit(self.write_outputs, path, explained, bool(failures))
        elif failures:
            with self._lock:
                self.failed += 1

    def write_outputs(self, path, explained: list[tuple[Lane, ExplainedImage]], failed: bool = False) -> None:
        """Write one input's outputs: each method's, then its comparison sheet, then each
        method's manifest entry (which lists them)."""
        if self.stop is not None:  # the disk is full: this image waits for the next run, like the rest
            return
        written = []
        for lane, item in explained:
            try:
                for sink in lane.sinks:
                    sink.write(item)
            except OSError as error:
                failed = True
                message = f"{shown(path)}: cannot write outputs: {error}"
                report(message)
                self.record_failures(path, [(lane, message)])
                if cannot_write(error):  # a full disk fails every image after it too: stop the run
                    self.stop = CommandError(f"cannot write to {shown(self.options.output_dir)}: "
                                             f"{error.strerror or error}", EXIT_OUTPUT)
                    break
            else:
                written.append(item)
        if written and self.sheet is not None:
            failed |= not self.write_sheet(path, written)
        if not self.table:
            for item in written:
                self.manifest.write(item)
        with self._lock:
            if failed:
                self.failed += 1
            else:
                self.explained += 1

    def write_sheet(self, path, items: list[ExplainedImage]) -> bool:
        """The input's comparison sheet from the maps of this run, or, when this run redid only
        some methods (the sheet of an earlier run is whole), that sheet recorded for them too.
        False (and one line) when it cannot be written."""
        stem = self.explaining.stems.get(path)
        if len(self.plan.get(path, self.lanes)) < len(self.lanes):
            sheet = self.sheet.path(stem)
            try:
                size = sheet.stat().st_size
            except OSError as error:  # removed since the run began: the next run redoes the image
                report(f"{shown(path)}: its comparison sheet is gone: {error.strerror or error}")
                return False
            for item in items:
                item.outputs[self.sheet.name], item.output_bytes[self.sheet.name] = str(sheet), size
            return True
        if self.table and len(items) < len(self.lanes):
            return True  # the table keeps no record of sheets: never replace a whole one by a partial one
        try:
            self.sheet.write_group(stem, items)
        except OSError as error:
            report(f"{shown(path)}: cannot write its comparison sheet: {error}")
            return False
        return True


__all__ = ["Run", "Group", "Lane", "ExplainedImage", "selected_sinks", "writes_table", "EXIT_TERMINATED"]
