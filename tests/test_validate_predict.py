"""`levit-kernels validate` and `predict` on real image files written here: accuracy and
probabilities against a hand computation (PIL and numpy, not the package's transform) with
the plain model, fused vs reference, unreadable files, one process vs torchrun, bad input.

The image set: three class folders of coloured noise (PNG and JPEG, odd sizes, a nested
folder), a grayscale, a palette and an RGBA image, one image filed under the wrong class, a
truncated JPEG and a text file. The model is LeViT-128S at 64 px whose classifier is set to
the nearest class centroid of the images' features (plus 7 distractor classes), so that its
predictions depend on the image and its accuracy is neither 0 nor 100%.
"""
import csv
import json
import os
import socket
import struct
import subprocess
import sys
import zlib
from datetime import timedelta

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from levit_kernels import LeViT, cpu, create_model
from levit_kernels.model.checkpoint import class_names, head_config
from levit_kernels.tools.cli import main
from levit_testing import assert_usage_error, randomize_

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SIZE, CROP_PCT, NUM_CLASSES = 64, 0.9, 10
MODEL_ARGS = ["--variant", "128S", "--img-size", str(SIZE), "--batch", "5", "--threads", "1"]
COLOURS = {"ant": (200, 40, 40), "bee": (40, 200, 40), "cat": (40, 40, 200)}
# The random network's pooled features of these images differ by ~0.4% of their norm, and
# the centroid classifier reads those differences: float32 rounding (~1e-7 of the features)
# comes out ~250x larger in the logits, ~1e-4. A wrong transform is far larger: bilinear
# instead of bicubic resizing moves these probabilities by up to 25%.
LOGIT_TOL, PROB_REL_TOL = 1e-3, 5e-4

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")


