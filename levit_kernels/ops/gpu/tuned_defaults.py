"""Per-arch default launch configs for LeViT's shapes (see tuning.py for when they are used).

{arch: {tuner name: {shape key: [tile kwargs, num_warps, num_stages]}}}; shape keys are
Tuner.shape_key() strings.
"""
DEFAULTS = {}
