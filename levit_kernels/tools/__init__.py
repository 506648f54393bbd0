"""The `levit-kernels` command and what it runs: bench, profile, biases, summary, info, validate,
predict (cli.py dispatches), and gpu_static.py, the Triton compile matrix. The top layer: it
imports the model and the ops, nothing imports it."""
