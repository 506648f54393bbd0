"""Launch configs for the Triton kernels: pruned by shape and arch, tuned once per shape class,
remembered across processes.

A kernel's best config depends on its shape (head dims, token counts, N/K) and on how many
tiles the grid has relative to the GPU, not on the exact batch. So a config is looked up by

    key = (dtype, the shape dims that matter, bucket(rows))      bucket: 1, 4, 16, 64, ...

(rows = B*H for attention, M = B*tokens for the GEMMs), and found, in order, in

  1. this process's memory;
  2. the on-disk cache of tuned configs (LEVIT_TRITON_TUNE_CACHE, default
     ~/.cache/levit_kernels/triton_tuned.json), valid for one device name, Triton version and
     kernel source: a second process starts tuned;
  3. the per-arch default table for LeViT's shapes (tuned_defaults.py), unless
     LEVIT_TRITON_TUNE=always;
  4. otherwise the candidates (the configs left after pruning) are timed with
     triton.testing.do_bench and the fastest is stored in 1 and 2. With LEVIT_TRITON_TUNE=off,
     or while a CUDA graph is being captured (nothing may synchronise then), the first
     candidate is used untimed and not stored.

Under TRITON_INTERPRET=1 the tuner's `interpret(shape)` config is used (timing the interpreter
is meaningless): 16-wide tiles along dims up to 64, so the small test shapes cross several
tiles and their tails, and 64- or 128-wide tiles beyond, since the interpreter's cost is per
tile op, not per element (a whole model forward stays affordable in CI).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import triton

from .common import RUNTIME, interpreting
from .tuned_defaults import DEFAULTS

TUNE_ENV = "LEVIT_TRITON_TUNE"
TUNE_MODES = ("auto", "always", "off")
CACHE_ENV = "LEVIT_TRITON_TUNE_CACHE"


def pow2(n: int, lo: int = 16) -> int:
    """n rounded up to a power of two, at least `lo` (tl.dot's smallest tile side)."""
    return max(lo, triton.next_power_of_2(n))


def interpret_tile(n: int) -> int:
    """The interpreter's tile side along a dim of size n (see the module docstring)."""
    return 16 if n <= 64 else 64 if n <= 256 else 128


def gemm_interpret(shape: dict) -> "Config":
    """The interpreter's config of the (M, N, K) GEMM kernels (linear, conv2d)."""
    return Config(dict(BLOCK_M=interpret_tile(shape["M"]), BLOCK_N=interpret_tile(shape["N"]),
                       BLOCK_K=interpret_tile(shape["K"]), GROUP_M=2))


def bucket(n: int) -> int:
    """n rounded up to a power of 4: batch sizes in one bucket share a tuned config."""
    b = 1
    while b < n:
        b *= 4
    return b


@dataclass(frozen=True)
class Config:
    """One launch config: the kernel's tile constexprs plus num_warps / num_stages."""
    kwargs: Dict[str, int] = field(hash=False)
    num_warps: int = 4
    num_stages: int = 1

    def launch_kwargs(self) -> dict:
        if interpreting():          # the interpreter takes no compile options
            return dict(self.kwargs)
        return dict(self.kwargs, num_warps=self.num_warps, num_stages=self.num_stages)

    def to_json(self) -> list:
        return [self.kwargs, self.num_warps, self.num_stages]

    @staticmethod
    def from_json(value) -> "Config":
        kwargs, warps, stages = value
        return Config(dict(kwargs), int(warps), int(stages))

    def __str__(self):
        tiles = " ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{tiles} w{self.num_warps} s{self.num_stages}"


def tune_mode() -> str:
    mode = os.environ.get(TUNE_ENV, "auto")
    if mode not in TUNE_MODES:
        raise ValueError(f"{TUNE_ENV}: expected one of {TUNE_MODES}, got {mode!r}")
    return mode


def cache_path() -> str:
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "levit_kernels", "triton_tuned.json")


