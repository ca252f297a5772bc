"""Output names: one per input, unique by construction, inside the output folder, short enough.

An input's outputs are `<output dir>/<its folder, mirrored>/<name>_<method suffix><ending>`.
The name is the input's stem, made safe (no path separators or control characters, never "."
or ".."), then made unique among the run's inputs: inputs of one folder that share a stem keep
their extension in the name (`a_jpg`, `a_png`), and any name still shared gets a short hash of
the input's path. Names longer than a file system allows (255 bytes) are cut and hashed.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from pathlib import Path

MAX_NAME_BYTES = 255   # the common file-name limit (ext4, APFS, NTFS)
ENDING_RESERVE = 24    # room for the longest sink ending ("_heads.png") and a margin
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def safe_name(name: str) -> str:
    """A file-name component that cannot leave its folder or break a line: separators and
    control characters become "_", and a name of only dots (".", "..") gets underscores."""
    name = _UNSAFE.sub("_", name)
    return "_" * len(name) if not name or set(name) <= {"."} else name


def fit_name(name: str, reserve: int = ENDING_RESERVE) -> str:
    """name, or a cut of it with a hash of the whole, so that name + reserve bytes fit the limit."""
    limit = MAX_NAME_BYTES - reserve
    if len(name.encode("utf-8", "surrogateescape")) <= limit:
        return name
    tag = "~" + short_hash(name)
    cut = name
    while len((cut + tag).encode("utf-8", "surrogateescape")) > limit:
        cut = cut[:-1]
    return cut + tag


def output_stems(images: list[Path], input_root: Path, output_dir: Path) -> dict[Path, Path]:
    """Where each image's outputs go (without the method suffix): the input folder's subfolders
    mirrored under output_dir, one unique name per input (see the module docstring)."""
    folders = {p: (p.parent.relative_to(input_root) if input_root.is_dir() else Path()) for p in images}
    shared_stem = Counter((p.parent, p.stem) for p in images)
    names = {p: safe_name(p.stem if shared_stem[(p.parent, p.stem)] == 1 else p.name.replace(".", "_"))
             for p in images}
    taken = defaultdict(list)
    for p in images:
        taken[(folders[p], names[p])].append(p)
    for group in taken.values():
        if len(group) > 1:  # e.g. a.png, a.jpg and a_png.png: a hash of each input tells them apart
            for p in group:
                names[p] = f"{names[p]}_{short_hash(str(p))}"
    return {p: output_dir / folders[p] / names[p] for p in images}


def output_base(stem: Path, suffix: str) -> Path:
    """The output path of one input and method, without an ending."""
    return stem.parent / fit_name(f"{stem.name}_{suffix}")
