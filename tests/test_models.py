"""Every registered architecture and variant through the inference engine, as timm's
test_models.py runs every model: tiny configs, so that the whole list stays fast.

The engine knows a model only by its facts (magncli.models.registry.ModelFacts); these
tests check that each architecture states them and that the engine follows them.
"""
import numpy as np
import pytest
import torch

from magncli.inference import InferenceOptions, plan_tiles, restore_array
from magncli.models.registry import ModelFacts, build_model, facts, get_arch, list_archs
from magncli.official_protocols import PROTOCOLS
from magncli.tiling import tile_spans

# Per architecture: overrides that make every one of its variants tiny.
TINY = {
    "magn": dict(n_feats=8, n_resblocks=1, n_graphblocks=1, patch_channels=4, patch_embed=8),
    "dagl": dict(n_resblocks=2),            # n_feats is 64: its CE heads are 4 x 16 channels
    "panet": dict(n_feats=8, n_resblocks=2),
    "dncnn": dict(n_feats=8, n_convs=4),
    "ffdnet": dict(n_feats=8, n_convs=4),
}
# The package's own architectures (tests may register others).
ARCHS = {arch: spec for arch, spec in list_archs().items() if spec.builder.__module__.startswith("magncli.")}
NAMES = sorted(name for arch, spec in ARCHS.items() for name in (arch, *spec.variants))


def test_every_architecture_has_a_tiny_config_here():
    assert set(ARCHS) == set(TINY), "give a new architecture its tiny config in TINY"


@pytest.mark.parametrize("name", NAMES)
def test_every_architecture_states_its_facts_and_runs_tiled(name):
    torch.manual_seed(0)
    model = build_model(name, **TINY[get_arch(name).name]).eval()
    stated = facts(model)
    assert isinstance(stated, ModelFacts) and stated.in_channels == model.config["in_channels"]
    assert stated.chop_protocol in PROTOCOLS and stated.size_multiple >= 1
    assert stated.graph_attention == hasattr(model, "set_attention_backend")

    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    h, w, c = 37, 45, stated.in_channels
    image = np.random.default_rng(0).random((h, w, c + stated.level_input), dtype=np.float32)  # (+ its map)
    options = InferenceOptions(device="cpu", tile=32, overlap=8)
    out = restore_array(model, image, options)
    assert out.shape == (h, w, c) and np.isfinite(out).all()
    # The tiles are the ones the model's grid asks for: origins on its size multiple,
    # overlapping as its reach asks (plan_tiles: 8, or 4x a plain CNN's reach).
    plan = plan_tiles(model, options)
    assert plan.align == stated.size_multiple
    spans = [tile_spans(n, plan.tile, plan.overlap, stated.size_multiple) for n in (h, w)]
    assert sorted(set(seen)) == sorted({(b - a, d - p) for a, b in spans[0] for p, d in spans[1]})

    chopped = restore_array(model, image, InferenceOptions(device="cpu", tiling="chop"))
    assert chopped.shape == (h, w, c) and np.isfinite(chopped).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_model_refuses_images_of_other_channels(name):
    model = build_model(name, **TINY[get_arch(name).name]).eval()
    other = 4 - facts(model).in_channels                      # 1 <-> 3
    with pytest.raises(Exception, match=f"expects {facts(model).in_channels}-channel"):
        restore_array(model, np.zeros((8, 8, other), np.float32), InferenceOptions(device="cpu"))


def test_a_plain_module_states_nothing_and_is_taken_as_it_is():
    plain = torch.nn.Identity()
    assert facts(plain) == ModelFacts()
    image = np.random.default_rng(1).random((9, 11, 2), dtype=np.float32)
    assert np.array_equal(restore_array(plain, image, InferenceOptions(device="cpu")), image)


def test_the_engine_refuses_half_precision_for_a_model_that_states_fp32_only(monkeypatch):
    from magncli import inference
    from magncli.errors import MagnError

    class Fp32Only(torch.nn.Identity):
        facts = ModelFacts(half_precision=False)

    monkeypatch.setattr(inference, "resolve_precision", lambda precision, device: torch.bfloat16)
    with pytest.raises(MagnError, match="fp32 only"):
        restore_array(Fp32Only(), np.zeros((8, 8, 1), np.float32), InferenceOptions(device="cpu"))
