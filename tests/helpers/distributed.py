"""Processes of a test as ranks of a gloo world on localhost."""

from __future__ import annotations

import contextlib
import os
import socket

import torch.distributed as dist

from megatron.utils.megatron_core import parallel_state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo_world(rank: int, world: int, port: int, through_deepspeed: bool = False):
    """This process as `rank` of a gloo world on localhost (started through DeepSpeed's comm
    layer when asked), torn down with megatron-core's groups on the way out."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    if through_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
