"""What every model loader shares: the one-line error, network probing, offline mode."""
from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlparse


class ModelLoadError(Exception):
    """One-line, user-facing reason a model cannot be loaded."""


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


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
