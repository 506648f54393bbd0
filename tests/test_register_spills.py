"""benchmarks/register_spills.py: it finds a kernel's K loop in objdump's output and tells an
accumulator kept on the stack from one kept in registers. (Running it on a real build takes a
build with symbols, ~1 minute: a manual check, benchmarks/README.md.)"""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import register_spills  # noqa: E402

# objdump -d -C --no-show-raw-insn, trimmed: a spilling tile, a clean one, a non-kernel.
DISASSEMBLY = """
0000000000001000 <void levit::(anonymous namespace)::tile_bf16<levit::(anonymous namespace)::Avx2, levit::(anonymous namespace)::Widened, 6, 2>(levit::GemmBlockBf16 const&, long, long, levit::bf16 const*, long)>:
    1000:\tvxorps %xmm0,%xmm0,%xmm0
    1004:\tvmovdqu (%rdx),%ymm2
    1008:\tvfmadd231ps %ymm2,%ymm14,%ymm10
    100c:\tvmovaps %ymm8,0x28(%rsp)
    1010:\tvfmadd213ps 0x28(%rsp),%ymm1,%ymm7
    1014:\tjg     1004 <void levit::(anonymous namespace)::tile_bf16<levit::(anonymous namespace)::Avx2, levit::(anonymous namespace)::Widened, 6, 2>(levit::GemmBlockBf16 const&, long, long, levit::bf16 const*, long)+0x4>
    1018:\tvfmadd231ps 0x8(%rsp),%ymm1,%ymm7
    101c:\tjne    1018 <void levit::(anonymous namespace)::tile_bf16<levit::(anonymous namespace)::Avx2, levit::(anonymous namespace)::Widened, 6, 2>(levit::GemmBlockBf16 const&, long, long, levit::bf16 const*, long)+0x18>
    1020:\tret

0000000000002000 <void levit::(anonymous namespace)::micro_tile<levit::(anonymous namespace)::Avx2, 6, 2>(levit::GemmBlock const&)>:
    2000:\tmov    0x8(%rsp),%rax
    2004:\tvbroadcastss (%rcx,%rax,4),%ymm14
    2008:\tvfmadd231ps %ymm2,%ymm14,%ymm10
    200c:\tvfmadd231ps %ymm1,%ymm14,%ymm9
    2010:\tjg     2004 <void levit::(anonymous namespace)::micro_tile<levit::(anonymous namespace)::Avx2, 6, 2>(levit::GemmBlock const&)+0x4>
    2014:\tvmovaps %ymm10,0x20(%rsp)
    2018:\tret

0000000000003000 <levit::pack_weight(float const*, long, long, long, float*, int)>:
    3000:\tvfmadd231ps 0x8(%rsp),%ymm1,%ymm7
    3004:\tjg     3000 <levit::pack_weight(float const*, long, long, long, float*, int)>
"""


def test_a_k_loop_with_accumulators_on_the_stack_is_flagged_and_a_clean_one_is_not():
    lines, spilled = register_spills.report(DISASSEMBLY)
    assert spilled
    assert lines[1:] == ["ok         2      0      4  void micro_tile<Avx2, 6, 2>",
                         "SPILLS     2      2      5  void tile_bf16<Avx2, Widened, 6, 2>"]


def test_the_k_loop_is_the_innermost_loop_with_the_most_products():
    tile = register_spills.functions(DISASSEMBLY)[next(
        name for name in register_spills.functions(DISASSEMBLY) if "tile_bf16" in name)]
    assert register_spills.k_loop(tile) == (2, 2, 5)      # not the one-FMA loop after it


def test_without_kernel_symbols_it_says_so(tmp_path, capsys, monkeypatch):
    """A release build's kernels are local symbols objdump does not name: exit 2, not 0."""
    stripped = DISASSEMBLY[DISASSEMBLY.index("0000000000003000"):]
    so = tmp_path / "_C.so"
    so.write_bytes(b"\x7fELF")
    monkeypatch.setattr(register_spills.subprocess, "run",
                        lambda *args, **kwargs: SimpleNamespace(stdout=stripped, returncode=0))
    assert register_spills.main(["--so", str(so)]) == 2
    assert "no kernel symbols" in capsys.readouterr().out


def test_a_missing_or_unreadable_module_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as missing:
        register_spills.main(["--so", str(tmp_path / "nothing.so")])
    assert missing.value.code == 2 and "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.so"
    junk.write_text("not an ELF file")
    with pytest.raises(SystemExit) as unreadable:
        register_spills.main(["--so", str(junk)])
    assert str(unreadable.value.code).startswith(f"objdump cannot read {junk}")
