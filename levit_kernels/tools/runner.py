"""One pass over a list of image files, shared among the processes (distributed.py), with
each file's result back on rank 0 in input order.

The caller gives a `forward(images) -> one result per image` (results are small picklable
values: they travel to rank 0 every step); the pass decodes each process's shard in a
DataLoader, runs `forward` on the decoded images, gathers the step's results and the files
that could not be read, and on rank 0 yields (index, result) for every readable file in input
order while it reports each unreadable one on stderr. Other ranks yield nothing but must
still iterate: they take part in every step's gather.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterator, List, Tuple

import torch
from tqdm import tqdm

from .distributed import Processes
from .errors import UsageError
from .images import ImageFiles, make_loader

_NOTHING = (torch.empty(0, dtype=torch.long), None, [])   # a step after this shard has ended


class ImagePass:
    """Iterate it once; afterwards (on rank 0) `images` counts the files that were read,
    `skipped` lists (path, reason) of those that were not, and `seconds` is the wall time of
    the pass, decoding and gathering included."""

    def __init__(self, files: ImageFiles, processes: Processes,
                 forward: Callable[[torch.Tensor], List[Any]], batch: int, workers: int,
                 quiet: bool = False, command: str = ""):
        self.files, self.processes, self.forward = files, processes, forward
        self.batch, self.workers, self.command = batch, workers, command
        self.progress = not quiet and processes.rank == 0 and sys.stderr.isatty()
        self.images, self.skipped, self.seconds = 0, [], 0.0

    def _step(self, batch) -> List[Tuple[int, Any, str]]:
        """This process's (index, result, reason) for one batch of its shard."""
        indices, images, failures = batch
        done = [(index, None, reason) for index, reason in failures]
        if images is not None:
            images = images.to(self.processes.device, non_blocking=True)
            with torch.no_grad():
                results = self.forward(images)
            done += [(index, result, "") for index, result in zip(indices.tolist(), results)]
        return done

    def __iter__(self) -> Iterator[Tuple[int, Any]]:
        procs, n = self.processes, len(self.files)
        loader = make_loader(self.files, procs.shard(n), self.batch, self.workers,
                             pin_memory=procs.device.type == "cuda")
        bar = tqdm(total=n, unit="img", disable=not self.progress, file=sys.stderr,
                   dynamic_ncols=True)
        procs.barrier()         # time the pass, not the other processes' start-up
        start, expected = time.perf_counter(), 0
        batches = iter(loader)
        try:
            for _ in range(procs.steps(n, self.batch)):
                gathered = procs.gather(self._step(next(batches, _NOTHING)))
                if gathered is None:
                    continue
                step = sorted((item for items in gathered for item in items),
                              key=lambda item: item[0])
                for index, result, reason in step:
                    if index != expected:       # the sharding's promise, checked as it runs
                        raise RuntimeError(f"internal error: item {expected} expected, got "
                                           f"{index} (sharding over {procs.world} processes)")
                    expected += 1
                    if reason:
                        self.skipped.append((self.files.paths[index], reason))
                        tqdm.write(f"levit-kernels {self.command}: skipped "
                                   f"{self.files.paths[index]}: {reason}", file=sys.stderr)
                    else:
                        self.images += 1
                        yield index, result
                bar.update(len(step))
        finally:
            bar.close()
        if next(batches, None) is not None or (procs.rank == 0 and expected != n):
            raise RuntimeError(f"internal error: {n} items did not fit {procs.steps(n, self.batch)}"
                               f" steps of {self.batch} x {procs.world} processes")
        self.seconds = time.perf_counter() - start
        if procs.rank == 0 and not self.images:
            raise UsageError(f"none of the {n} image files could be read")
