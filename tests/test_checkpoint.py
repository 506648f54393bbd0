"""Checkpoint loading beyond the happy path: bias tables of another (non-square) image size,
malformed state dicts, checkpoints without a classifier, and another variant's weights."""
import pytest
import torch

from levit_kernels import LeViT, create_model, load_checkpoint

from levit_testing import randomize_


def _bias_modules(model):
    return [m for m in model.modules() if hasattr(m, "attention_biases")]


def _rows_only_checkpoint(img_size):
    """A LeViT-128S state dict at `img_size` whose every bias depends on the row offset dy
    alone (entry dy * cols + dx holds dy): resized or copied right, it still does."""
    model = LeViT("128S", img_size=img_size, num_classes=10)
    with torch.no_grad():
        for m in _bias_modules(model):
            rows, cols = m.key_resolution
            dy = torch.arange(rows, dtype=torch.float32).repeat_interleave(cols)
            m.attention_biases.copy_(dy.expand_as(m.attention_biases))
    return model.state_dict()


def _assert_rows_only(model):
    for m in _bias_modules(model):
        rows, cols = m.key_resolution
        table = m.attention_biases.detach().reshape(-1, rows, cols)
        across_dx = (table.amax(dim=2) - table.amin(dim=2)).max().item()
        assert across_dx < 1e-5, f"{m.key_resolution}: the bias varies with dx by {across_dx}"
        torch.testing.assert_close(table[:, 0, 0], torch.zeros(table.shape[0]))  # self kept


@pytest.mark.parametrize("target", [224, (256, 352), (320, 224), (224, 320)])
def test_non_square_checkpoint_resizes_by_the_size_it_was_trained_at(target):
    state = _rows_only_checkpoint((224, 320))                  # 14x20 token grid
    model = create_model("128S", checkpoint=state, img_size=target,
                         checkpoint_img_size=(224, 320))
    _assert_rows_only(model)


def test_non_square_checkpoint_without_its_size_is_refused():
    """280 entries are a 14x20 grid or a 20x14 one: guessing transposed the maps."""
    state = _rows_only_checkpoint((224, 320))
    with pytest.raises(ValueError, match=r"attention_biases: .*280 entries.*"
                                         r"pass checkpoint_img_size=\(height, width\)"):
        create_model("128S", checkpoint=state)
    # the same grids as the model's: loaded as they are (the model's size is the likely one)
    _assert_rows_only(create_model("128S", checkpoint=state, img_size=(224, 320)))


def test_square_checkpoint_resizes_without_its_size():
    state = _rows_only_checkpoint(224)
    _assert_rows_only(create_model("128S", checkpoint=state, img_size=(288, 160)))


def test_checkpoint_img_size_is_checked():
    state = _rows_only_checkpoint((224, 320))
    with pytest.raises(ValueError, match=r"280 entries per head, not the 14x19 grid of "
                                         r"checkpoint_img_size=\(224, 300\)"):
        create_model("128S", checkpoint=state, checkpoint_img_size=(224, 300))
    with pytest.raises(TypeError, match="checkpoint_img_size: expected an int or"):
        create_model("128S", checkpoint=state, checkpoint_img_size=224.0)


BASE = LeViT("128S").state_dict()
TABLE = "stages.0.blocks.0.attn.attention_biases"


@pytest.mark.parametrize("entries, error, match", [
    ({"head.linear.weight": 1.0}, TypeError, "entry 'head.linear.weight' is float, not a tensor"),
    ({3: torch.zeros(1)}, TypeError, "key 3 is int, not str"),
    ({TABLE: [[0.0] * 196] * 4}, TypeError, f"entry '{TABLE}' is list, not a tensor"),
    ({"head.linear.weight": torch.tensor(1.0)}, ValueError,
     r"head.linear.weight: expected a 2-D \(classes, features\) weight, got shape \(\)"),
    ({TABLE: torch.zeros(4, 0)}, ValueError, rf"{TABLE}: .*\(4, 0\).*4 heads of >= 1 entries"),
])
def test_malformed_state_dicts_name_the_entry(entries, error, match):
    with pytest.raises(error, match=match):
        create_model("128S", checkpoint={**BASE, **entries})


def test_class_names_beside_unwrapped_weights_are_not_weights():
    model = randomize_(LeViT("128S", num_classes=3)).eval()
    loaded = create_model("128S", checkpoint={**model.state_dict(), "class_names": list("abc")})
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), model(images))


def test_checkpoint_without_a_classifier_builds_a_feature_extractor():
    features = randomize_(LeViT("128S", num_classes=0)).eval()   # timm's num_classes=0 saves this
    loaded = create_model("128S", checkpoint=features.state_dict()).eval()
    assert loaded.num_classes == 0
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(images), features(images))
    state = features.state_dict()
    state["head.bn.weight"] = torch.ones(384)                    # a head without its weight
    with pytest.raises(KeyError, match="head.linear.weight"):
        create_model("128S", checkpoint=state)


@pytest.mark.parametrize("saved, built", [("128", "128S"), ("256", "192")])
def test_another_variants_checkpoint_names_it(saved, built):
    with pytest.raises((KeyError, ValueError), match=f"its weights are LeViT-{saved}'s"):
        load_checkpoint(LeViT(built), LeViT(saved).state_dict())
