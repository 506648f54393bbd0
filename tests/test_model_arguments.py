"""LeViT's constructor and LeViTConfig refuse what would build a broken model, naming the
argument: zero widths (division by zero, or layers no kernel takes), floats and bools where
ints belong (silently truncated or read as 1 before), negative class counts."""
import pytest

from levit_kernels import LeViT, LeViTConfig

TWO_STAGES = dict(name="X", embed_dim=(64, 128), key_dim=16, num_heads=(4, 4), depth=(1, 1))


@pytest.mark.parametrize("change, match", [
    ({"key_dim": 0}, "X: key_dim: expected an int >= 1, got 0"),
    ({"down_stride": 0}, "X: down_stride: expected an int >= 1, got 0"),
    ({"num_heads": (0, 4)}, r"X: num_heads\[0\]: expected an int >= 1, got 0"),
    ({"depth": (1, -1)}, r"X: depth\[1\]: expected an int >= 0, got -1"),
    ({"embed_dim": (64, 0)}, r"X: embed_dim\[1\]: expected an int >= 1, got 0"),
    ({"key_dim": 16.0}, "X: key_dim: expected an int >= 1, got 16.0"),
    ({"attn_ratio": 0.01}, r"X: attn_ratio=0.01 gives a width of int\(0.01 \* 16\) = 0"),
    ({"mlp_ratio": True}, "X: mlp_ratio: expected a finite number, got True"),
    ({"down_mlp_ratio": float("inf")}, "X: down_mlp_ratio: expected a finite number, got inf"),
    ({"drop_path": 1.0}, r"X: drop_path=1.0, expected a rate in \[0, 1\)"),
])
def test_config_refuses_broken_widths(change, match):
    with pytest.raises(ValueError, match=match):
        LeViTConfig(**{**TWO_STAGES, **change})


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_classes": -1}, ValueError, "num_classes: expected an int >= 0, got -1"),
    ({"num_classes": 2.5}, ValueError, "num_classes: expected an int >= 0, got 2.5"),
    ({"num_classes": True}, ValueError, "num_classes: expected an int >= 0, got True"),
    ({"in_chans": 0}, ValueError, "in_chans: expected an int >= 1, got 0"),
    ({"distillation": "no"}, TypeError, "distillation: expected True or False, got 'no'"),
    ({"img_size": 224.0}, TypeError, "img_size: expected an int or"),
    ({"img_size": (224.9, 224.9)}, TypeError, "img_size: expected an int or"),
    ({"img_size": True}, TypeError, "img_size: expected an int or"),
    ({"img_size": (224, 224, 3)}, TypeError, "img_size: expected an int or"),
    ({"img_size": (224, 0)}, ValueError, r"img_size: expected positive sides, got \(224, 0\)"),
])
@pytest.mark.parametrize("fused", [False, True])
def test_constructor_names_the_bad_argument(kwargs, error, match, fused):
    with pytest.raises(error, match=match):
        LeViT("128S", fused=fused, **kwargs)


def test_numpy_ints_are_ints():
    numpy = pytest.importorskip("numpy")
    model = LeViT("128S", num_classes=numpy.int64(5), img_size=(numpy.int64(64),) * 2)
    assert model.img_size == (64, 64) and type(model.img_size[0]) is int
    assert model.num_classes == 5 and type(model.num_classes) is int
