"""The plain LeViT model: same logits as timm's, both checkpoint namings, paper sizes."""
import pytest
import torch

import levit_kernels
from levit_kernels import LeViT, VARIANTS, create_model, load_checkpoint, multiply_adds
from levit_kernels.model.config import canonical_name

from levit_testing import randomize_, timm_to_original

timm = pytest.importorskip("timm")

PAPER = ["LeViT-128S", "LeViT-128", "LeViT-192", "LeViT-256", "LeViT-384"]
TIMM_NAME = {v: v.lower().replace("-", "_") for v in PAPER}


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("variant", PAPER)
def test_matches_timm_in_both_namings(variant):
    ref = timm.create_model(TIMM_NAME[variant]).eval()
    randomize_(ref)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = ref(images)
        state = ref.state_dict()
        ours = create_model(variant, checkpoint=state).eval()
        assert rel_err(ours(images), expected) <= 1e-5
        original = {"model": timm_to_original(state, VARIANTS[variant].depth)}
        # the original release also saves the index tables; they must be accepted and ignored
        for key in [k for k in original["model"] if k.endswith("attention_biases")]:
            n = original["model"][key].shape[1]
            original["model"][key.replace("attention_biases", "attention_bias_idxs")] = \
                torch.zeros(n, n, dtype=torch.long)
        ours2 = load_checkpoint(LeViT(variant), original).eval()
        assert rel_err(ours2(images), expected) <= 1e-5


def test_timm_conv_mode_checkpoints_load():
    """timm's levit_conv_* models: the same layers as 1x1 convolutions, (N, K, 1, 1) weights."""
    ref = randomize_(timm.create_model("levit_conv_128s")).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        for fused in (False, True):
            ours = create_model("128S", checkpoint=ref.state_dict(), fused=fused).eval()
            assert rel_err(ours(images), ref(images)) <= 1e-5


@pytest.mark.parametrize("variant", PAPER)
def test_parameter_count_and_flops_match_paper(variant):
    cfg = VARIANTS[variant]
    model = LeViT(variant)
    assert sum(p.numel() for p in model.parameters()) == cfg.paper_params
    assert abs(multiply_adds(cfg) / cfg.paper_flops - 1) <= 0.01


@pytest.mark.parametrize("variant", ["LeViT-A1", "LeViT-A6"])
def test_ablations_match_128s_budget(variant):
    assert abs(multiply_adds(variant) / multiply_adds("LeViT-128S") - 1) <= 0.05
    with torch.no_grad():
        out = LeViT(variant, num_classes=10).eval()(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["LeViT-128S", "128S", "levit_128s", "128s", "LEVIT-128S"])
def test_variant_names(name):
    assert canonical_name(name) == "LeViT-128S"


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="LeViT-256"):
        LeViT("LeViT-999")


def test_training_returns_both_heads_eval_returns_their_mean():
    model = randomize_(LeViT("128S", num_classes=7))
    images = torch.randn(2, 3, 224, 224)
    model.train()
    for m in model.modules():           # deterministic BN in train mode for the comparison
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    out, out_dist = model(images)
    assert out.shape == out_dist.shape == (2, 7)
    no_distill = LeViT("128S", num_classes=7, distillation=False).eval()
    assert no_distill(images).shape == (2, 7)


def test_drop_path_is_active_only_in_training():
    from levit_kernels.model.levit import drop_path
    assert LeViT("384").config.drop_path == 0.1
    x = torch.ones(1000, 3)
    assert torch.equal(drop_path(x, 0.1, training=False), x)
    dropped = drop_path(x, 0.1, training=True)
    kept = dropped[:, 0] != 0
    assert 0.8 < kept.float().mean() < 0.97                   # about 10% of samples dropped
    assert torch.allclose(dropped[kept], torch.full_like(dropped[kept], 1 / 0.9))


def test_wrong_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="img_size"):
        LeViT("128S").eval()(torch.randn(1, 3, 64, 64))


def test_strict_loading_names_the_bad_key():
    model = LeViT("128S")
    state = model.state_dict()
    state["stages.0.blocks.0.attn.bogus"] = torch.zeros(1)
    with pytest.raises(KeyError, match="bogus"):
        load_checkpoint(model, state)
    state = model.state_dict()
    del state["head.linear.weight"]
    with pytest.raises(KeyError, match="head.linear.weight"):
        load_checkpoint(model, state)
    original = timm_to_original(LeViT("128S").state_dict(), VARIANTS["LeViT-128S"].depth)
    original["blocks.0.m.qkv.c.extra"] = torch.zeros(1)
    with pytest.raises(KeyError, match="blocks.0.m.qkv.c.extra"):
        load_checkpoint(model, original)


def test_checkpoint_file_roundtrip(tmp_path):
    model = randomize_(LeViT("128S")).eval()
    path = tmp_path / "levit.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = create_model("128s", checkpoint=str(path)).eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_import_does_not_touch_cuda_or_triton():
    import subprocess
    import sys
    code = ("import sys, levit_kernels, torch; "
            "assert 'triton' not in sys.modules, 'triton imported'; "
            "assert not torch.cuda.is_initialized(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
