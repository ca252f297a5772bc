"""What a run reads: one image, a folder, a glob, or a text file that lists inputs, one a line.

* a folder: every image below it, recognised by content (hidden files skipped); files named like
  images that are not are reported (`misnamed`), other files ignored;
* a glob (`photos/**/*.jpg`, quoted so the shell leaves it alone): every file it matches;
* a list (a file ending in .txt, .lst or .list that is not an image): one input a line, blank
  lines and lines starting with # skipped, relative paths taken from the list's own folder;
  a line may be a URI (`s3://bucket/a.jpg`), which only an engine that reads URIs can use
  (`file://` URIs are local paths).

Inputs a glob or a list names are used as named: one that is missing or not an image fails on its
own (a row or a line with its error), the rest go on. Paths stay as given (folders) or are made
absolute (globs, lists); never resolved here. No torch import.
"""
from __future__ import annotations

import glob
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .images import ImageError, find_inputs, is_image
from .messages import shown

LIST_ENDINGS = (".txt", ".lst", ".list")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(item) -> bool:
    """A URI (scheme://...) rather than a local path; file:// URIs are local paths (local_path)."""
    return isinstance(item, str) and bool(_URI.match(item)) and not item.lower().startswith("file://")


def local_path(text: str) -> Path:
    """file:///a/b%20c.png -> /a/b c.png; anything else as a path."""
    if text.lower().startswith("file://"):
        parsed = urllib.parse.urlparse(text)
        return Path(urllib.parse.unquote(parsed.path))
    return Path(text)


@dataclass
class Inputs:
    images: list = field(default_factory=list)       # Path for local files, str for URIs; sorted, unique
    misnamed: list = field(default_factory=list)     # files in a folder named like images that are not
    root: Path | None = None                         # where the mirrored output folders start
    kind: str = "file"                               # file, folder, glob, list, uri

    @property
    def local(self) -> list[Path]:
        return [p for p in self.images if not is_uri(p)]

    @property
    def uris(self) -> list[str]:
        return [p for p in self.images if is_uri(p)]


def find_run_inputs(spec) -> Inputs:
    """The inputs `--image_path spec` names (see the module docstring); ImageError when none."""
    text = os.fspath(spec)
    if is_uri(text):
        return Inputs([text], kind="uri")
    path = local_path(text)
    text = str(path)
    if path.is_dir():
        images, misnamed = find_inputs(path)
        return Inputs(images, misnamed, path, "folder")
    if path.is_file() and path.suffix.lower() in LIST_ENDINGS and not is_image(path):
        return read_list(path)
    if not path.exists() and any(c in text for c in "*?["):
        return match_glob(text)
    images, _ = find_inputs(path)  # one image; a missing path or a non-image is an ImageError
    return Inputs(images, [], path.parent, "file")


def read_list(path: Path) -> Inputs:
    try:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as error:
        raise ImageError(f"cannot read the list {shown(path)}: {error.strerror or error}") from None
    folder = path.parent
    items = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        items.append(line if is_uri(line) else Path(os.path.abspath(folder / local_path(line))))
    if not items:
        raise ImageError(f"the list {shown(path)} names no inputs")
    images = unique_sorted(items)
    return Inputs(images, [], common_root(images), "list")


def match_glob(pattern: str) -> Inputs:
    matches = [Path(os.path.abspath(m)) for m in glob.glob(pattern, recursive=True)]
    files = [m for m in matches if m.is_file()]
    if not files:
        raise ImageError(f"no files match {shown(pattern)}")
    images = unique_sorted(files)
    return Inputs(images, [], common_root(images), "glob")


def unique_sorted(items: list) -> list:
    return sorted(dict.fromkeys(items), key=str)


def common_root(items: list) -> Path | None:
    """The deepest folder above every local input (their folders are mirrored below it)."""
    parents = {str(p.parent) for p in items if not is_uri(p)}
    return Path(os.path.commonpath(sorted(parents))) if parents else None


def input_key(item) -> str:
    """How a row or a manifest entry names an input: a URI as given, a local file by its absolute,
    resolved path (the same file given by a relative and an absolute path is one input)."""
    return item if is_uri(item) else str(Path(item).resolve())
