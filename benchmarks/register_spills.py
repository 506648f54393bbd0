"""Which CPU micro-kernels keep accumulators on the stack: a static check of the compiled loops.

    python benchmarks/register_spills.py              builds the extension with symbols (~1 min)
    python benchmarks/register_spills.py --so PATH    reads an existing build with symbols

A register-blocked kernel is fast only if its tile's accumulators stay in registers for the
whole K loop. When a tile needs more vector registers than the ISA has (AVX2: 16 YMM, AVX-512:
32 ZMM), the compiler stores some accumulators to the stack and reloads them every step, and
the loop runs at store-forwarding latency instead of FMA throughput. Nothing fails: the results
are the same, only slower (the bf16 AVX2 GEMM's 6×16 tile did this; its 5×16 replacement runs
1.2-1.4× faster, benchmarks/README.md). Every ISA's kernels are compiled into the one module,
so this runs on any x86 machine, AVX-512 kernels included.

For each micro-kernel (GEMM tiles, attention block passes) it finds the innermost loop with the
most FMA / dot-product instructions (the K loop) and counts the vector instructions in it that
touch the stack. Exit status 1 when any kernel's K loop does, else 0.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("tile_bf16<", "micro_tile<", "block_pass<")   # csrc's register-blocked kernels
PRODUCT = re.compile(r"\bv(fn?madd\d+ps|dpbf16ps)\b")
VECTOR_STACK = re.compile(r"%[xyz]mm\d+.*\(%rsp\)|\(%rsp\).*%[xyz]mm\d+")
ADDRESS = re.compile(r"\s+([0-9a-f]+):")
BACKWARD = re.compile(r"\sj\w+\s+([0-9a-f]+) <")


def build_with_symbols(out: Path) -> Path:
    """The extension built RelWithDebInfo at -O3 (the release flags plus -g) into `out`."""
    import pybind11
    build = out / "build"
    for cmd in (["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
                 "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                 "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O3 -g -DNDEBUG",
                 f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out}",
                 f"-DPython_EXECUTABLE={sys.executable}",
                 f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"],
                ["cmake", "--build", str(build)]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{' '.join(cmd[:2])} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return out / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"


def functions(disassembly: str) -> Dict[str, List[str]]:
    """{demangled name: its instruction lines} from `objdump -d -C` output."""
    found: Dict[str, List[str]] = {}
    for block in disassembly.split("\n\n"):
        lines = block.strip().splitlines()
        head = re.match(r"[0-9a-f]+ <(.*)>:$", lines[0]) if lines else None
        if head:
            found[head.group(1)] = lines[1:]
    return found


def k_loop(lines: List[str]) -> Optional[Tuple[int, int, int]]:
    """(products, vector stack accesses, instructions) of the innermost loop with the most
    FMA / dot-product instructions; None without such a loop."""
    addresses = [int(m.group(1), 16) if (m := ADDRESS.match(line)) else None for line in lines]
    loops = []
    for line, at in zip(lines, addresses):
        jump = BACKWARD.search(line)
        if jump and at is not None and int(jump.group(1), 16) < at:
            loops.append((int(jump.group(1), 16), at))
    innermost = [(a, b) for a, b in loops
                 if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    best = None
    for a, b in innermost:
        body = [line for line, at in zip(lines, addresses) if at is not None and a <= at <= b]
        products = sum(bool(PRODUCT.search(line)) for line in body)
        stack = sum(bool(VECTOR_STACK.search(line)) for line in body)
        if products and (best is None or products > best[0]):
            best = (products, stack, len(body))
    return best


def short(name: str) -> str:
    return name.replace("levit::(anonymous namespace)::", "").replace("levit::", "").split("(")[0]


def report(disassembly: str) -> Tuple[List[str], bool]:
    """Lines of the table, and whether any kernel's K loop touches the stack."""
    rows, spilled = [], False
    for name, lines in sorted(functions(disassembly).items()):
        if not any(k in name for k in KERNELS):
            continue
        loop = k_loop(lines)
        if loop is None:
            continue
        products, stack, size = loop
        spilled |= stack > 0
        mark = "SPILLS" if stack else "ok"
        rows.append(f"{mark:<7} {products:>4} {stack:>6} {size:>6}  {short(name)}")
    header = f"{'':<7} {'FMAs':>4} {'stack':>6} {'instrs':>6}  kernel (its K loop)"
    return [header, *dict.fromkeys(rows)], spilled   # a template's copies listed once


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--so", type=Path, help="an extension module built with symbols (-g)")
    args = parser.parse_args(argv)
    if args.so is not None and not args.so.is_file():
        parser.error(f"--so {args.so}: no such file")
    with tempfile.TemporaryDirectory() as tmp:
        so = args.so or build_with_symbols(Path(tmp))
        dump = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(so)],
                              capture_output=True, text=True)
    if dump.returncode:
        sys.exit(f"objdump cannot read {so}: {dump.stderr.strip()}")
    text = dump.stdout
    lines, spilled = report(text)
    if len(lines) == 1:
        print(f"{so}: no kernel symbols (a release build is stripped of them; build with -g)")
        return 2
    print("\n".join(lines))
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
