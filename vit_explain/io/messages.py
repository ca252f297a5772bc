"""Outside text (file names, third-party errors) as it goes into a one-line message.

A file name may hold any character but "/" and NUL: a newline in one would split an error in
two, an escape sequence would reach the terminal. Every path shown in a message goes through
`shown`; `one_line` is the last guard on a whole message where it is printed.
"""
from __future__ import annotations

import os


def shown(path: str | os.PathLike) -> str:
    """The path as is when every character prints; otherwise quoted, control characters (and
    undecodable bytes) escaped as Python writes them: 'a\\nb.png'."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return text if text.isprintable() else repr(text)


def one_line(text: str) -> str:
    """text with every character that does not print (newline, tab, escape, ...) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
