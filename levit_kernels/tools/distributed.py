"""One process or many: a process's place among those torchrun started, its share of the
items, its threads, and the one collective the tools need.

torchrun (`python -m torch.distributed.run`) starts the processes and tells each its place
through the environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT);
a process started any other way is a world of one and never touches torch.distributed.
Processes talk over gloo on CPU and NCCL on CUDA.

Joining. Each process first tells on stderr that it waits for the others at MASTER_ADDR:PORT,
then meets them within RENDEZVOUS_TIMEOUT; a process missing by then (started alone, a wrong
address, a rank that failed to start) is one line and exit code 2, not torch's half hour of
silence and a traceback. The collectives that follow keep torch's default timeout: ranks
legitimately reach a step's gather minutes apart (their shards' images differ in size).

Sharding. Process r of W takes items r, r+W, r+2W, ...: DistributedSampler's split without
its padding (DistributedSampler repeats the first items so that every shard has the same
length; a repeated image would be counted and written twice). Every process runs the same
number of steps (rank 0's shard is the longest), a process whose shard has ended takes part
with nothing. In step s the processes' batches of B hold shard positions [sB, (s+1)B), which
are exactly the items [sBW, (s+1)BW) of the whole set: gathering each step's results on rank 0
and sorting them by index gives every item once, in input order, as the run goes.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from .errors import UsageError

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

# How long a process waits for all the others to join. torchrun has already gathered its
# machines (its own rendezvous) before it starts the processes, so what is left is the skew of
# their start-up -- importing torch and loading the model, seconds to a minute -- not torch's
# 30 minutes, which are sized for collectives. 5 minutes leaves a wide margin for that.
RENDEZVOUS_TIMEOUT = timedelta(minutes=5)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"environment variable {name}={text!r}: expected an integer "
                         f"(torchrun sets it)")


def _master_address(world: int):
    """(MASTER_ADDR, MASTER_PORT), where the processes of a world of `world` meet; refused up
    front when torchrun's variables are missing or malformed, before any model is loaded."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        raise UsageError(f"WORLD_SIZE={world} asks for {world} processes, but MASTER_ADDR and "
                         f"MASTER_PORT (where they meet) are not set: start them with torchrun "
                         f"(python -m torch.distributed.run --nproc-per-node {world} ...), or "
                         f"unset WORLD_SIZE to run one")
    number = _env_int("MASTER_PORT", 0)
    if not 0 < number < 2 ** 16:
        raise UsageError(f"environment variable MASTER_PORT={port!r}: expected a port number "
                         f"1..65535 (torchrun sets it)")
    return addr, number


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))     # what this process may run on (cgroups, taskset)
    except AttributeError:                      # not on Linux
        return os.cpu_count() or 1


class Processes:
    """This process's place: rank/world, its device, and its share of the machine's cores.

    Reading the environment starts nothing; `with processes:` joins the others (and leaves
    the group at the end), so that every argument is checked, and every model loaded, before
    a process can wait for another that has already failed."""

    def __init__(self, device: str = "cpu", threads: Optional[int] = None, command: str = ""):
        self.command = command      # the subcommand, for the messages on stderr
        self.rank, self.world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        self.local_rank = _env_int("LOCAL_RANK", 0)
        self.local_world = _env_int("LOCAL_WORLD_SIZE", 1)
        if not 0 <= self.rank < self.world or not 0 <= self.local_rank < self.local_world:
            raise UsageError("inconsistent torchrun environment: "
                             + ", ".join(f"{k}={os.environ.get(k)}" for k in _ENV))
        if self.world > 1:
            self.address = _master_address(self.world)
        if device == "cuda":
            if not torch.cuda.is_available():
                raise UsageError("--device cuda: no CUDA device is available")
            if self.local_rank >= torch.cuda.device_count():
                raise UsageError(f"--device cuda: process {self.local_rank} of this machine has "
                                 f"no GPU ({torch.cuda.device_count()} CUDA devices): start at "
                                 f"most that many processes per machine")
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)      # NCCL's collectives use the current device
        else:
            self.device = torch.device("cpu")
        # N processes on one machine, each with torch's default of one thread per core, would
        # run N times as many threads as cores. (torchrun's own default, OMP_NUM_THREADS=1,
        # leaves all but N cores idle.) The C++ kernels read torch's thread count too.
        if threads is not None or self.local_world > 1:
            torch.set_num_threads(threads or max(1, available_cores() // self.local_world))
        self.threads = torch.get_num_threads()

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def default_workers(self) -> int:
        """DataLoader workers per process: decoding a JPEG costs about as much as LeViT's
        forward on it, so up to 4, but no more than this process's cores."""
        return min(4, max(1, available_cores() // self.local_world))

    def __enter__(self):
        if self.distributed and not dist.is_initialized():
            self._join()
        return self

    def _join(self) -> None:
        """init_process_group's env:// rendezvous, with RENDEZVOUS_TIMEOUT on the store while
        the processes meet, and torch's default on it (and on the group) once they have."""
        others = self.world - 1
        where = f"{self.address[0]}:{self.address[1]}"
        seconds = RENDEZVOUS_TIMEOUT.total_seconds()
        name = f"levit-kernels {self.command}".rstrip()
        print(f"{name}: process {self.rank} of {self.world} waiting for the other {others} at "
              f"{where} (for up to {seconds:g} s)", file=sys.stderr, flush=True)
        try:
            store, _, _ = next(dist.rendezvous("env://", self.rank, self.world,
                                               timeout=RENDEZVOUS_TIMEOUT))
            # the PrefixStore init_process_group puts around a store it creates itself
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    store=dist.PrefixStore("default_pg", store),
                                    rank=self.rank, world_size=self.world)
            # all have joined (NCCL builds its communicator only here, on this process's GPU)
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)
            store.set_timeout(default_pg_timeout)
        except (RuntimeError, ValueError) as exc:   # torch's DistError is a RuntimeError
            if dist.is_initialized():
                dist.destroy_process_group()
            reason = " ".join(str(exc).split("\n")[0].split()).rstrip(".")
            raise UsageError(f"process {self.rank} of {self.world} could not join the other "
                             f"{others} at {where} ({reason or type(exc).__name__}): start all "
                             f"WORLD_SIZE={self.world} of them (torchrun does)")

    def __exit__(self, *exc):
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
        return False

    def shard(self, n: int) -> range:
        return range(self.rank, n, self.world)

    def steps(self, n: int, batch: int) -> int:
        """Steps every process runs: enough for the longest shard (rank 0's)."""
        return -(-len(range(0, n, self.world)) // batch)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every process's `obj` on rank 0, in rank order; None on the others."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out
