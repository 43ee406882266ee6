"""Collective helpers for multi-process (torch.distributed) training that also work in a single process."""
import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


class CollectiveError(RuntimeError):
    """A collective failed because another process did not answer in time (hung, stopped or died)."""


# How gloo, nccl and hccl word a collective that waited too long or lost its peer.
_COMMUNICATION_FAILURE = re.compile(r"timed out|timeout|connection (reset|closed)|peer", re.IGNORECASE)


@contextlib.contextmanager
def named_collective(what: str) -> Iterator[None]:
    """Re-raise a timeout or lost peer inside the block as CollectiveError naming `what` and this process."""
    try:
        yield
    except RuntimeError as error:
        if isinstance(error, CollectiveError) or not _COMMUNICATION_FAILURE.search(str(error)):
            raise
        raise CollectiveError(
            f"{what} failed on rank {get_rank()} of {get_world_size()}: another process did not take part within "
            "the timeout (SOLVER.DDP_TIMEOUT_MINUTES); it has hung, been stopped or died. See that process's log. "
            f"({str(error).strip()})"
        ) from error


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    """Rank of this process on its node, as set by torchrun (LOCAL_RANK; 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """True on global rank 0."""
    return get_rank() == 0


def synchronize() -> None:
    """Barrier over all processes (no-op when not distributed)."""
    if get_world_size() > 1:
        with named_collective("barrier (synchronize)"):
            dist.barrier()


def all_gather(data: Any) -> list[Any]:
    """The picklable `data` of every rank, in rank order."""
    if get_world_size() == 1:
        return [data]
    gathered: list[Any] = [None] * get_world_size()
    with named_collective("all_gather_object (all_gather)"):
        dist.all_gather_object(gathered, data)
    return gathered


def broadcast_object(data: Any, src: int = 0) -> Any:
    """The picklable `data` of rank `src`, on every rank."""
    if get_world_size() == 1:
        return data
    holder = [data]
    with named_collective("broadcast_object_list (broadcast_object)"):
        dist.broadcast_object_list(holder, src=src)
    return holder[0]


def reduce_dict(input_dict: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """Sum (or mean) of each scalar tensor over all ranks; every rank gets the result.

    Every rank receiving the same values lets all of them take the same decision (e.g. about a non-finite loss).
    """
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict)  # the same order on every rank
        values = torch.stack([input_dict[name].detach().float() for name in names])
        with named_collective(f"all_reduce (reduce_dict of {', '.join(names)})"):
            dist.all_reduce(values)
        if average:
            values /= world_size
    reduced = dict(zip(names, values))
    return {name: reduced[name] for name in input_dict}


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over all ranks (the tensor itself when not distributed)."""
    if get_world_size() < 2:
        return tensor
    tensor = tensor.clone()
    with named_collective("all_reduce (reduce_sum)"):
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on at least one rank."""
    if get_world_size() < 2:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    with named_collective("all_reduce (any_rank)"):
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)


def shared_random_seed() -> int:
    """A random integer that is the same on every rank (all ranks must call this)."""
    return all_gather(int(np.random.randint(2 ** 31)))[0]
