"""The `levit-kernels` command on tiny settings: every subcommand, and its error handling."""
import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from levit_kernels import LeViT, cpu
from levit_kernels.tools.cli import main
from levit_testing import assert_usage_error


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "levit_kernels", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
def test_bench_small(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--variant", "128S", "--batch", "1", "--threads", "1",
                 "--seconds", "0.2", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "reference" in table and "fused" in table
    report = json.loads(out.read_text())
    results = {r["provider"]: r for r in report["results"]}
    assert results["fused"]["images_per_s"] > 0
    assert results["fused"]["max_abs_diff"] < 1e-3
    assert report["config"]["threads"] == 1 and report["config"]["variant"] == "LeViT-128S"
    # benchmarks/report.py --bench turns such files into the README's table
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "report.py")
    row = subprocess.run([sys.executable, script, "--bench", str(out)], capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()[-1]
    ratio = results["fused"]["images_per_s"] / results["reference"]["images_per_s"]
    assert row.startswith("| LeViT-128S | batch 1, threads 1 |"), row
    assert f"| {ratio:.2f}× | - |" in row, row       # no peers in this run


@pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
def test_bench_bfloat16_reports_accuracy(tmp_path, capsys):
    """`bench --dtype bfloat16` on CPU: the fused bf16 model beside the plain one in bf16,
    each with its logit error against float64 and top-1 agreement with float32."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--variant", "128S", "--batch", "1", "--threads", "1", "--dtype",
                 "bfloat16", "--img-size", "128", "--seconds", "0.1", "--json", str(out)]) == 0
    assert "rel L2 vs f64" in capsys.readouterr().out
    results = {r["provider"]: r for r in json.loads(out.read_text())["results"]}
    fused, plain = results["fused"], results["reference"]
    assert fused["images_per_s"] > 0
    assert 0 < fused["rel_l2_vs_float64"] <= 1.5 * plain["rel_l2_vs_float64"]
    assert 0 <= fused["top1_vs_float32"] <= 1


def test_summary_lists_every_variant(capsys):
    assert main(["summary"]) == 0
    text = capsys.readouterr().out
    for name in ("LeViT-128S", "LeViT-384", "LeViT-A1", "LeViT-A6"):
        assert name in text


def test_info(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "torch" in text and "cpu isa" in text and "triton" in text


@pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
def test_profile(capsys):
    assert main(["profile"]) == 0
    text = capsys.readouterr().out
    for row in ("Q/K projection", "attention x V", "MLP", "total", "LeViT-256 fused"):
        assert row in text


@pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
def test_breakdown(tmp_path, capsys):
    """Each step of the fused forward, then the same by kind; the JSON holds the steps."""
    out = tmp_path / "steps.json"
    assert main(["breakdown", "--variant", "128S", "--batch", "2", "--threads", "1",
                 "--img-size", "64", "--rounds", "2", "--dtype", "bfloat16", "--json",
                 str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("LeViT-128S  batch 2  cpu bfloat16  threads 1")
    for row in ("stem conv 1 (3->16, 3x3 stride 2, to 32x32)", "layer 1 attention (4x4 tokens, "
                "4 heads): attention", "by kind", "stem convolutions", "MLPs (two GEMMs each)"):
        assert row in text
    report = json.loads(out.read_text())
    assert report["config"]["rounds"] == 2 and report["config"]["threads"] == 1
    assert report["steps_ms"] == pytest.approx(sum(s["ms"] for s in report["steps"]))
    assert {s["kind"] for s in report["steps"]} == {"convolution", "gemm", "attention", "mlp",
                                                   "copy"}


@pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
def test_breakdown_versus_another_dtype(tmp_path, capsys):
    """--versus times both dtypes in one run: every step and kind gets the other's time and
    the ratio (other / this), which the JSON's two reports give back."""
    out = tmp_path / "steps.json"
    assert main(["breakdown", "--variant", "128S", "--batch", "1", "--threads", "1",
                 "--img-size", "64", "--rounds", "2", "--dtype", "bfloat16", "--versus",
                 "float32", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "float32, interleaved in the same run" in text
    reports = json.loads(out.read_text())
    assert set(reports) == {"bfloat16", "float32"}
    assert reports["float32"]["config"]["interleaved_with"] == ["bfloat16"]
    bf16, f32 = reports["bfloat16"], reports["float32"]
    head = next(line for line in text.splitlines() if line.startswith("head ("))
    want = {s["step"]: s["ms"] for s in f32["steps"]}["head (384->1000)"]
    mine = {s["step"]: s["ms"] for s in bf16["steps"]}["head (384->1000)"]
    assert head.split()[-2:] == [f"{want:.3f}", f"{want / mine:5.2f}x".strip()]
    assert [s["step"] for s in bf16["steps"]] == [s["step"] for s in f32["steps"]]


def test_biases_png(tmp_path):
    pytest.importorskip("matplotlib")
    model = LeViT("128S")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.copy_(torch.randn_like(p))
    ckpt = tmp_path / "w.pth"
    torch.save(model.state_dict(), ckpt)
    png = tmp_path / "maps.png"
    assert main(["biases", "--checkpoint", str(ckpt), "--variant", "128S", "--blocks", "0,2",
                 "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args,message", [
    (["bench", "--variant", "LeViT-999"], "unknown LeViT variant"),
    (["bench", "--batch", "0"], "positive integer"),
    (["bench", "--frobnicate"], "unrecognized arguments"),
    (["bench", "--dtype", "float16"], "float32 and bfloat16 only"),
    (["breakdown", "--rounds", "0"], "positive integer"),
    (["breakdown", "--dtype", "float16"], "invalid choice"),
    (["breakdown", "--versus", "float32"], "compare against the other dtype"),
    (["biases", "--checkpoint", "/nonexistent/w.pth"], "no such file"),
    (["nonsense"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    result = run_cli("biases", "--checkpoint", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot load" in result.stderr


# ---- more bad input, checked in-process (fast): exit code 2, one error line, no traceback.
def _checkpoint(tmp_path, variant="128S"):
    path = tmp_path / f"{variant}.pth"
    if not path.exists():
        torch.save(LeViT(variant).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("make_args,message", [
    (lambda p: ["bench", "--img-size", "8"], "sides >= 16"),
    (lambda p: ["bench", "--img-size", "224x"], "expected N or HxW"),
    (lambda p: ["bench", "--threads", "-1"], "positive integer"),
    (lambda p: ["bench", "--seconds", "-1"], "positive number of seconds"),
    (lambda p: ["bench", "--seconds", "soon"], "positive number of seconds"),
    (lambda p: ["bench", "--json", str(p / "missing" / "out.json")], "no such directory"),
    (lambda p: ["bench", "--json", str(p)], "is a directory"),
    (lambda p: ["bench", "--json", ""], "expected a file name, got an empty one"),
    (lambda p: ["bench", "--amp"], "--amp: autocast runs a lower precision"),
    (lambda p: ["bench", "--paper", "--batch", "1", "--dtype", "bfloat16"],
     "float32; GPU: batch 2048, fp16 autocast): drop --batch, --dtype"),
    (lambda p: ["bench", "--device", "tpu"], "invalid choice"),
    (lambda p: ["biases", "--variant", "128S"], "required: --checkpoint"),
    (lambda p: ["biases", "--checkpoint", str(p)], "cannot load"),              # a directory
    (lambda p: ["biases", "--checkpoint", os.devnull], "cannot load"),          # empty
    (lambda p: ["biases", "--checkpoint", _checkpoint(p), "--variant", "LeViT-128"],
     "does not match LeViT-128"),                                               # wrong variant
    (lambda p: ["biases", "--checkpoint", _checkpoint(p), "--variant", "128S",
                "--out", str(p / "missing" / "maps.png")], "no such directory"),
    (lambda p: ["biases", "--checkpoint", _checkpoint(p), "--variant", "128S",
                "--blocks", "1,x"], "comma-separated integers"),
    (lambda p: ["biases", "--checkpoint", _checkpoint(p), "--variant", "128S", "--out", ""],
     "expected a file name, got an empty one"),
    (lambda p: ["summary", "extra"], "unrecognized arguments"),
    (lambda p: [], "required"),
])
def test_bad_input_in_process(make_args, message, tmp_path, capsys):
    assert_usage_error(make_args(tmp_path), message, capsys)


def test_files_that_are_not_checkpoints_say_so(tmp_path, capsys):
    """A text file, a JPEG, a truncated checkpoint: one line that says what the file is not,
    with torch.load's reason in a few words, never its advice to load with weights_only=False
    (which runs the file's code, and cannot be asked for here)."""
    from PIL import Image
    files = {"text.pth": b"not a checkpoint\n", "text.jpg": b"this is not an image\n"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    (tmp_path / "cut.pth").write_bytes(open(_checkpoint(tmp_path), "rb").read()[:300])
    for name in ("text.pth", "text.jpg", "photo.jpg", "cut.pth"):
        assert main(["biases", "--checkpoint", str(tmp_path / name), "--variant", "128S"]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert "cannot load it: not a PyTorch checkpoint or safetensors file, or a damaged one (" \
            in line, line
        assert "weights_only" not in line and len(line.replace(str(tmp_path), "")) < 250, line
    # a real checkpoint holding more than tensors: that is what it is told
    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "args.pth")
    assert main(["biases", "--checkpoint", str(tmp_path / "args.pth"), "--variant", "128S"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "holds an object of type argparse.Namespace" in line and "weights_only=False" \
        not in line, line


@pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
def test_bench_says_when_threads_outnumber_the_cpus(tmp_path, capsys):
    """--threads past the CPUs: the fused kernels' pool stops at one thread per CPU while
    PyTorch runs them all, so the speed-up measures PyTorch's oversubscription as well. Said
    before the table and in the JSON; nothing said when the threads fit."""
    from levit_kernels.tools.distributed import available_cores
    cpus, threads = available_cores(), torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        for asked in (cpus + 1, 1):
            assert main(["bench", "--variant", "128S", "--batch", "1", "--img-size", "32",
                         "--seconds", "0.05", "--threads", str(asked), "--json", str(out)]) == 0
            first = capsys.readouterr().out.splitlines()[0]
            note = json.loads(out.read_text())["config"]["threads_note"]
            if asked > cpus:
                assert note == (f"the fused kernels run at most {cpus} threads (one per CPU this "
                                f"process may use) while PyTorch and the peers run the requested "
                                f"{asked}, oversubscribed")
                assert first == f"note: {note}"
            else:
                assert note == "" and first.startswith("LeViT-128S  batch 1")
    finally:
        torch.set_num_threads(threads)


def test_sizes_past_the_memory_are_one_line_and_exit_2(capsys):
    """--img-size 100000 makes attention tables of ~24 PB: the allocator's failure is told in
    one line that names the flags, not a traceback (or a blamed checkpoint)."""
    assert_usage_error(["bench", "--variant", "128S", "--batch", "1", "--seconds", "0.01",
                        "--img-size", "100000"], "out of memory", capsys)
    assert_usage_error(["biases", "--variant", "128S", "--checkpoint", os.devnull,
                        "--img-size", "100000"], "cannot load", capsys)   # read first: empty


def test_biases_without_matplotlib_names_it(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "w.pth"
    torch.save(LeViT("128S").state_dict(), ckpt)
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib fails
    assert_usage_error(["biases", "--checkpoint", str(ckpt), "--variant", "128S",
                        "--out", str(tmp_path / "b.png")], "needs matplotlib", capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_bench_cuda_without_cuda(capsys):
    assert main(["bench", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_report_merges_interleaved_rounds(tmp_path):
    """benchmarks/report.py on a pytest-benchmark JSON whose providers ran in rounds: one row
    per provider, its median over the rounds, the speed-up against the reference's."""
    def bench(provider, rnd, median):
        return {"group": "LeViT-128S cpu b1 t2", "name": f"test_model_cpu[{rnd}-{provider}]",
                "params": {"provider": provider, "round_": rnd},
                "extra_info": {"images": 1, "round": rnd}, "stats": {"median": median}}
    data = {"datetime": "2026-11-25T00:00:00", "machine_info": {}, "benchmarks": [
        bench(p, r, m) for r, (ref, fused) in enumerate([(0.010, 0.004), (0.012, 0.009),
                                                          (0.011, 0.005)], 1)
        for p, m in (("reference", ref), ("fused", fused))]}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "report.py")
    lines = subprocess.run([sys.executable, script, str(path)], capture_output=True, text=True,
                           timeout=60, check=True).stdout.splitlines()
    rows = [line for line in lines if line.startswith("| LeViT-128S")]
    assert rows == ["| LeViT-128S cpu b1 t2 | reference | 11.000 | 90.9 | 1.00x | 3 |",
                    "| LeViT-128S cpu b1 t2 | fused | 5.000 | 200.0 | 2.20x | 3 |"]
