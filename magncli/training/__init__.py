"""Training: data, loop, checkpoints (see magncli.training.loop)."""
