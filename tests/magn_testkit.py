"""Untrained MAGN models for numerical tests.

MAGN zero-initialises its last conv (it starts as the identity), which would make an
untrained model's output equal its input and every comparison of outputs trivial. Tests
that compare outputs use `random_magn`, whose tail has random weights."""
import torch

from magncli.models import build_model

TINY = dict(n_feats=8, n_resblocks=1, n_graphblocks=1, patch_channels=4, patch_embed=8)


def random_magn(name="magn", seed=0, **overrides):
    torch.manual_seed(seed)
    model = build_model(name, **overrides)
    torch.nn.init.normal_(model.tail.weight, std=0.05)
    torch.nn.init.normal_(model.tail.bias, std=0.01)
    return model