@pytest.fixture(autouse=True)
def _keep_threads():
    """--threads sets torch's thread count for the process: give the pytest process its own
    back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _noise(rng, colour, height, width):
    pixels = np.asarray(colour, np.float64) + rng.normal(0, 40, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _write_images(root, rng):
    """The image set (see the module docstring); returns the corrupt file's path."""
    def put(name, image, **kwargs):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path, **kwargs)

    for cls, colour in COLOURS.items():
        put(f"{cls}/{cls}0.jpg", _noise(rng, colour, 60, 80), quality=90)
        put(f"{cls}/{cls}1.png", _noise(rng, colour, 90, 50))
    put("ant/deeper/ant2.png", _noise(rng, COLOURS["ant"], 64, 64))
    put("bee/bee2_gray.png", _noise(rng, COLOURS["bee"], 50, 70).convert("L"))
    palette = _noise(rng, COLOURS["bee"], 66, 77).quantize(16)
    put("bee/bee3_palette.png", palette, transparency=0)
    put("bee/misfiled_ant.jpg", _noise(rng, COLOURS["ant"], 72, 72))
    put("cat/cat2_rgba.png", _noise(rng, COLOURS["cat"], 80, 60).convert("RGBA"))
    jpeg = os.path.join(root, "cat/cat3_truncated.jpg")
    put("cat/cat3_truncated.jpg", _noise(rng, COLOURS["cat"], 90, 90))
    with open(jpeg, "r+b") as f:
        f.truncate(os.path.getsize(jpeg) // 3)
    with open(os.path.join(root, "cat", "notes.txt"), "w") as f:
        f.write("not an image\n")
    return jpeg


def hand_transform(path):
    """LeViT's eval transform written out with PIL and numpy: shorter side to
    int(64 / 0.9) = 71 (bicubic), center crop 64, ImageNet mean/std."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    short = int(SIZE / CROP_PCT)
    if width <= height:
        width, height = short, int(short * height / width)
    else:
        width, height = int(short * width / height), short
    image = image.resize((width, height), Image.BICUBIC)
    left, top = int(round((width - SIZE) / 2)), int(round((height - SIZE) / 2))
    image = image.crop((left, top, left + SIZE, top + SIZE))
    x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x - mean[:, None, None]) / std[:, None, None]


def _centroid_head_(model, images, targets, rng):
    """Make both heads the nearest-centroid classifier of the images' pooled features: class
    c's logit is -|f - c|^2 / 2 up to a term common to all classes. The 7 distractor
    centroids lie near the first class's, so that an image filed under another class that
    looks like the first one has its label outside the top 5."""
    with torch.no_grad():
        feats = model.eval().forward_features(images).mean(1)
        mean = feats.mean(0)
        centroids = [feats[torch.tensor(targets) == c].mean(0) - mean
                     for c in range(len(COLOURS))]
        spread = torch.stack(centroids).std(0)
        centroids += [centroids[0] + 0.5 * spread * torch.from_numpy(
            rng.normal(0, 1, feats.shape[1])).float()
            for _ in range(NUM_CLASSES - len(COLOURS))]
        weight = torch.stack(centroids)
        scale = 10 / weight.norm(dim=1).max() ** 2          # logits of order 10
        for head in (model.head, model.head_dist):
            head.bn.reset_running_stats()
            torch.nn.init.ones_(head.bn.weight), torch.nn.init.zeros_(head.bn.bias)
            head.linear.weight.copy_(weight * scale)
            head.linear.bias.copy_(-scale * (weight @ mean + (weight * weight).sum(1) / 2))
    return model


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    """The image folder, a checkpoint with class names, and what the plain model makes of
    each readable image: ImageFolder order, targets, logits."""
    base = tmp_path_factory.mktemp("images")
    data = str(base / "data")
    rng = np.random.default_rng(7)
    corrupt = _write_images(data, rng)
    paths, targets = [], []
    for target, cls in enumerate(sorted(COLOURS)):
        for folder, dirs, files in sorted(os.walk(os.path.join(data, cls))):
            paths += [os.path.join(folder, f) for f in sorted(files) if not f.endswith(".txt")]
            targets += [target] * sum(not f.endswith(".txt") for f in files)
    readable = [i for i, p in enumerate(paths) if p != corrupt]
    images = torch.stack([hand_transform(paths[i]) for i in readable])
    model = randomize_(LeViT("128S", num_classes=NUM_CLASSES, img_size=SIZE),
                       torch.Generator().manual_seed(3))
    _centroid_head_(model, images, [targets[i] for i in readable], rng)
    names = [f"class-{i}" for i in range(NUM_CLASSES)]
    checkpoint = str(base / "levit.pth")
    torch.save({"model": model.state_dict(), "class_names": names}, checkpoint)
    with torch.no_grad():
        logits = model.eval()(images)
    return {"data": data, "checkpoint": checkpoint, "base": base, "corrupt": corrupt,
            "paths": paths, "targets": targets, "readable": readable, "logits": logits,
            "names": names}


def expected_counts(s):
    top = s["logits"].topk(5, dim=1).indices
    targets = torch.tensor([s["targets"][i] for i in s["readable"]])
    return (int((top[:, 0] == targets).sum()), int((top == targets[:, None]).any(1).sum()))


def _validate_args(s, json_path, *extra):
    return ["validate", "--data", s["data"], "--checkpoint", s["checkpoint"], *MODEL_ARGS,
            "--compare", "reference", "--json", str(json_path), *extra]


def test_validate_matches_hand_computation(image_set, tmp_path, capsys):
    s = image_set
    out = tmp_path / "val.json"
    assert main(_validate_args(s, out, "--workers", "1")) == 0
    result = json.loads(out.read_text())["result"]
    top1, top5 = expected_counts(s)
    n = len(s["readable"])
    assert 0 < top1 < n and 0 < top5 < n        # a check that a wrong count could fail
    assert (result["images"], result["skipped"]) == (n, 1)
    assert (result["top1_correct"], result["top5_correct"]) == (top1, top5)
    assert result["top1"] == pytest.approx(100 * top1 / n)
    assert (result["reference"]["top1_correct"], result["reference"]["top5_correct"]) \
        == (top1, top5)
    assert result["agreement"]["top1_same"] == n
    assert result["agreement"]["max_abs_logit_diff"] < LOGIT_TOL
    assert result["images_per_s"] > 0
    [skipped] = result["skipped_files"]
    assert skipped["path"] == s["corrupt"] and "truncated" in skipped["reason"]
    captured = capsys.readouterr()
    assert captured.err.count(f"skipped {s['corrupt']}: ") == 1
    assert "top-1" in captured.out and "fused vs reference" in captured.out


def test_progress_bar_only_on_a_terminal_and_not_quiet(image_set, tmp_path, capsys,
                                                       monkeypatch):
    s = image_set
    args = ["predict", os.path.join(s["data"], "ant"), "--out", str(tmp_path / "p.csv"),
            "--checkpoint", s["checkpoint"], *MODEL_ARGS, "--workers", "0"]
    assert main(args) == 0
    assert "img/s" not in capsys.readouterr().err          # stderr is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(args) == 0
    assert "img/s" in capsys.readouterr().err
    assert main(args + ["--quiet"]) == 0
    assert "img/s" not in capsys.readouterr().err


def _expected_rows(s, paths, labels, topk=5):
    """(path, [(index, label, prob)]) of the readable ones among `paths`, by hand."""
    probs = s["logits"].softmax(1)
    row_of = {s["paths"][i]: r for r, i in enumerate(s["readable"])}
    rows = []
    for path in paths:
        if os.path.abspath(path) in row_of:
            top = probs[row_of[os.path.abspath(path)]].topk(topk)
            rows.append((path, [(i, labels[i], p) for i, p in
                                zip(top.indices.tolist(), top.values.tolist())]))
    return rows


def _read_csv(path):
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    header, body = lines[0], lines[1:]
    k = (len(header) - 1) // 3
    assert header[:4] == ["path", "top1_index", "top1_label", "top1_prob"]
    return [(r[0], [(int(r[1 + 3 * j]), r[2 + 3 * j], float(r[3 + 3 * j])) for j in range(k)])
            for r in body]


def _assert_rows_equal(got, want):
    assert [path for path, _ in got] == [path for path, _ in want]
    for (path, g), (_, w) in zip(got, want):
        assert [(i, label) for i, label, _ in g] == [(i, label) for i, label, _ in w], path
        assert [p for *_, p in g] == pytest.approx([p for *_, p in w], rel=PROB_REL_TOL,
                                                   abs=1e-6)


def test_links_that_loop_are_walked_once(tmp_path):
    """Two links back to the parent double the paths at every level: os.walk alone would
    not end. Each real folder is walked once, so each image is found once."""
    from levit_kernels.tools.images import walk_images
    root = tmp_path / "d"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(b"")
    (root / "sub" / "b.jpg").write_bytes(b"")
    for name in ("up1", "up2"):
        os.symlink("..", root / "sub" / name)
    os.symlink(str(root / "sub"), root / "again")     # one folder reached by two paths
    found = walk_images(str(root))
    assert sorted(os.path.basename(f) for f in found) == ["a.png", "b.jpg"]


def test_predict_csv_every_readable_file_once_in_order(image_set, tmp_path, capsys):
    """Inputs in the order given: a folder (recursive), a list file (a folder, a file, a
    missing file, a comment), a file named twice; class names from the checkpoint."""
    s = image_set
    data = s["data"]
    listing = tmp_path / "inputs.txt"
    misfiled = os.path.relpath(os.path.join(data, "bee", "misfiled_ant.jpg"), tmp_path)
    listing.write_text(f"# images\n{os.path.relpath(os.path.join(data, 'cat'), tmp_path)}\n\n"
                       f"{misfiled}\nmissing.png\n")
    out = tmp_path / "pred.csv"
    ant0 = os.path.join(data, "ant", "ant0.jpg")
    assert main(["predict", os.path.join(data, "ant"), f"@{listing}", ant0,
                 "--out", str(out), "--checkpoint", s["checkpoint"], *MODEL_ARGS,
                 "--workers", "1"]) == 0
    ants = [os.path.join(data, "ant", f) for f in ("ant0.jpg", "ant1.png")] + \
        [os.path.join(data, "ant", "deeper", "ant2.png")]
    # list entries are relative to the list file's folder, written normalised
    cats = [os.path.join(data, "cat", f) for f in ("cat0.jpg", "cat1.png", "cat2_rgba.png")]
    want = _expected_rows(s, ants + cats + [os.path.join(data, "bee", "misfiled_ant.jpg")],
                          s["names"])
    _assert_rows_equal(_read_csv(out), want)
    captured = capsys.readouterr()
    assert captured.err.count("skipped ") == 2
    assert "cat3_truncated.jpg: " in captured.err and "missing.png: FileNotFoundError" \
        in captured.err
    assert f"wrote {len(want)} predictions" in captured.out and "(2 unreadable files skipped)" \
        in captured.out


def test_predict_jsonl_with_labels_file(image_set, tmp_path):
    s = image_set
    labels = [f"label {i}" for i in range(NUM_CLASSES)]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    out = tmp_path / "pred.jsonl"
    bee = os.path.join(s["data"], "bee")
    assert main(["predict", bee, "--out", str(out), "--topk", "2", "--labels",
                 str(tmp_path / "labels.txt"), "--checkpoint", s["checkpoint"], *MODEL_ARGS,
                 "--workers", "0"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    got = [(r["path"], [(t["index"], t["label"], t["prob"]) for t in r["top"]]) for r in got]
    # the grayscale and palette images are read (as RGB) like any other
    paths = [os.path.join(bee, f) for f in ("bee0.jpg", "bee1.png", "bee2_gray.png",
                                            "bee3_palette.png", "misfiled_ant.jpg")]
    _assert_rows_equal(got, _expected_rows(s, paths, labels, topk=2))


def _torchrun(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "-m", "levit_kernels", *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def test_torchrun_two_processes_match_one(image_set, tmp_path):
    """12 files (one unreadable) in batches of 5 over 2 gloo processes: shards of 6 and 6,
    steps of 10 and 2 files. Same counts and the same prediction file as one process."""
    s = image_set
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main(_validate_args(s, one, "--workers", "0")) == 0
    run = _torchrun(*_validate_args(s, two, "--workers", "1"))
    assert run.returncode == 0, run.stderr
    assert run.stderr.count(f"skipped {s['corrupt']}: ") == 1       # reported once, by rank 0
    assert run.stdout.count("fused      top-1") == 1                    # printed by rank 0 only
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["config"]["processes"], b["config"]["processes"]) == (1, 2)
    for timing in ("seconds", "images_per_s"):
        del a["result"][timing], b["result"][timing]
    assert a["result"] == b["result"]

    csv_one, csv_two = tmp_path / "one.csv", tmp_path / "two.csv"
    predict = ["predict", s["data"], "--checkpoint", s["checkpoint"], *MODEL_ARGS]
    assert main(predict + ["--out", str(csv_one), "--workers", "0"]) == 0
    run = _torchrun(*predict, "--out", str(csv_two), "--workers", "1")
    assert run.returncode == 0, run.stderr
    assert csv_two.read_bytes() == csv_one.read_bytes()
    assert len(_read_csv(csv_one)) == len(s["readable"])


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_item_once_and_steps_come_in_order(world, monkeypatch):
    """The sharding promise runner.py relies on: the shards partition the items, and step s
    of every process together holds exactly items [s*B*W, (s+1)*B*W)."""
    from levit_kernels.tools.distributed import Processes
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")     # where a world of several would meet
    monkeypatch.setenv("MASTER_PORT", "29500")
    for n in range(0, 14):
        for batch in (1, 2, 5):
            shards = []
            for rank in range(world):
                monkeypatch.setenv("RANK", str(rank))
                monkeypatch.setenv("WORLD_SIZE", str(world))
                procs = Processes()
                shards.append((list(procs.shard(n)), procs.steps(n, batch)))
            assert sorted(i for shard, _ in shards for i in shard) == list(range(n))
            steps = {s for _, s in shards}
            assert len(steps) == 1
            for step in range(steps.pop()):
                got = sorted(i for shard, _ in shards
                             for i in shard[step * batch:(step + 1) * batch])
                assert got == list(range(step * batch * world,
                                         min(n, (step + 1) * batch * world)))


def test_checkpoint_class_names_and_head():
    model = LeViT("128S", num_classes=7, distillation=False)
    state = model.state_dict()
    assert head_config(state) == {"num_classes": 7, "distillation": False}
    assert class_names({"model": state, "class_names": ["a", "b"]}) == ["a", "b"]
    assert class_names({"model": state, "classes": ("x",)}) == ["x"]
    assert class_names(state) is None and class_names({"classes": [1, 2]}) is None
    loaded = create_model("128S", checkpoint={"model": state})
    assert (loaded.num_classes, loaded.distillation) == (7, False)


# ---- bad input: exit code 2 and one line naming the problem ---------------------------------
def _tiny_checkpoint(tmp_path, num_classes=2):
    path = tmp_path / f"c{num_classes}.pth"
    if not path.exists():
        torch.save(LeViT("128S", num_classes=num_classes, img_size=SIZE).state_dict(), path)
    return str(path)


def _list_file(tmp_path, text):
    path = tmp_path / "list.txt"
    path.write_text(text)
    return f"@{path}"


def _folder(tmp_path, *files):
    root = tmp_path / "set"
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not an image")
    root.mkdir(exist_ok=True)
    return str(root)


@pytest.mark.parametrize("make_args,message", [
    (lambda p: ["validate", "--data", str(p / "nope")], "no such directory"),
    (lambda p: ["validate", "--data", _folder(p)], "no class folders"),
    (lambda p: ["validate", "--data", _folder(p, "flat.jpg")], "no class folders"),
    (lambda p: ["validate", "--data", _folder(p, "a/x.txt")], "no image files"),
    (lambda p: ["validate", "--data", _folder(p, "a/x.jpg"), "--variant", "LeViT-999"],
     "unknown LeViT variant"),
    (lambda p: ["validate", "--data", _folder(p, "a/x.jpg"), "--batch", "0"], "positive integer"),
    (lambda p: ["validate", "--data", _folder(p, "a/x.jpg"), "--workers", "-1"],
     "integer >= 0"),
    (lambda p: ["validate", "--data", _folder(p, "a/x.jpg"), "--crop-pct", "1.5"], "(0, 1]"),
    # a resize past PIL's limit is the flag's fault, not every image file's
    (lambda p: ["validate", "--data", _folder(p, "a/x.jpg"), "--crop-pct", "1e-9"],
     "--crop-pct 1e-09: it resizes to"),
    (lambda p: ["predict", _folder(p, "x.jpg"), "--out", str(p / "o.csv"), "--crop-pct", "0.001"],
     "past PIL's limit"),
    (lambda p: ["validate", "--data", _folder(p, "a/x.jpg"), "--dtype", "float16"],
     "invalid choice"),
    (lambda p: ["validate", "--data", _folder(p, "a/x.jpg"), "--json", str(p / "no" / "r.json")],
     "no such directory"),
    (lambda p: ["validate", "--data", _folder(p, "a/x.jpg"), "--checkpoint", str(p / "w.pth")],
     "no such file"),
    (lambda p: ["validate", "--data", _folder(p, "a/x.jpg", "b/y.jpg", "c/z.jpg"),
                "--checkpoint", _tiny_checkpoint(p), *MODEL_ARGS],
     "3 class folders, but the model has 2 classes"),
    (lambda p: ["validate", "--data", _folder(p, "a/x.jpg"), "--checkpoint", _tiny_checkpoint(p),
                *MODEL_ARGS, "--workers", "0"], "none of the 1 image files could be read"),
    (lambda p: ["predict", str(p / "nope.jpg"), "--out", str(p / "o.csv")],
     "no such file or folder"),
    (lambda p: ["predict", _folder(p, "x.txt"), "--out", str(p / "o.csv")], "no image files"),
    (lambda p: ["predict", f"@{p / 'nope.txt'}", "--out", str(p / "o.csv")], "cannot read"),
    (lambda p: ["predict", _list_file(p, "# nothing\n\n"), "--out", str(p / "o.csv")],
     "names no files"),
    (lambda p: ["predict", _folder(p, "x.jpg"), "--out", str(p / "o.txt")],
     "expected a .csv or .jsonl"),
    (lambda p: ["predict", _folder(p, "x.jpg"), "--out", str(p / "no" / "o.csv")],
     "no such directory"),
    (lambda p: ["predict", _folder(p, "x.jpg"), "--out", str(p)], "is a directory"),
    (lambda p: ["predict", _folder(p, "x.jpg"), "--out", str(p / "o.csv"), "--topk", "0"],
     "positive integer"),
    (lambda p: ["predict", _folder(p, "x.jpg"), "--out", str(p / "o.csv"), "--topk", "3",
                "--checkpoint", _tiny_checkpoint(p), *MODEL_ARGS], "the model has 2 classes"),
    (lambda p: ["predict", _folder(p, "x.jpg"), "--out", str(p / "o.csv"), "--labels",
                str(p / "nope.txt")], "cannot read"),
    (lambda p: ["predict", _folder(p, "x.jpg", "l.txt"), "--out", str(p / "o.csv"), "--labels",
                str(p / "set" / "l.txt"), "--checkpoint", _tiny_checkpoint(p), *MODEL_ARGS],
     "1 names for a model of 2 classes"),
    (lambda p: ["predict", _folder(p, "x.jpg"), "--out", str(p / "o.csv"), "--labels",
                _list_file(p, "")[1:]], "the file is empty"),
    (lambda p: ["predict", "--out", str(p / "o.csv")], "required: INPUT"),
    (lambda p: ["predict", _folder(p, "x.jpg"), "--out", str(p / "o.csv"), "--checkpoint",
                _wide_checkpoint(p), *MODEL_ARGS], "pass checkpoint_img_size"),
    (lambda p: ["predict", _folder(p, "x.jpg"), "--out", str(p / "o.csv"),
                "--checkpoint-img-size", "64x96"], "give --checkpoint too"),
])
def test_bad_input_is_one_line_and_exit_2(make_args, message, tmp_path, capsys):
    assert_usage_error(make_args(tmp_path), message, capsys)


def _wide_checkpoint(tmp_path):
    """Weights trained at 64x96 px (4x6 tokens): their bias tables fit no square grid."""
    path = tmp_path / "wide.pth"
    torch.save(LeViT("128S", num_classes=2, img_size=(SIZE, 96)).state_dict(), path)
    return str(path)


def test_a_file_name_that_is_not_utf8_is_written_as_it_is(tmp_path):
    """Linux allows any bytes but / in a name: the CSV row carries them as they are on disk
    (it was a UnicodeEncodeError traceback and a half-written file)."""
    folder = tmp_path / "images"
    folder.mkdir()
    image = _noise(np.random.default_rng(0), (90, 120, 150), 40, 50)
    for name in (b"a.png", b"bad\xff.png", b"c.png"):
        image.save(os.path.join(os.fsencode(folder), name), format="PNG")
    out = tmp_path / "o.csv"
    assert main(["predict", str(folder), "--out", str(out), "--topk", "1", *MODEL_ARGS,
                 "--workers", "0", "--quiet"]) == 0
    rows = out.read_bytes().splitlines()[1:]
    assert [row.split(b",")[0].rsplit(b"/", 1)[1] for row in rows] == \
        [b"a.png", b"bad\xff.png", b"c.png"]


def test_a_non_square_checkpoint_loads_with_the_size_it_was_trained_at(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    _noise(np.random.default_rng(0), (90, 120, 150), 80, 100).save(folder / "x.png")
    out = tmp_path / "o.csv"
    assert main(["predict", str(folder), "--out", str(out), "--checkpoint",
                 _wide_checkpoint(tmp_path), "--checkpoint-img-size", "64x96", "--topk", "2",
                 *MODEL_ARGS, "--quiet"]) == 0
    assert len(list(csv.DictReader(out.open()))) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_cuda_without_cuda(tmp_path, capsys):
    assert main(["validate", "--data", _folder(tmp_path, "a/x.jpg"), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_inconsistent_torchrun_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["validate", "--data", _folder(tmp_path, "a/x.jpg")]) == 2
    assert "inconsistent torchrun environment" in capsys.readouterr().err


def test_eval_transform_non_square_covers_then_crops():
    """img_size (48, 64) from a 90x120 (h x w) image: resized keeping the aspect ratio to the
    smallest size covering int(48 / 0.9) x int(64 / 0.9) = 53 x 71, i.e. 71 / 120 -> 53 x 71,
    then center cropped."""
    from levit_kernels.tools.images import eval_transform
    image = _noise(np.random.default_rng(0), (90, 120, 150), 90, 120)
    got = eval_transform((48, 64))(image)
    resized = image.resize((71, 53), Image.BICUBIC)           # PIL sizes are (width, height)
    left, top = int(round((71 - 64) / 2)), int(round((53 - 48) / 2))
    crop = np.asarray(resized.crop((left, top, left + 64, top + 48)), np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = torch.from_numpy(((crop - mean) / std).astype(np.float32)).permute(2, 0, 1)
    assert got.shape == (3, 48, 64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def _png16(path, pixels, colour_type):
    """A 16-bit PNG written byte by byte (PIL writes 16-bit grayscale but not 16-bit RGB):
    `pixels` uint16 (h, w, channels), colour type 0 (gray) or 2 (RGB)."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                + chunk(b"IEND", b""))


def test_sixteen_bit_images_keep_their_high_byte(tmp_path):
    """A 16-bit grayscale image (PIL mode I;16, I;16B) was clipped to 255, all white past the
    darkest 0.4%: its samples keep their high byte, as PIL keeps it for a 16-bit RGB PNG, so
    the same picture gives the same tensor in gray or colour, 8 or 16 bits. 32-bit integer
    and float images have no range to scale from: reported, not clipped."""
    from levit_kernels.tools.images import ImageFiles, eval_transform, load_rgb
    rng = np.random.default_rng(5)
    wide = rng.integers(0, 65536, (40, 56), dtype=np.uint16)
    wide[0, :6] = [0, 255, 256, 511, 32768, 65535]
    paths = {name: str(tmp_path / name) for name in
             ("gray16.png", "gray16b.tif", "rgb16.png", "gray8.png", "int32.tif", "float.tif")}
    Image.fromarray(wide).save(paths["gray16.png"])                                # I;16
    Image.frombytes("I;16B", (56, 40), wide.astype(">u2").tobytes()).save(paths["gray16b.tif"])
    _png16(paths["rgb16.png"], np.repeat(wide[..., None], 3, axis=2), colour_type=2)
    Image.fromarray((wide >> 8).astype(np.uint8)).save(paths["gray8.png"])
    Image.fromarray(wide.astype(np.int32) * 1000).save(paths["int32.tif"])         # mode I
    Image.fromarray(wide.astype(np.float32) / 65535).save(paths["float.tif"])      # mode F
    assert Image.open(paths["gray16b.tif"]).mode == "I;16B"
    want = np.repeat((wide >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert want[0, :6, 0].tolist() == [0, 0, 1, 1, 128, 255]
    for name in ("gray16.png", "gray16b.tif", "rgb16.png", "gray8.png"):
        np.testing.assert_array_equal(np.asarray(load_rgb(paths[name])), want, err_msg=name)
    files = ImageFiles(list(paths.values()), eval_transform((SIZE, SIZE)))
    samples = [files[i] for i in range(len(files))]
    for _, image, reason in samples[:4]:
        assert reason is None
        torch.testing.assert_close(image, samples[3][1], rtol=0, atol=0)
    for (_, image, reason), mode in zip(samples[4:], ("I", "F")):
        assert image is None and f"(PIL mode {mode}) have no known range" in reason, reason


def test_thin_strip_resizes_only_the_crop(tmp_path, monkeypatch):
    """A 20000 x 1 strip would be resized to 4.96 M x 248 px (3.7 GB; 100000 x 1 is killed
    for memory) before the 224 px crop: past FULL_RESIZE_AREA times the resize target, only
    the source region under the crop is resized. On a smooth picture it agrees with a full
    resize to within 2 levels of 8 bits (PIL orders its two passes by the sizes, and each
    rounds and clips to 8 bits)."""
    from levit_kernels.tools import images
    biggest = []
    resize = Image.Image.resize

    def counted_resize(self, size, *args, **kwargs):
        biggest.append(size[0] * size[1])
        if size[0] * size[1] > 10 ** 7:         # fail here, before allocating gigabytes
            raise AssertionError(f"resize to {size}")
        return resize(self, size, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "resize", counted_resize)
    rng = np.random.default_rng(2)
    strip = Image.fromarray(rng.integers(0, 256, (1, 20000, 3), dtype=np.uint8))
    strip.save(tmp_path / "strip.png")
    _, image, reason = images.ImageFiles([str(tmp_path / "strip.png")],
                                         images.eval_transform((224, 224)))[0]
    assert reason is None and image.shape == (3, 224, 224)
    assert max(biggest) == 224 * 224
    # strips whose full resize is affordable (<= 1 M px): the box path against it, by hand
    for height, width, size in ((1, 400, 64), (3, 900, 48), (700, 5, 64), (30, 1500, (48, 64)),
                                (2000, 9, 64)):
        picture = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        picture = picture.filter(ImageFilter.GaussianBlur(2))      # photo-like, not noise
        size = size if isinstance(size, tuple) else (size, size)
        transform = images.eval_transform(size).transforms[0]
        new_h, new_w = transform.resized_size(width, height)
        assert new_h * new_w > images.FULL_RESIZE_AREA * transform.scaled[0] * transform.scaled[1]
        full = picture.resize((new_w, new_h), Image.BICUBIC)
        left, top = int(round((new_w - size[1]) / 2)), int(round((new_h - size[0]) / 2))
        want = np.asarray(full.crop((left, top, left + size[1], top + size[0])), np.int16)
        got = np.asarray(transform(picture), np.int16)
        assert got.shape == want.shape, (height, width)
        assert np.abs(got - want).max() <= 2 and np.abs(got - want).mean() < 0.1, (height, width)


def test_labels_and_list_files_with_a_byte_order_mark(tmp_path):
    """Windows Notepad saves "UTF-8" with a byte order mark: it is not part of class 0's name
    or of the first listed path."""
    from levit_kernels.tools.images import find_images
    from levit_kernels.tools.predict import read_labels
    (tmp_path / "labels.txt").write_bytes("\ufeffcat\r\ndog\r\nbird\r\n".encode())
    assert read_labels(str(tmp_path / "labels.txt")) == ["cat", "dog", "bird"]
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "list.txt").write_bytes("\ufeffa.png\n".encode())
    assert find_images([f"@{tmp_path / 'list.txt'}"]) == [str(tmp_path / "a.png")]


def test_world_size_without_master_address_is_one_line(tmp_path, capsys, monkeypatch):
    """WORLD_SIZE=2 copied from a job script, outside torchrun: refused before the model is
    loaded, not torch.distributed's traceback."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    assert_usage_error(["predict", _folder(tmp_path, "x.jpg"), "--out", str(tmp_path / "o.csv")],
                       "MASTER_ADDR and MASTER_PORT (where they meet) are not set", capsys)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "http")
    assert_usage_error(["predict", _folder(tmp_path, "x.jpg"), "--out", str(tmp_path / "o.csv")],
                       "MASTER_PORT='http': expected an integer", capsys)


def test_a_missing_process_is_one_line_after_the_rendezvous(tmp_path, capsys, monkeypatch):
    """Process 0 of 2 started alone: it says that it waits, and where, then gives up after
    RENDEZVOUS_TIMEOUT with one line and exit code 2 (torch: 30 minutes of silence)."""
    from levit_kernels.tools import distributed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", str(port))):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "RENDEZVOUS_TIMEOUT", timedelta(seconds=1))
    code = main(["predict", _folder(tmp_path, "x.jpg"), "--out", str(tmp_path / "o.csv"),
                 "--checkpoint", _tiny_checkpoint(tmp_path), *MODEL_ARGS, "--workers", "0",
                 "--topk", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert f"process 0 of 2 waiting for the other 1 at 127.0.0.1:{port}" in err[-2], err
    assert err[-1].startswith("levit-kernels predict: error: process 0 of 2 could not join the "
                              f"other 1 at 127.0.0.1:{port}"), err
    assert not torch.distributed.is_initialized()