class TuneCache:
    """The on-disk {entry key: [config, kernel source hash]} file. Read once per path; each
    new entry is merged into the file as it is now and written atomically (a concurrent
    writer can lose an entry, never corrupt the file)."""

    def __init__(self):
        self._entries: Dict[str, list] = {}
        self._path: Optional[str] = None
        self._lock = threading.Lock()

    def _load(self, path: str) -> Dict[str, list]:
        try:
            with open(path) as f:
                data = json.load(f)
            return data.get("entries", {}) if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, key: str, source: str) -> Optional[Config]:
        with self._lock:
            path = cache_path()
            if path != self._path:
                self._path, self._entries = path, self._load(path)
            entry = self._entries.get(key)
        if entry is None or entry[1] != source:
            return None
        try:
            return Config.from_json(entry[0])
        except (TypeError, ValueError):
            return None

    def put(self, key: str, config: Config, source: str) -> None:
        with self._lock:
            path = cache_path()
            entries = self._load(path)
            entries[key] = [config.to_json(), source]
            self._path, self._entries = path, entries
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump({"entries": entries}, f, indent=0, sort_keys=True)
                os.replace(tmp, path)
            except OSError:
                pass        # a read-only home: tuned for this process only


CACHE = TuneCache()


def _capturing() -> bool:
    """A CUDA graph is being captured on the current stream (nothing may synchronise)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class Tuner:
    """Picks `kernel`'s config for a launch of a given shape (see the module docstring).

    configs: every config the kernel may run with, most promising first; prune(configs, shape,
    arch) -> the ones worth trying for a shape (never empty); key: the shape entries that
    change the best config; bucket: the shape entry (rows) that is bucketed; interpret(shape)
    -> the config under TRITON_INTERPRET=1."""

    def __init__(self, name: str, kernel, configs: List[Config],
                 prune: Callable[[List[Config], dict, int], List[Config]],
                 key, bucket: str, interpret: Callable[[dict], Config]):
        self.name, self.kernel, self.configs = name, kernel, configs
        self.prune, self.key_names, self.bucket_name = prune, tuple(key), bucket
        self.interpret = interpret
        self._picked: Dict[tuple, Config] = {}
        self._source: Optional[str] = None

    def candidates(self, shape: dict, arch: int) -> List[Config]:
        return self.prune(self.configs, shape, arch)

    def shape_key(self, shape: dict) -> str:
        """The default table's key: the shape entries that matter, without the bucket."""
        return ",".join(str(shape[k]).replace("torch.", "") for k in self.key_names)

    def pick(self, shape: dict, device: torch.device, run: Callable[[Config], None]) -> Config:
        if interpreting():
            return self.interpret(shape)
        arch = RUNTIME.capability(device)
        name = RUNTIME.device_name(device)
        key = (name, self.shape_key(shape), bucket(shape[self.bucket_name]))
        config = self._picked.get(key)
        if config is None:
            config = self._resolve(arch, name, key, shape, device, run)
        return config

    def source(self) -> str:
        """What tuned entries are valid for: the kernel's source (with the jit functions it
        calls) and the Triton version."""
        if self._source is None:
            self._source = f"{getattr(self.kernel, 'cache_key', '')}-triton{triton.__version__}"
        return self._source

    def _resolve(self, arch, name, key, shape, device, run) -> Config:
        entry = f"{self.name}|{name}|{key[1]}|{key[2]}"
        config = CACHE.get(entry, self.source())
        mode = tune_mode()
        if config is None and mode != "always":
            table = DEFAULTS.get(arch, {}).get(self.name, {})
            if key[1] in table:
                config = Config.from_json(table[key[1]])
        if config is not None:
            self._picked[key] = config
            return config
        candidates = self.candidates(shape, arch)
        if mode == "off" or len(candidates) == 1 or _capturing():
            return candidates[0]
        config = _fastest(candidates, run)
        self._picked[key] = config
        CACHE.put(entry, config, self.source())
        return config


def time_config(run: Callable[[Config], None], config: Config) -> float:
    """Median milliseconds of one launch with `config` (a seam: tests time without a GPU)."""
    return triton.testing.do_bench(lambda: run(config), warmup=5, rep=25)


def _fastest(candidates: List[Config], run: Callable[[Config], None]) -> Config:
    """The candidate with the lowest median time (one that fails to compile or launch, e.g.
    out of shared memory on this GPU, is skipped)."""
    best, best_ms = None, float("inf")
    for config in candidates:
        try:
            ms = time_config(run, config)
        except Exception:       # noqa: BLE001  (OutOfResources, PTXASError, ...)
            continue
        if ms < best_ms:
            best, best_ms = config, ms
    if best is None:
        raise RuntimeError(f"no launch config could run: tried {[str(c) for c in candidates]}")
    return best
