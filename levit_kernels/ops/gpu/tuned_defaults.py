"""Per-arch default launch configs for LeViT's shapes (tuning.py: used, without timing, for
shapes the on-disk cache does not know yet, unless LEVIT_TRITON_TUNE=always).

{arch: {tuner name: {Tuner.shape_key(): [tile kwargs, num_warps, num_stages]}}} for the
attention, fused-MLP and stem-conv launches of the five variants in float16 / bfloat16 (linear
shapes are tuned on first use and cached). These are static picks: each shape's first
candidate after pruning, which the compile matrix (tools/gpu_static.py) compiles without
spills on both archs; no GPU has timed them yet. Regenerate with
`python -c "from levit_kernels.tools.gpu_static import default_table; print(default_table())"`,
or replace entries with the configs benchmarks/gpu_lab.py reports as tuned on a GPU.
"""
_PICKS_0 = {
    'attention': {
        'bfloat16,native,16,16,16,32,True': [{'BLOCK_M': 16, 'TILES_PER_PROG': 1}, 4, 1],
        'bfloat16,native,16,16,32,64,True': [{'BLOCK_M': 16, 'TILES_PER_PROG': 1}, 4, 1],
        'bfloat16,native,16,49,16,64,True': [{'BLOCK_M': 16, 'TILES_PER_PROG': 1}, 4, 1],
        'bfloat16,native,16,49,32,128,True': [{'BLOCK_M': 16, 'TILES_PER_PROG': 1}, 4, 1],
        'bfloat16,native,196,196,16,32,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
        'bfloat16,native,196,196,32,64,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
        'bfloat16,native,49,196,16,64,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
        'bfloat16,native,49,196,32,128,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
        'bfloat16,native,49,49,16,32,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
        'bfloat16,native,49,49,32,64,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
        'float16,native,16,16,16,32,True': [{'BLOCK_M': 16, 'TILES_PER_PROG': 1}, 4, 1],
        'float16,native,16,16,32,64,True': [{'BLOCK_M': 16, 'TILES_PER_PROG': 1}, 4, 1],
        'float16,native,16,49,16,64,True': [{'BLOCK_M': 16, 'TILES_PER_PROG': 1}, 4, 1],
        'float16,native,16,49,32,128,True': [{'BLOCK_M': 16, 'TILES_PER_PROG': 1}, 4, 1],
        'float16,native,196,196,16,32,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
        'float16,native,196,196,32,64,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
        'float16,native,49,196,16,64,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
        'float16,native,49,196,32,128,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
        'float16,native,49,49,16,32,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
        'float16,native,49,49,32,64,True': [{'BLOCK_M': 64, 'TILES_PER_PROG': 1}, 4, 1],
    },
    'conv2d': {
        'bfloat16,native,128,576,64,2,False':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,128,576,64,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,16,27,3,2,True':
            [{'BLOCK_M': 64, 'BLOCK_N': 32, 'BLOCK_K': 32, 'GROUP_M': 8}, 4, 2],
        'bfloat16,native,192,864,96,2,False':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,192,864,96,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,24,27,3,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 32, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,256,1152,128,2,False':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,32,144,16,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 32, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,32,27,3,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 32, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,384,1728,192,2,False':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,48,216,24,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,48,27,3,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,64,288,32,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'bfloat16,native,96,432,48,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,128,576,64,2,False':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,128,576,64,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,16,27,3,2,True':
            [{'BLOCK_M': 64, 'BLOCK_N': 32, 'BLOCK_K': 32, 'GROUP_M': 8}, 4, 2],
        'float16,native,192,864,96,2,False':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,192,864,96,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,24,27,3,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 32, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,256,1152,128,2,False':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,32,144,16,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 32, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,32,27,3,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 32, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,384,1728,192,2,False':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,48,216,24,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,48,27,3,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,64,288,32,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
        'float16,native,96,432,48,2,True':
            [{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8}, 8, 3],
    },
    'mlp': {
        'bfloat16,native,128,256': [{'BLOCK_M': 64, 'BLOCK_H': 64}, 4, 2],
        'float16,native,128,256': [{'BLOCK_M': 64, 'BLOCK_H': 64}, 4, 2],
    },
}
DEFAULTS = {80: _PICKS_0, 90: _PICKS_0}
