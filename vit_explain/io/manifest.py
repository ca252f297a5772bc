"""manifest.json: what a run (and the runs before it) wrote into an output folder, durably.

One entry per input and request (input, method, parameters): a second method, or other
parameters, into the same folder add entries; the same request again replaces its entry. Each
entry names the model that made it (`model`: name, checkpoint hash, weights fingerprint) and the
files it lists with their sizes, so a re-run can tell finished outputs from stale or broken ones.

Durable: every entry is also appended to a journal (`.manifest.journal`, one JSON line each) the
moment its image is finished, and a run reads the journal back when it starts, so an entry
survives a kill -9, a full disk or a power cut of the process; saving manifest.json (atomically,
at the end of a run) empties the journal. The manifest is also the run's last output sink (see
sinks.py): write() lists an explained image with the outputs the other sinks wrote for it.
"""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path

from .messages import shown
from .outputs import OutputError, atomic_file

JOURNAL = ".manifest.journal"


def entry_key(entry: dict) -> str:
    """Which request an entry answers: its input, method and parameters."""
    return json.dumps([entry.get("input"), entry.get("method"), entry.get("parameters")], sort_keys=True)


def finite(value):
    """value with every non-finite float replaced by None: manifest.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class Manifest:
    def __init__(self, output_dir: Path, header: dict):
        self.path = output_dir / "manifest.json"
        self.journal_path = output_dir / JOURNAL
        self.header = header
        self.entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path.is_dir() or self.journal_path.is_dir():
            raise OutputError(f"{shown(self.path)} is a folder; vit-explain keeps its manifest there: move it away "
                              "or choose another --output-dir")
        self._read()
        self._journal = None

    def _read(self) -> None:
        try:
            previous = json.loads(self.path.read_text())
            for entry in previous.get("images", []):
                self.entries[entry_key(entry)] = entry
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # no manifest yet, or one we cannot read: the journal and the run rebuild it
        try:
            lines = self.journal_path.read_text().splitlines()
        except OSError:
            return
        for line in lines:
            try:
                entry = json.loads(line)
                self.entries[entry_key(entry)] = entry
            except ValueError:
                continue  # a line torn by a kill: its image is redone

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self.entries.get(key)

    def add(self, entry: dict) -> None:
        entry = finite(entry)
        line = json.dumps(entry)
        with self._lock:
            self.entries[entry_key(entry)] = entry
            try:
                if self._journal is None:
                    self._journal = open(self.journal_path, "a")
                self._journal.write(line + "\n")
                self._journal.flush()  # in the kernel's hands now: survives the process being killed
            except OSError:
                # A full disk: the entry stays in memory for save(), which reports the disk if it
                # is still full; outputs without an entry are redone by the next run.
                pass

    def done(self, base: Path, entry: dict | None) -> bool:
        return entry is not None and entry.get("status") == "explained"

    def write(self, item) -> None:
        self.add({"input": str(item.input), "status": "explained", "outputs": dict(item.outputs),
                  "output_bytes": dict(item.output_bytes), **item.entry})

    def close(self) -> None:
        self.save()

    def save(self) -> None:
        with self._lock:
            document = dict(self.header, images=sorted(self.entries.values(),
                                                        key=lambda e: (str(e.get("input")), entry_key(e))))
            with atomic_file(self.path, "w") as file:  # streamed: no copy of a large manifest as one string
                json.dump(finite(document), file, indent=2)
                file.write("\n")
            # everything journaled is in manifest.json now
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            self.journal_path.unlink(missing_ok=True)
