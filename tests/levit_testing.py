"""Helpers shared by the model tests: random weights and the original release's key names."""
import re

import torch


def randomize_(model, generator=None):
    """Random weights everywhere, BatchNorm statistics and attention biases included.

    LeViT initialises some BN gains and every bias table to zero, which would hide mistakes in
    how those are loaded, folded or gathered; this fills them with values of realistic size.
    As in a trained LeViT, each residual branch ends in a small BN gain, so activations stay
    O(1) through the depth and float32 rounding is not amplified: the plain model in float32
    agrees with itself in float64 to ~1e-6, which leaves room to test kernels at 1e-5.
    """
    g = generator or torch.Generator().manual_seed(torch.seed() % 2**31)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("attention_biases"):
                t.copy_(torch.randn(t.shape, generator=g))
            elif t.ndim >= 2:                         # conv/linear weights: keep activations O(1)
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith("bn.weight"):
                branch_end = ".proj.ln.bn" in name or ".ln2.bn" in name
                gain = 0.2 if branch_end else 1.0
                t.copy_(gain * (1 + 0.2 * torch.randn(t.shape, generator=g)))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return model


def timm_to_original(state, depth):
    """Rename a timm-style LeViT state dict to the original release's flat naming.

    Written independently of levit_kernels.checkpoint (regexes and index arithmetic over the
    original list layout) so that the two can check each other.
    """
    def flat_index(stage, block, part):
        # the original `blocks` list: per stage, [subsample, its MLP] if stage > 0, then
        # [attention, MLP] per block.
        start = sum(2 * d + (2 if s > 0 else 0) for s, d in enumerate(depth[:stage]))
        return start + (2 if stage > 0 else 0) + 2 * block + part

    out = {}
    leaf_of = {"linear": "c", "bn": "bn"}
    for key, value in state.items():
        if key.endswith("attention_bias_idxs"):
            continue
        m = re.fullmatch(r"stem\.conv(\d)\.(linear|bn)\.(\w+)", key)
        if m:
            out[f"patch_embed.{2 * (int(m[1]) - 1)}.{leaf_of[m[2]]}.{m[3]}"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.attn\.(qkv|proj\.ln)\.(linear|bn)\.(\w+)", key)
        if m:
            sub = "qkv" if m[3] == "qkv" else "proj.1"
            out[f"blocks.{flat_index(int(m[1]), int(m[2]), 0)}.m.{sub}.{leaf_of[m[4]]}.{m[5]}"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.attn\.attention_biases", key)
        if m:
            out[f"blocks.{flat_index(int(m[1]), int(m[2]), 0)}.m.attention_biases"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.ln(\d)\.(linear|bn)\.(\w+)", key)
        if m:
            sub = 0 if m[3] == "1" else 2
            out[f"blocks.{flat_index(int(m[1]), int(m[2]), 1)}.m.{sub}.{leaf_of[m[4]]}.{m[5]}"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.downsample\.attn_downsample\.(kv|q\.ln|proj\.ln)\.(linear|bn)\.(\w+)", key)
        if m:
            sub = {"kv": "kv", "q.ln": "q.1", "proj.ln": "proj.1"}[m[2]]
            idx = flat_index(int(m[1]), 0, 0) - 2
            out[f"blocks.{idx}.{sub}.{leaf_of[m[3]]}.{m[4]}"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.downsample\.attn_downsample\.attention_biases", key)
        if m:
            out[f"blocks.{flat_index(int(m[1]), 0, 0) - 2}.attention_biases"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.downsample\.mlp\.ln(\d)\.(linear|bn)\.(\w+)", key)
        if m:
            sub = 0 if m[2] == "1" else 2
            out[f"blocks.{flat_index(int(m[1]), 0, 0) - 1}.m.{sub}.{leaf_of[m[3]]}.{m[4]}"] = value
            continue
        m = re.fullmatch(r"(head|head_dist)\.(linear|bn)\.(\w+)", key)
        if m:
            out[f"{m[1]}.{'l' if m[2] == 'linear' else 'bn'}.{m[3]}"] = value
            continue
        raise KeyError(f"no original-release name for {key}")
    return out
