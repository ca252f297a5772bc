"""The Parquet table of a run: one row per image and explained target, in a dataset folder of part files.

`<output dir>/explanations.parquet/` holds `part-*.parquet` files, every one with the schema
below; read the folder with plain pyarrow or pandas (`pandas.read_parquet(folder)`), no
vit-explain needed. The mask is a flat list of float16 (row-major, `grid_h` x `grid_w`):
`np.asarray(row.mask).reshape(row.grid_h, row.grid_w)`. A failed image is a row with its
`error` (and no mask); `request` identifies what was asked (input, method, parameters, model
weights), `run` the run that wrote the row (runs sort by time).

Writers:
* `ParquetSink`, the output sink of `--outputs parquet` (local engine, each torchrun rank): rows
  are buffered and written as a part file every `rows_per_file` rows and at the end, each file
  atomically (a temporary name, then rename). Every row is also appended to a journal (a JSON
  line, flushed) the moment it is made, and the next run turns a killed run's journal into a part
  file: an interrupted run loses at most the images in flight.
* the Ray engine writes the same rows with Ray's Parquet writer (`rows_table`).

A re-run skips requests that have a row without an error (`explained_requests`). After a run,
`survey` keeps one row per request (an explained row over an error, a newer run over an older;
part files holding dropped rows are rewritten atomically) and counts them for the manifest.
pyarrow is imported on first use: `--help` and runs without Parquet do not need it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from pathlib import Path

import numpy as np

from .messages import shown
from .outputs import atomic_file, make_output_folder

DATASET = "explanations.parquet"     # the dataset folder, in the output folder
PART_GLOB = "part-*.parquet"
JOURNAL_GLOB = ".journal-*.jsonl"
ROWS_PER_FILE = 10_000               # rows per part file by default (~4-8 MB with 14x14 masks)

# name -> arrow type name (pyarrow-free, for the docs and the tests)
COLUMNS = {
    "input": "string",            # absolute path of the image, or its URI
    "width": "int32",             # the decoded image's size (after EXIF orientation)
    "height": "int32",
    "model": "string",            # --model as given
    "model_weights": "string",    # fingerprint of the weights (identity.weights_fingerprint)
    "method": "string",
    "parameters": "string",       # the method's parameters as JSON (sorted keys)
    "target": "int32",            # the explained class; null for class-agnostic methods
    "target_name": "string",
    "predicted": "int32",         # the top class and its softmax probability
    "predicted_name": "string",
    "probability": "float32",
    "grid_h": "int32",            # the mask's patch grid
    "grid_w": "int32",
    "mask": "list<float16>",      # grid_h * grid_w values, row-major, in [0, 1]
    "error": "string",            # null when explained; the reason otherwise
    "request": "string",          # hash of (input, method, parameters, model_weights)
    "run": "string",              # the run that wrote the row
}


def pyarrow():
    """pyarrow and pyarrow.parquet, imported on first use."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    return pa, pq


def schema():
    pa, _ = pyarrow()
    types = {"string": pa.string(), "int32": pa.int32(), "float32": pa.float32(),
             "list<float16>": pa.list_(pa.float16())}
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS.items()])


def new_run_id() -> str:
    """Sorts by start time (UTC), unique: 20261202T051603-1a2b3c."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def request_id(entry: dict, weights: str) -> str:
    """Which request a row answers: its input, method, parameters and the model's weights."""
    key = json.dumps([entry.get("input"), entry.get("method"), entry.get("parameters"), weights], sort_keys=True)
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def _text(value: str | None) -> str | None:
    # surrogate-escaped bytes of a file name are not valid UTF-8 for Arrow: show them escaped
    return None if value is None else value.encode("utf-8", "backslashreplace").decode("utf-8")


def _base(entry: dict) -> dict:
    model = entry.get("model") or {}
    return {"input": _text(entry.get("input")), "model": model.get("name"), "model_weights": model.get("weights"),
            "method": entry.get("method"), "parameters": json.dumps(entry.get("parameters"), sort_keys=True),
            "request": entry.get("request"), "run": entry.get("run")}


