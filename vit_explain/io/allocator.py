"""Keep the memory a batch freed for the next batch instead of giving it back to the system.

glibc's malloc hands blocks above its mmap threshold (128 kB at first, raised as such blocks are
freed) to fresh mmap pages, and trims the top of the heap when a large block there is freed. A
ViT's activations and attention maps are such blocks (an (8, 3, 197, 197) attention is 3.7 MB),
so every batch maps and zeroes its pages again: measured on deit_tiny with 8 images, 6,000-11,000
page faults per fused forward and 17,000-27,000 per forward that records attention, about a
tenth of the forward's time, with neither spent on arithmetic. Fixing both thresholds high makes
the second batch reuse the first one's pages (0 faults per batch); the process holds at most its
peak use, which the first batch reached anyway.

This changes the whole process's allocator, so the library never does it on import: the
`vit-explain` command calls `keep_freed_memory()` as it starts (its process is a run of the
tool), and a notebook or script may call it too. Setting VIT_EXPLAIN_MALLOC=system, or any of
glibc's own MALLOC_*_ / GLIBC_TUNABLES variables, leaves the allocator as it is.
"""
import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20  # blocks up to 64 MiB come from the heap (deit_base's B=8 attention is 15 MB)
TRIM_THRESHOLD = 1 << 30   # the heap is trimmed only when more than 1 GiB at its top is free
OPT_OUT = "VIT_EXPLAIN_MALLOC"
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                   "GLIBC_TUNABLES")

_applied = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True when they are set.

    False, changing nothing, on a C library other than glibc, with VIT_EXPLAIN_MALLOC=system, or
    when the environment already tunes glibc's malloc (the user's setting wins).
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(OPT_OUT, "").lower() == "system" or any(v in os.environ for v in GLIBC_VARIABLES):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # mmap threshold first: setting either one stops glibc's own adjusting of both
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
