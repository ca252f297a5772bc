"""What every model loader shares: the one-line error, network probing, offline mode, and the
checks that a model folder or weights file is sane before anything large is allocated for it."""
from __future__ import annotations

import contextlib
import os
import pickle
import socket
import threading
from itertools import chain
from pathlib import Path
from urllib.parse import urlparse

from .messages import shown

# No classifier has more classes than this (ImageNet-21k has 21,843); a config or a checkpoint
# head that claims more is corrupt or hostile, and building its head could take all memory.
MAX_CLASSES = 1_000_000


class ModelLoadError(Exception):
    """One-line, user-facing reason a model cannot be loaded."""


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def brief(error: BaseException, limit: int = 300) -> str:
    """A multi-line message (torch's "Error(s) in loading state_dict ...") on one line, capped."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def error_chain(error: BaseException | None, limit: int = 10):
    """The error and those it was raised from or during, outermost first: loaders wrap the reason
    in their own words (torch even hides it, `from None`). Bounded: a chain may loop."""
    while error is not None and limit > 0:
        yield error
        error = error.__cause__ or error.__context__
        limit -= 1


# Modules that read weights files: an error raised while one of them runs is the file's
READERS = ("torch.serialization", "safetensors")


def unreadable_file(error: BaseException, also: tuple = ()) -> bool:
    """Whether torch or safetensors failed to read a file, somewhere in the error's chain: by the
    error's type, or by a reader's frame in its traceback (a truncated .pth is a RuntimeError).
    also: more exception types that mean so where the caller knows its file exists."""
    return any(isinstance(e, (pickle.UnpicklingError, EOFError, *also)) or type(e).__name__ == "SafetensorError"
               or raised_in(e, READERS) for e in error_chain(error))


def raised_in(error: BaseException, modules: tuple[str, ...]) -> bool:
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_globals.get("__name__", "").startswith(modules):
            return True
        frame = frame.tb_next
    return False


def weights_error(file: str | os.PathLike, error: BaseException) -> ModelLoadError:
    """The sentence for a weights file that torch or safetensors would not read."""
    *_, reason = error_chain(error)
    if isinstance(reason, pickle.UnpicklingError) and "Unsupported global" in str(reason):
        # torch's weights_only unpickler met a Python object: loading it could run its code
        return ModelLoadError(f"{shown(file)} holds pickled Python objects besides tensors, which vit-explain "
                              "does not load (they can run code); save the weights alone as .safetensors")
    return ModelLoadError(f"cannot read the weights in {shown(file)} (corrupt or truncated?): {first_line(reason)}")


def check_class_count(count, where: str) -> None:
    """ModelLoadError unless count is a whole number of classes within MAX_CLASSES."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ModelLoadError(f"{where} gives {count!r} classes; expected a whole number")
    if count > MAX_CLASSES:
        raise ModelLoadError(f"{where} claims {count:,} classes, more than the {MAX_CLASSES:,} vit-explain "
                             "accepts: the file is corrupt")


def physical_memory() -> int | None:
    """Bytes of RAM on this machine; None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_memory(build, what: str) -> None:
    """Build the model on the meta device (shapes only, nothing allocated) and refuse one whose
    weights alone exceed this machine's memory, before the real build tries to allocate them.
    A model that cannot be built on the meta device is left to the real build to judge."""
    import torch
    memory = physical_memory()
    if memory is None:
        return
    try:
        with torch.device("meta"):
            model = build()
    except Exception:
        return
    size = sum(t.numel() * t.element_size() for t in chain(model.parameters(), model.buffers()))
    if size > memory:
        raise ModelLoadError(f"{what} would need {size / 2**30:,.0f} GiB for its weights, more than this "
                             f"machine's {memory / 2**30:,.0f} GiB of memory")


# Where timm.create_model("local-dir:...", pretrained=True) looks for weights, in its order
# (timm.models._hub.load_state_dict_from_path): these names, else the first file by ending.
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
                "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
WEIGHT_ENDINGS = (".safetensors", ".pth", ".pth.tar", ".bin")


def weights_file(folder: Path) -> Path | None:
    """The file timm will read a saved folder's weights from; None if there is none."""
    for name in WEIGHT_NAMES:
        if (folder / name).exists():
            return folder / name
    for ending in WEIGHT_ENDINGS:
        files = sorted(folder.glob(f"*{ending}"))
        if files:
            return files[0]
    return None


def reachable(url: str, timeout: float = 2.0) -> bool:
    """Can we open a TCP connection to url's host? A thread bounds DNS look-ups that hang."""
    parsed = urlparse(url)
    result = []

    def probe():
        try:
            socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


@contextlib.contextmanager
def hf_offline(offline: bool):
    """Make huggingface_hub answer from its cache at once instead of retrying for ~46 s."""
    from huggingface_hub import constants
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