def row(item) -> dict:
    """The row of an explained image (an `ExplainedImage`, whose entry the run filled)."""
    entry = item.entry
    target = entry.get("explained_class") or {}
    predicted = entry.get("predicted") or {}
    mask = np.asarray(item.mask, dtype=np.float16)
    return {**_base(entry), "width": entry["image_size"][0], "height": entry["image_size"][1],
            "target": target.get("index"), "target_name": _text(target.get("label")),
            "predicted": predicted.get("index"), "predicted_name": _text(predicted.get("label")),
            "probability": predicted.get("probability"), "grid_h": int(mask.shape[0]), "grid_w": int(mask.shape[1]),
            "mask": mask.ravel(), "error": None}


def error_row(entry: dict, message: str) -> dict:
    """The row of an image that failed: its request, and why."""
    return {**_base(entry), "error": _text(message)}


def rows_table(rows: list[dict]):
    """rows -> a pyarrow Table with the schema above (absent columns are null)."""
    pa, _ = pyarrow()
    fields = schema()
    return pa.table({f.name: pa.array([r.get(f.name) for r in rows], type=f.type) for f in fields}, schema=fields)


def write_part(path: Path, table) -> None:
    """One part file, atomically: readers never see half of it."""
    _, pq = pyarrow()
    with atomic_file(path) as file:
        pq.write_table(table, file)


def part_files(dataset: Path) -> list[Path]:
    return sorted(p for p in dataset.glob(PART_GLOB) if p.is_file() and not p.is_symlink()) if dataset.is_dir() else []


def repair(dataset: Path) -> tuple[int, int]:
    """Before a run (holding the output folder's lock): turn journals of killed runs into part
    files, and remove part files a killed writer left incomplete (Ray writes in place).
    Returns (rows recovered, files removed)."""
    pa, pq = pyarrow()
    recovered = removed = 0
    if not dataset.is_dir():
        return 0, 0
    for journal in sorted(dataset.glob(JOURNAL_GLOB)):
        rows = []
        try:
            lines = journal.read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError):
            lines = []
        for line in lines:
            try:
                row_ = json.loads(line)
                if row_.get("mask") is not None:
                    row_["mask"] = np.frombuffer(base64.b64decode(row_["mask"]), dtype=np.float16)
                rows.append(row_)
            except (ValueError, TypeError):
                continue  # a line torn by the kill: its image is redone
        if rows:
            name = journal.name[len(".journal-"):-len(".jsonl")]
            write_part(dataset / f"part-{name}-recovered.parquet", rows_table(rows))
            recovered += len(rows)
        journal.unlink(missing_ok=True)
    for part in part_files(dataset):
        try:
            pq.read_metadata(part)
        except (OSError, pa.ArrowInvalid):
            part.unlink(missing_ok=True)
            removed += 1
    return recovered, removed


def _read(part: Path, columns: list[str]):
    _, pq = pyarrow()
    try:
        return pq.read_table(part, columns=columns)
    except Exception as error:  # noqa: BLE001 - any reader failure is the same user-facing problem
        raise OSError(f"{shown(part)} is not a part file of vit-explain's table ({error}); move it out of "
                      f"{shown(part.parent)}") from None


def explained_requests(dataset: Path) -> set[str]:
    """The requests the table already answers with a mask (rows with an error are retried)."""
    done = set()
    for part in part_files(dataset):
        table = _read(part, ["request", "error"])
        done.update(r for r, e in zip(table.column("request").to_pylist(), table.column("error").to_pylist())
                    if e is None)
    return done


