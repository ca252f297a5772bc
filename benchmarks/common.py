"""Helpers shared by the benchmark scripts: interleaved timing and a description of the machine."""
import os
import platform
import statistics
import time

import torch

from vit_explain.io.allocator import keep_freed_memory

# Decided once, before anything is timed, for the baseline and vit-explain alike (the command
# would otherwise tune the allocator in the middle of an interleaved run); VIT_EXPLAIN_MALLOC=system
# measures both with glibc's defaults.
ALLOCATOR = "freed memory kept (io/allocator.py)" if keep_freed_memory() else "system defaults"


def check_device(parser, device: str) -> None:
    """A --device cuda run on a machine without CUDA stops with one line, not a traceback."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")


def machine() -> str:
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"]
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus{gpu}, torch threads "
            f"{torch.get_num_threads()}, torch {torch.__version__}, allocator {ALLOCATOR}, "
            f"load average {' '.join(load)}")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(pairs: dict, repeats: int) -> dict:
    """{name: (explain, baseline)} -> {name: (median ratio, median explain s, median baseline s)}.

    Each repeat times the baseline and then the explainer back to back, so slow phases of a
    shared machine hit both; the ratio's median is what we report.
    """
    for explain, base in pairs.values():  # warm-up
        explain(), base()
    samples = {name: [] for name in pairs}
    for _ in range(repeats):
        for name, (explain, base) in pairs.items():
            t_base, t_explain = timed(base), timed(explain)
            samples[name].append((t_explain / t_base, t_explain, t_base))
    return {name: tuple(statistics.median(s[i] for s in values) for i in range(3))
            for name, values in samples.items()}
