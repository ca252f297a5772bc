"""Where a run's images are explained: one line per engine in ENGINES (torch-free, like the
method table). `--engine NAME` picks one; `ENGINES[NAME].load()` gives its `run(options) -> exit code`.

Every engine does the per-image work through `cli.explaining.Explaining` (decode, explain a
batch, describe each image), so the masks do not depend on the engine. An engine that writes
only the Parquet table (`table_only`) defaults to `--outputs parquet` and refuses a run without it.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineSpec:
    name: str
    target: str                      # "module:function", run(options) -> exit code
    needs: tuple[str, ...] = ()      # modules it imports that are not vit-explain's own dependencies
    extra: str | None = None         # the pip extra that brings them
    table_only: bool = False         # its per-image record is the Parquet table
    summary: str = ""

    def load(self):
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)

    def missing(self) -> str | None:
        """The first module it needs that is not installed."""
        return next((m for m in self.needs if importlib.util.find_spec(m) is None), None)


ENGINES: dict[str, EngineSpec] = {spec.name: spec for spec in (
    EngineSpec("local", "vit_explain.cli.engines.local:run", summary="this process, a DataLoader decoding"),
    EngineSpec("ray", "vit_explain.cli.engines.ray:run", needs=("ray", "pyarrow"), extra="ray", table_only=True,
               summary="Ray Data: an actor pool on a local instance or --ray-address"),
    EngineSpec("torchrun", "vit_explain.cli.engines.torchrun:run", needs=("pyarrow",), extra="parquet",
               table_only=True, summary="every torchrun process explains its shard of the inputs"),
)}