def survey(dataset: Path, compact: bool = True) -> dict:
    """One row per request: an explained row beats an error, a newer run an older one, ties the
    first found. With compact, part files holding rows that lost are rewritten without them
    (removed when nothing is left). Returns the table's counts and its failures."""
    parts = part_files(dataset)
    best: dict[str, tuple] = {}      # request -> ((explained, run), part index, row)
    columns = {}
    for index, part in enumerate(parts):
        table = _read(part, ["request", "error", "run", "input"])
        columns[index] = table
        for number, (request, error, run) in enumerate(zip(table.column("request").to_pylist(),
                                                           table.column("error").to_pylist(),
                                                           table.column("run").to_pylist())):
            rank = (error is None, run or "")
            if request not in best or rank > best[request][0]:
                best[request] = (rank, index, number)
    keep = {index: set() for index in columns}
    for _, index, number in best.values():
        keep[index].add(number)
    if compact:
        _, pq = pyarrow()
        for index, part in enumerate(parts):
            if len(keep[index]) == columns[index].num_rows:
                continue
            if not keep[index]:
                part.unlink()
                continue
            full = pq.read_table(part)
            write_part(part, full.take(sorted(keep[index])))
    failures = []
    for (explained, _), index, number in best.values():
        if not explained:
            table = columns[index]
            failures.append({"input": table.column("input")[number].as_py(),
                             "error": table.column("error")[number].as_py()})
    failures.sort(key=lambda f: str(f["input"]))
    explained = sum(1 for (ok, _), _, _ in best.values() if ok)
    return {"path": DATASET, "rows": len(best), "explained": explained, "failed": len(best) - explained,
            "files": len(part_files(dataset)), "failures": failures}


class ParquetSink:
    """`--outputs parquet`: a row per explained (or failed) image in the run's Parquet table.

    Its rows are the images' record: a run that writes the table skips an image when the table
    has an explained row for the same request (`done`), and lists no image in manifest.json.
    Thread-safe (the run's writer threads call write)."""

    name = "parquet"
    ending = ".parquet"
    table = True

    def __init__(self, options):
        pyarrow()  # a missing pyarrow fails here, before any image is explained
        self.output_dir = Path(options.output_dir)
        self.dataset = self.output_dir / DATASET
        self.rows_per_file = getattr(options, "rows_per_file", None) or ROWS_PER_FILE
        self.run = getattr(options, "run_id", None) or new_run_id()
        self.rank = getattr(options, "rank", 0)
        self.rows: list[dict] = []
        self.written = 0        # rows in part files written by this sink
        self.parts = 0
        self._journal = None
        self._lock = threading.Lock()
        self._explained: set[str] | None = None

    def done(self, base: Path, entry: dict | None) -> bool:
        """The table has an explained row for the request named in entry["request"]."""
        if self._explained is None:
            self._explained = explained_requests(self.dataset)
        return entry is not None and entry.get("request") in self._explained

    def write(self, item) -> None:
        self.add(row(item))
        item.outputs[self.name] = str(self.dataset)

    def fail(self, entry: dict, message: str) -> None:
        self.add(error_row(entry, message))

    def add(self, new_row: dict) -> None:
        with self._lock:
            self.rows.append(new_row)
            self._log(new_row)
            if len(self.rows) >= self.rows_per_file:
                self._flush()

    def _log(self, new_row: dict) -> None:
        mask = new_row.get("mask")  # float16 bytes, base64: a fraction of the cost of a list of numbers
        line = json.dumps({**new_row, "mask": None if mask is None else
                           base64.b64encode(np.ascontiguousarray(mask, dtype=np.float16).tobytes()).decode()})
        try:
            if self._journal is None:
                make_output_folder(self.output_dir, self.dataset)
                path = self.dataset / f".journal-{self.run}-r{self.rank:03d}-{self.parts:05d}.jsonl"
                self._journal = (path, open(path, "w", encoding="utf-8"))
            _, file = self._journal
            file.write(line + "\n")
            file.flush()  # in the kernel's hands: survives the process being killed
        except OSError:
            pass  # a full disk: the row stays in memory, and writing the part file reports the disk

    def _flush(self) -> None:
        if not self.rows:
            return
        make_output_folder(self.output_dir, self.dataset)
        write_part(self.dataset / f"part-{self.run}-r{self.rank:03d}-{self.parts:05d}.parquet", rows_table(self.rows))
        self.written += len(self.rows)
        self.parts += 1
        self.rows = []
        self._drop_journal()

    def _drop_journal(self) -> None:
        if self._journal is not None:
            path, file = self._journal
            self._journal = None
            try:
                file.close()
            except OSError:
                pass
            path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._flush()
            self._drop_journal()
