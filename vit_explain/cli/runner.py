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
from ..io.sinks import DEFAULT_SINKS, SINKS, ExplainedImage, close_all
from ..io.table import COLUMNS, DATASET, new_run_id, repair, survey
from ..io.writer import BackgroundWriter
from ..methods.table import METHODS
from .common import misnamed_message, report, resolve_device
from .errors import EXIT_INPUT, EXIT_MODEL, EXIT_OK, EXIT_OUTPUT, EXIT_SOME_FAILED, CommandError, cannot_write
from .explaining import Explaining, Outcome
from .options import Options

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


def selected_sinks(options: Options) -> tuple[str, ...]:
    """The output sinks of a run: --outputs, or the overlay, the mask and the method's extra outputs."""
    return options.outputs or DEFAULT_SINKS + METHODS[options.method].extra_outputs


def writes_table(options: Options) -> bool:
    """The run writes the Parquet table, which is then its per-image record."""
    return any(getattr(SINKS[name], "table", False) for name in selected_sinks(options))


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


def run_entry(options: Options, explaining: Explaining, engine: str, **more) -> dict:
    """This run, as manifest.json's `runs` lists it (counts are added at the end)."""
    return {"run": explaining.run, "engine": engine, "command_line": list(options.command_line),
            "started": now(), "method": options.method, "parameters": explaining.parameters,
            "model": explaining.identity, "outputs": list(selected_sinks(options)), **more}


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
        self.explaining = Explaining(options, model, run=run_id)
        self.explaining.name_outputs(self.inputs.images, self.inputs.root)
        self.spec = self.explaining.spec
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
                self.manifest = open_manifest(options, run_entry(options, self.explaining, engine,
                                                                 processes=self.group.world), self.table)
            except (OutputError, OSError) as error:
                self.lock.release()
                problem = str(error) if isinstance(error, OutputError) else \
                    f"cannot prepare {shown(options.output_dir)}: {error.strerror or error}"
        problem = self.group.broadcast(problem)
        if problem is not None:
            raise CommandError(problem, EXIT_OUTPUT)
        self.group.barrier()  # the leader has repaired the table: every process reads it whole
        # the table's row, or the manifest's entry, goes last: it stands for what the others wrote
        names = sorted(selected_sinks(options), key=lambda name: bool(getattr(SINKS[name], "table", False)))
        self.sinks = [SINKS[name](options) for name in names]
        self.rows = self.sinks[-1] if self.table else None
        if not self.table:
            self.sinks.append(self.manifest)
        self.explained = self.failed = self.skipped = 0
        self._lock = threading.Lock()  # the counters, shared with the writer threads
        self._writer: BackgroundWriter | None = None
        self.stop: CommandError | None = None  # set by a writer thread when no output can be written

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

    def already_done(self, path) -> bool:
        """An earlier run made this request's outputs with this model, and they are whole."""
        if self.options.overwrite:
            return False
        # a prompt or reference run makes one request per target: done when every one is
        return all(self.request_done(path, request) for request in self.explaining.requests(path))

    def request_done(self, path, request: dict) -> bool:
        if self.table:
            return self.rows.done(None, request)
        entry = self.manifest.get(entry_key(request))
        if entry is None or entry.get("status") != "explained" or entry.get("model") != self.explaining.identity:
            return False
        category = (entry.get("explained_class") or {}).get("index")  # named after what it explains
        base = self.explaining.base_for(path, self.explaining.label(category) if self.spec.class_specific else None)
        return all(sink.done(base, entry) for sink in self.sinks)

    def fail(self, path, message: str) -> None:
        with self._lock:
            self.failed += 1
            report(message)
        entry = self.explaining.failure(path, message)
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
        todo = [p for p in self.inputs.local if not self.already_done(p)]
        mine = todo[group.rank::group.world]  # strided over the sorted inputs: no padding, no repeats
        self.skipped = len(self.inputs.local) - len(todo) if group.leader else 0
        workers = o.workers if o.workers is not None else (
            0 if len(mine) <= o.batch_size else max(1, min(4, (os.cpu_count() or 1) // group.world)))
        progress = tqdm.tqdm(total=len(mine), unit="img", disable=o.quiet or not mine or not group.leader,
                             desc="explaining", file=sys.stderr)
        # images waiting to be written stay in memory: at most two batches of them
        self._writer = BackgroundWriter(pending=2 * o.batch_size)
        batches = image_batches(mine, self.explaining.preprocess, o.batch_size, workers)
        try:
            for batch in batches:
                for outcome in self.explaining.explain(batch):
                    if outcome.error:
                        self.fail(outcome.path, outcome.error)
                    else:
                        self._writer.submit(self.write_outputs, outcome)
                progress.update(len(batch))
                if self.stop is not None:
                    break
        finally:
            batches.close()  # stops the decoding workers now, also on an interrupt
            try:
                self._writer.close()  # every finished image is written before the sinks close
            finally:
                progress.close()
                if not self.table:  # this run's counts, in the manifest the sinks save
                    self.manifest.header["runs"][-1].update(counts=self.counts(), finished=now())
                try:
                    close_all(self.sinks)
                except OSError as error:
                    raise CommandError(f"cannot save the manifest in {shown(o.output_dir)}: "
                                       f"{error.strerror or error}", EXIT_OUTPUT) from None
        if self.stop is not None:
            raise self.stop

    def write_outputs(self, outcome: Outcome) -> None:
        if self.stop is not None:  # the disk is full: this image waits for the next run, like the rest
            return
        path, explained = outcome.path, outcome.image
        try:
            for sink in self.sinks:
                sink.write(explained)
        except OSError as error:
            self.fail(path, f"{shown(path)}: cannot write outputs: {error}")
            if cannot_write(error):  # a full disk fails every image after it too: stop the run
                self.stop = CommandError(f"cannot write to {shown(self.options.output_dir)}: "
                                         f"{error.strerror or error}", EXIT_OUTPUT)
            return
        with self._lock:
            self.explained += 1


__all__ = ["Run", "Group", "ExplainedImage", "selected_sinks", "writes_table", "EXIT_TERMINATED"]
