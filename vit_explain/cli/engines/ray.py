"""--engine ray: Ray Data reads the images as bytes, a pool of actors explains them, Ray's Parquet
writer writes the rows.

    read_binary_files(inputs) -> map_batches(RayWorker, compute=ActorPoolStrategy(size=N),
                                             num_cpus=c, num_gpus=g, batch_size=B) -> write_parquet

Each actor loads the model once and runs the same `Explaining` as the local engine (decoding the
bytes with the same decoder, the same preprocessing, the same explainer), so the masks are the
local engine's. The driver (this process) loads the model too, on the CPU, to check the options
and to fingerprint the weights (the table's request ids), holds the output folder's lock, skips the
requests the table already answers, writes the rows of inputs it can tell are unreadable, and at
the end keeps one row per request and writes manifest.json.

`--ray-address` joins an existing cluster (every node needs vit-explain installed and the output
folder at the same path, a shared file system); without it a local Ray instance starts and stops
with the run. Local paths and URIs Ray's file systems read (s3://, gs://, ...; one scheme per run)
are both inputs; overlays and masks need local inputs.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray
import ray.data
from ray.data import ActorPoolStrategy
from ray.data.datasource import FilenameProvider

from ...io.allocator import keep_freed_memory
from ...io.inputs import is_uri
from ...io.messages import shown
from ...io.models import ModelLoadError, load_model
from ...io.outputs import OutputError, OutputLock, check_inputs_outside, remove_leftovers
from ...io.sinks import SINKS
from ...io.table import (DATASET, error_row, explained_requests, new_run_id, part_files, pyarrow, repair, row,
                         rows_table, write_part)
from ..common import misnamed_message, report
from ..errors import (EXIT_ENGINE, EXIT_INPUT, EXIT_MODEL, EXIT_OK, EXIT_OUTPUT, EXIT_SOME_FAILED, EXIT_USAGE,
                      CommandError)
from ..explaining import Explaining
from ..options import Options
from ..runner import (EXIT_TERMINATED, Run, Terminated, finish_manifest, open_manifest, run_entry, selected_sinks,
                      sigterm_unwinds, summary_line)


class PartNames(FilenameProvider):
    """part-<run>-ray-<write uuid>-<task>.parquet (Ray adds the block's number): the run's files
    sort after earlier runs' and are told apart from them."""

    def __init__(self, run: str):
        super().__init__(file_format="parquet")
        self.run = run

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{self.run}-ray-{write_uuid}-{task_index:06d}.parquet"


def actor_device(options: Options) -> str:
    """The actor's device: its GPU when Ray gave it one (or CUDA is there and --device allows it),
    else the CPU; --device cuda without CUDA in the actor is an error."""
    import torch
    if options.device != "cpu" and torch.cuda.is_available():
        return "cuda"
    if options.device == "cuda":
        raise RuntimeError("--device cuda: CUDA is not available in the Ray actor (give it --gpus-per-actor)")
    return "cpu"


class RayWorker:
    """One actor of the pool: the model, its Explaining and the file sinks; a batch of
    {path, bytes} in, a table of rows out."""

    def __init__(self, options: Options, stems: dict | None, scheme: str | None, identity: dict):
        keep_freed_memory()  # the actor's process is ours, as the command's is
        model = load_model(options.model, options.hub, options.checkpoint, actor_device(options))
        self.explaining = Explaining(options, model, run=options.run_id, identity=identity)
        self.explaining.stems = {key: Path(stem) for key, stem in (stems or {}).items()}
        self.scheme = scheme
        self.sinks = [SINKS[name](options) for name in selected_sinks(options)
                      if not getattr(SINKS[name], "table", False)]
        # decoding releases the GIL (PIL's decoders and resampling, torch's normalisation): an actor
        # given several CPUs decodes its batch on as many threads
        threads = max(1, int(options.cpus_per_actor))
        self.decoders = ThreadPoolExecutor(threads, thread_name_prefix="vit-explain-decode") if threads > 1 else None

    def __call__(self, batch):
        paths = batch.column("path").to_pylist()
        if self.scheme:  # Ray hands back s3://bucket/key as bucket/key
            paths = [f"{self.scheme}://{p}" for p in paths]
        pairs = list(zip(paths, batch.column("bytes").to_pylist()))
        items = (list(self.decoders.map(lambda pair: self.explaining.decode(*pair), pairs)) if self.decoders
                 else [self.explaining.decode(*pair) for pair in pairs])
        rows = []
        for outcome in self.explaining.explain(items):
            if outcome.error is None:
                try:
                    for sink in self.sinks:
                        sink.write(outcome.image)
                except OSError as error:
                    outcome.error = f"{shown(outcome.path)}: cannot write outputs: {error}"
            rows.append(row(outcome.image) if outcome.error is None
                        else error_row(self.explaining.failure(outcome.path, outcome.error), outcome.error))
        return rows_table(rows)


def expand_uri(uri: str) -> list[str]:
    """A URI that names a folder (a prefix) -> the URIs of the files below it, sorted (hidden ones
    skipped); any other URI as it is. Through pyarrow's file systems, as Ray reads them."""
    from pyarrow import fs
    scheme = uri.split("://", 1)[0]
    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        if filesystem.get_file_info(path).type != fs.FileType.Directory:
            return [uri]
        found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot list {shown(uri)}: {str(error).strip().splitlines()[0]}", EXIT_INPUT) from None
    files = sorted(f"{scheme}://{info.path}" for info in found
                   if info.type == fs.FileType.File and not any(part.startswith(".") for part in
                                                                info.path[len(path):].split("/")))
    if not files:
        raise CommandError(f"no files found under {shown(uri)}", EXIT_INPUT)
    return files


def unreadable(path: Path) -> str | None:
    """Why Ray could not read this local input (it would fail the whole job), or None."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"no such file or folder: {shown(path)}"
    except OSError as error:
        return f"{shown(path)} cannot be read: {error.strerror or error}"
    if stat.S_ISDIR(info.st_mode):
        return f"{shown(path)} is a folder, not an image"
    if not stat.S_ISREG(info.st_mode):
        return f"{shown(path)} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"{shown(path)} cannot be read (permission denied)"
    return None


def pool_size(options: Options) -> int:
    """--actors, or as many as the cluster holds, one CPU left for reading and writing; refused when
    the actors would take every CPU (Ray would wait forever for one to read with)."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    if options.actors is not None:
        size = options.actors
    elif options.gpus_per_actor > 0:
        size = int(gpus // options.gpus_per_actor)
        if size < 1:
            raise CommandError(f"--gpus-per-actor {options.gpus_per_actor:g}: the Ray cluster has {gpus:g} GPUs",
                               EXIT_USAGE)
    else:
        size = int((cpus - 1) // options.cpus_per_actor)
    size = max(1, size)
    if size * options.cpus_per_actor > cpus - 0.5:
        raise CommandError(f"{size} actors x --cpus-per-actor {options.cpus_per_actor:g} take every CPU of the Ray "
                           f"cluster ({cpus:g}), which leaves none to read the images with: Ray would wait forever; "
                           "give fewer --actors or a fractional --cpus-per-actor", EXIT_USAGE)
    return size


class RayRun:
    def __init__(self, options: Options):
        self.inputs = Run.find_inputs(options)
        uris, local = self.inputs.uris, self.inputs.local
        schemes = {uri.split("://", 1)[0].lower() for uri in uris}
        if len(schemes) > 1 or (schemes and local):
            raise CommandError("the inputs mix local files and URIs, or URIs of several schemes; Ray reads one "
                               "file system per run: split the list", EXIT_INPUT)
        self.scheme = next(iter(schemes), None)
        if self.inputs.kind == "uri":  # one URI: a file, or a folder (prefix) whose files are the inputs
            self.inputs.images = expand_uri(self.inputs.images[0])
        file_sinks = [n for n in selected_sinks(options) if not getattr(SINKS[n], "table", False)]
        if uris and file_sinks:
            raise CommandError(f"--outputs {','.join(file_sinks)} needs local input files; with URIs write "
                               "--outputs parquet", EXIT_USAGE)
        self.options = options = dataclasses.replace(options, run_id=new_run_id())
        try:  # on the CPU: for the weights' fingerprint and to check the options before Ray starts
            model = load_model(options.model, options.hub, options.checkpoint, "cpu")
        except ModelLoadError as error:
            raise CommandError(str(error), EXIT_MODEL) from None
        self.explaining = Explaining(options, model, run=options.run_id)
        self.explaining.name_outputs(self.inputs.images, self.inputs.root)
        del model
        self.dataset = Path(options.output_dir) / DATASET
        self.lock = OutputLock(options.output_dir)
        try:
            check_inputs_outside(options.output_dir, local)
            self.lock.acquire()
            remove_leftovers(options.output_dir)
            repair(self.dataset)
            self.manifest = open_manifest(options, run_entry(options, self.explaining, "ray",
                                                             ray_address=options.ray_address), True,
                                          ray=ray.__version__)
        except (OutputError, OSError) as error:
            self.lock.release()
            message = str(error) if isinstance(error, OutputError) else \
                f"cannot prepare {shown(options.output_dir)}: {error.strerror or error}"
            raise CommandError(message, EXIT_OUTPUT) from None
        self.skipped = 0
        self.started_ray = False

    def execute(self) -> int:
        finished = False
        try:
            with sigterm_unwinds():
                self.explain_all()
                finished = True
        except Terminated:
            raise CommandError("terminated (SIGTERM): the rows written so far are kept; a re-run does the rest",
                               EXIT_TERMINATED) from None
        finally:
            try:
                if self.started_ray:
                    ray.shutdown()
                explained, failed = self.report_rows(quiet=not finished)
                finish_manifest(self.manifest, {"explained": explained, "failed": failed, "skipped": self.skipped},
                                True)
            finally:
                self.lock.release()
        print(summary_line(explained, failed, self.skipped), file=sys.stderr)
        return EXIT_SOME_FAILED if failed else EXIT_OK

    def explain_all(self) -> None:
        o = self.options
        done = set() if o.overwrite else explained_requests(self.dataset)
        failures, todo = [(p, misnamed_message(p)) for p in self.inputs.misnamed], []
        for path in self.inputs.images:
            if all(request["request"] in done for request in self.explaining.requests(path)):  # every target
                self.skipped += 1
                continue
            problem = None if is_uri(path) else unreadable(Path(path))
            if problem:
                failures.append((path, problem))
            else:
                todo.append(path)
        if failures:
            rows = [error_row(self.explaining.failure(path, message), message) for path, message in failures]
            write_part(self.dataset / f"part-{o.run_id}-driver.parquet", rows_table(rows))
        if todo:
            self.explain_on_ray(todo)

    def explain_on_ray(self, todo: list) -> None:
        o = self.options
        if not ray.is_initialized():
            try:
                ray.init(address=o.ray_address, include_dashboard=False, log_to_driver=not o.quiet,
                         logging_level=logging.WARNING if o.quiet else logging.INFO)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise CommandError(f"cannot start or reach Ray{f' at {o.ray_address}' if o.ray_address else ''}: "
                                   f"{str(error).strip().splitlines()[0] if str(error).strip() else error}",
                                   EXIT_ENGINE) from None
            self.started_ray = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = not o.quiet
        if o.quiet:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        size = pool_size(o)
        stems = {str(Path(p).resolve()): str(stem) for p, stem in self.explaining.stems.items()} \
            if any(not getattr(SINKS[n], "table", False) for n in selected_sinks(o)) else None
        paths = [str(Path(p).resolve()) if not is_uri(p) else p for p in todo]
        resources = {"num_cpus": o.cpus_per_actor}
        if o.gpus_per_actor:
            resources["num_gpus"] = o.gpus_per_actor
        try:
            # a file gone since it was listed (or a URI that names none) is left out here, and gets
            # its error row below, rather than failing the whole job
            data = ray.data.read_binary_files(paths, include_paths=True, ignore_missing_paths=True)
            data = data.map_batches(
                RayWorker, batch_size=o.batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=size),
                fn_constructor_kwargs={"options": o, "stems": stems, "scheme": self.scheme,
                                       "identity": self.explaining.identity},
                udf_modifying_row_count=False, **resources)
            data.write_parquet(str(self.dataset), filename_provider=PartNames(o.run_id),
                               min_rows_per_file=o.rows_per_file)
        except ray.exceptions.RayError as error:
            text = str(error).strip().splitlines()
            raise CommandError(f"the Ray job failed: {text[-1] if text else type(error).__name__}; the rows written "
                               "so far are kept, a re-run does the rest", EXIT_ENGINE) from None
        self.rows_for_the_unread(todo)

    def rows_for_the_unread(self, todo: list) -> None:
        """An error row for every input the job finished without a row for (Ray found no file)."""
        _, pq = pyarrow()
        written = set()
        for part in part_files(self.dataset):
            if part.name.startswith(f"part-{self.options.run_id}-"):
                written.update(pq.read_table(part, columns=["request"]).column("request").to_pylist())
        missing = [path for path in todo
                   if not any(request["request"] in written for request in self.explaining.requests(path))]
        if missing:
            rows = [error_row(self.explaining.failure(path, f"{shown(path)}: not found when Ray read it"),
                              f"{shown(path)}: not found when Ray read it") for path in missing]
            write_part(self.dataset / f"part-{self.options.run_id}-unread.parquet", rows_table(rows))

    def report_rows(self, quiet: bool = False) -> tuple[int, int]:
        """(explained, failed) among this run's rows; each failure reported on one line."""
        _, pq = pyarrow()
        explained = failed = 0
        for part in part_files(self.dataset):
            if not part.name.startswith(f"part-{self.options.run_id}-"):
                continue
            table = pq.read_table(part, columns=["input", "error"])
            for path, error in zip(table.column("input").to_pylist(), table.column("error").to_pylist()):
                if error is None:
                    explained += 1
                else:
                    failed += 1
                    if not quiet:
                        report(error)
        return explained, failed


def run(options: Options) -> int:
    return RayRun(options).execute()
