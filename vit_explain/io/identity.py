"""Who made an output: the model's name and a fingerprint of its weights, and a file's hash.

A re-run counts earlier outputs as finished only when they were made by the same model (see
manifest.py); a name alone is not enough (another checkpoint, a retrained local folder).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, dtypes and values): the same for the
    same weights, whatever file or hub they were loaded from."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in list(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        data = tensor.detach().contiguous().cpu()
        if data.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its bits
            data = data.view(torch.int16)
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()
