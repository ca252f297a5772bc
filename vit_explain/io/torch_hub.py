"""Models from a torch hub repo (GitHub owner/name[:ref] or a local folder), with timm's
registry and the importer's modules put back afterwards."""
from __future__ import annotations

import contextlib
import copy
import os
import sys

import torch
from torch import nn

from .hub import ModelLoadError, first_line, reachable
from .messages import shown


@contextlib.contextmanager
def timm_registry_preserved():
    """Hub repos such as facebookresearch/deit register their own functions under timm's names,
    after which timm.create_model fails; put timm's registry back as it was."""
    from timm.models import _registry
    saved = {key: copy.copy(value) for key, value in vars(_registry).items()
             if key.startswith("_") and not key.startswith("__") and isinstance(value, (dict, set, list))}
    modules_before = dict(sys.modules)
    # Hub repos often do `from models import ...`: a module of that name imported earlier would
    # shadow theirs.
    shadowed = {name: sys.modules.pop(name) for name in ("models", "utils") if name in sys.modules}
    try:
        yield
    finally:
        for key, value in saved.items():
            current = getattr(_registry, key)
            current.clear()
            current.update(value) if isinstance(value, (dict, set)) else current.extend(value)
        for name in ("models", "utils"):
            if name in sys.modules and sys.modules[name] is not modules_before.get(name):
                del sys.modules[name]
        sys.modules.update(shadowed)


def load_hub(repo: str, name: str) -> nn.Module:
    local = os.path.isdir(repo)
    if not local and not reachable("https://github.com"):
        raise ModelLoadError(
            f"cannot fetch {name!r} from torch hub repo {shown(repo)}: no network. Use --model "
            f"local-dir:FOLDER, --checkpoint FILE, or --hub with a local copy of the repo")
    try:
        with timm_registry_preserved():
            model = torch.hub.load(repo, name, pretrained=True, source="local" if local else "github",
                                   trust_repo=True)
    except Exception as error:
        raise ModelLoadError(f"cannot load {name!r} from torch hub repo {shown(repo)}: {first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"torch hub entry point {name!r} of {shown(repo)} did not return a model")
    return model
