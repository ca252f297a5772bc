"""--engine torchrun: `torchrun --nproc-per-node N -m vit_explain --engine torchrun ...`.

Every process is one `runner.Run` over its shard of the inputs: the inputs still to do, sorted,
strided by rank (`todo[rank::world]`: no padding, so no image is explained twice, unlike
DistributedSampler). Each rank writes its own part files of the Parquet table
(`part-<run>-r<rank>-*.parquet`); rank 0 holds the output folder's lock, repairs the table before
the others read it, and after everyone has finished keeps one row per request, writes
manifest.json and prints the totals. The processes talk over gloo (CPU), whatever the device:
they exchange only small Python objects. On CUDA each process explains on its LOCAL_RANK's GPU.
"""
from __future__ import annotations

import dataclasses
import datetime
import os

from ..errors import EXIT_USAGE, CommandError
from ..options import Options
from ..runner import Group, Run

LAUNCH = "torchrun --nproc-per-node N -m vit_explain --engine torchrun ..."


class TorchrunGroup(Group):
    def __init__(self):
        import torch.distributed as dist
        self.dist = dist
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=2))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def barrier(self) -> None:
        self.dist.barrier()

    def broadcast(self, value):
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        values = [None] * self.world
        self.dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        self.dist.destroy_process_group()


def run(options: Options) -> int:
    if not all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        raise CommandError(f"--engine torchrun runs under torchrun: {LAUNCH}", EXIT_USAGE)
    import torch
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = options.device
    if options.device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    group = TorchrunGroup()
    try:
        return Run(dataclasses.replace(options, device=device), group, engine="torchrun").execute()
    finally:
        group.close()
