"""The MAGN network: structure, parameter count, shapes, ablations, backends."""
import pytest
import torch

from magncli.models import build_model, detect_arch
from magncli.models.magn import PatchGraph, PixelGraph
from magn_testkit import TINY, random_magn


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_default_parameter_count_is_pinned():
    # The specification: about 5.08M for the default color model (paper: 5.22M).
    assert n_params(build_model("magn")) == 5_077_192
    assert n_params(build_model("magn", in_channels=1)) == 5_074_886


def test_variant_parameter_counts_are_pinned():
    # The CPU variants (magn.VARIANTS); the study in docs/lab-notebook.md quotes these counts.
    counts = {name: (n_params(build_model(name, in_channels=1)), n_params(build_model(name)))
              for name in ("magn-tiny-local", "magn-s", "magn-s-local")}
    assert counts == {"magn-tiny-local": (254_490, 255_644), "magn-s": (509_728, 516_648),
                      "magn-s-local": (461_103, 468_023)}


def test_half_resolution_variant_keeps_both_graphs_and_full_resolution_output():
    m = build_model("magn-s", in_channels=3)
    assert m.multiple == 8 and m.head.in_channels == 12 and m.tail.out_channels == 12
    g = m.graphs[0]
    assert isinstance(g.g1.pixel_graph, PixelGraph) and g.g1.pixel_graph.heads == 1
    assert g.g2.pixel_graph is None                      # pixel_graph_layers = 1: g1 only
    assert isinstance(g.g1.patch_graph, PatchGraph) and isinstance(g.g2.patch_graph, PatchGraph)
    assert build_model("magn-s-local").graphs[0].g1.pixel_graph is None
    # pixel_unshuffle then pixel_shuffle of the residual: with a random tail the output
    # differs from the input at full resolution, for any size.
    r = build_model("magn-s", in_channels=3)
    torch.nn.init.normal_(r.tail.weight, std=0.1)
    x = torch.rand(1, 3, 19, 13)
    with torch.no_grad():
        y = r.eval()(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    # The unshuffled trunk sees each 2x2 block as 4 channels: the oracle is
    # F.pixel_unshuffle itself (a naive reshuffle by hand).
    t = torch.arange(16.0).reshape(1, 1, 4, 4)
    naive = torch.stack([t[0, 0, i::2, j::2] for i in range(2) for j in range(2)])[None]
    assert torch.equal(torch.nn.functional.pixel_unshuffle(t, 2), naive)


def test_qk_norm_makes_graph_attention_blind_to_the_size_of_a_key():
    """A breakdown (docs/lab-notebook.md, "Breakdowns"): one patch whose features grow large
    takes every query's attention through plain dot products. With qk_norm only the
    directions count: scaling a key leaves the attention exactly as it was. Oracle: the
    reference (materialised) attention on the same tensors."""
    from magncli.attention import graph_attention
    from magncli.models.magn import _QKNorm
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 30, 8), torch.randn(1, 2, 30, 8), torch.randn(1, 2, 30, 8)
    grown = k.clone()
    grown[:, :, 0] *= 1000.0                                           # one key grows 1000x
    norm = _QKNorm(heads=2)
    plain = [graph_attention(q, key, v, backend="reference") for key in (k, grown)]
    normed = [graph_attention(*norm(q, key), v, backend="reference") for key in (k, grown)]
    assert torch.allclose(normed[0], normed[1], atol=1e-5)
    # Without it, every query that the grown key does not fall below the mean of takes
    # that key's value almost alone.
    took_over = (plain[1] - v[:, :, :1]).abs().amax(-1) < 1e-3              # (1, 2, 30)
    assert took_over.float().mean() > 0.3 and not torch.allclose(plain[0], plain[1], atol=1e-2)


def test_qk_norm_is_off_by_default_and_read_back_from_the_keys():
    """Published files have no temperature: the default network keeps their keys (and so
    their outputs); a file with one is rebuilt with qk_norm by detection."""
    assert not any("qk_norm" in key for key in build_model("magn-s").state_dict())
    m = build_model("magn-s", qk_norm=True)
    keys = [key for key in m.state_dict() if "qk_norm" in key]
    # magn-s: the pixel graph in g1, the patch graph in g1 and g2, one temperature per head.
    assert keys == ["graphs.0.g1.pixel_graph.qk_norm.log_temperature",
                    "graphs.0.g1.patch_graph.qk_norm.log_temperature",
                    "graphs.0.g2.patch_graph.qk_norm.log_temperature"]
    assert n_params(m) == n_params(build_model("magn-s")) + 1 + 4 + 4
    arch, config = detect_arch(m.state_dict())
    assert arch == "magn" and config["qk_norm"] and not detect_arch(build_model("magn-s").state_dict())[1]["qk_norm"]
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert m.eval()(x).shape == x.shape


def test_default_structure():
    m = build_model("magn")
    assert len(m.body_pre) == 16 and len(m.body_post) == 16 and len(m.graphs) == 3
    g = m.graphs[0].g1
    assert g.patch_graph.fc_q.in_features == 16 * 7 * 7 and g.patch_graph.fc_q.out_features == 196
    assert isinstance(g.norm, torch.nn.BatchNorm2d)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (13, 7), (16, 16), (17, 30)])
@pytest.mark.parametrize("channels", [1, 3])
def test_any_size_and_channels(size, channels):
    m = random_magn(in_channels=channels, **TINY).eval()
    x = torch.rand(2, channels, *size)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_starts_as_the_identity_through_the_global_residual():
    # The tail conv is zero-initialised (a documented decision): y = x + tail(f) = x.
    m = build_model("magn", **TINY).eval()
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(m(x), x)
    # ... and only the tail: with a random tail the output differs from the input.
    with torch.no_grad():
        assert not torch.allclose(random_magn(**TINY).eval()(x), x)


def test_ablation_switches():
    no_global = build_model("magn", global_graph=False, **TINY)
    no_local = build_model("magn", local_graph=False, **TINY)
    assert not any(isinstance(mod, PixelGraph) for mod in no_global.modules())
    assert any(isinstance(mod, PatchGraph) for mod in no_global.modules())
    assert not any(isinstance(mod, PatchGraph) for mod in no_local.modules())
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert no_global.eval()(x).shape == x.shape and no_local.eval()(x).shape == x.shape
    with pytest.raises(ValueError):
        build_model("magn", global_graph=False, local_graph=False)


def test_backends_agree_on_the_whole_network():
    m = random_magn(**TINY).eval()
    x = torch.rand(1, 3, 20, 24)
    outs = {}
    with torch.no_grad():
        for backend in ("reference", "chunked", "sdpa", "flex"):
            m.set_attention_backend(backend)
            outs[backend] = m(x)
    for backend in ("chunked", "sdpa", "flex"):
        torch.testing.assert_close(outs[backend], outs["reference"], atol=1e-5, rtol=0)


def test_flat_image_gives_finite_output():
    m = random_magn(**TINY).eval()
    with torch.no_grad():
        assert torch.isfinite(m(torch.full((1, 3, 32, 32), 0.5))).all()


def test_gradients_flow_through_chunked_attention():
    m = random_magn(**TINY).train()
    m.set_attention_backend("chunked")
    loss = m(torch.rand(2, 3, 16, 16)).square().mean()
    loss.backward()
    pg = m.graphs[0].g1.pixel_graph
    assert pg.conv_q.weight.grad is not None and pg.conv_q.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name,overrides", [("magn", {}), ("magn", {"in_channels": 1}), ("magn-light", {}),
                                            ("magn", dict(TINY, global_graph=False)),
                                            ("magn-s-local", {}), ("magn-s-local", {"in_channels": 1}),
                                            ("magn-s", {"pixel_heads": None}),
                                            ("magn-s-local", {"level_input": True}),
                                            ("magn-s-local", {"in_channels": 1, "level_input": True})])
def test_detect_arch_recovers_config(name, overrides):
    m = build_model(name, **overrides)
    arch, config = detect_arch(m.state_dict())
    assert arch == "magn" and config == m.config


@pytest.mark.parametrize("overrides", [{}, {"in_channels": 1, "level_input": True},
                                       {"level_input": True, "qk_norm": True}])
def test_a_checkpoint_loads_by_its_variant_name_with_its_own_inputs(tmp_path, overrides):
    """model_from_checkpoint(path, arch="magn-s-local") (eval's `-m magn-s-local:FILE`): the variant
    names the network, the file what it takes and its optional parameters; a gray
    level-map file used to be built as the variant's color default and refused, and so was
    a QK-norm run's. Another variant's file is still refused."""
    from magncli.checkpoints import model_from_checkpoint, save_checkpoint
    from magncli.errors import MagnError
    model = random_magn("magn-s-local", seed=1, **overrides).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    x = torch.rand(1, model.config["in_channels"] + model.config["level_input"], 16, 24)
    loaded = model_from_checkpoint(path, arch="magn-s-local")
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(MagnError, match="does not fit"):
        model_from_checkpoint(path, arch="magn-s")           # has a pixel graph the file lacks


@pytest.mark.parametrize("channels", [1, 3])
def test_level_input_takes_a_level_map_and_returns_the_image_channels(channels):
    """The map goes into the head only: (B, c+1, H, W) -> (B, c, H, W); at init (tail
    zeroed) the output is the image, and once trained the map changes the output."""
    m = build_model("magn-s-local", in_channels=channels, level_input=True).eval()
    assert m.head.in_channels == (channels + 1) * 4 and m.tail.out_channels == channels * 4
    image = torch.rand(1, channels, 20, 28)
    x = torch.cat([image, torch.full((1, 1, 20, 28), 0.5)], 1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), image)
        for p in m.parameters():
            p.normal_(0, 0.05)
        a = m(x)
        b = m(torch.cat([image, torch.full((1, 1, 20, 28), 0.04)], 1))
    assert a.shape == image.shape and (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("unshuffle, level_input", [(1, False), (2, True)])
def test_channel_conversion_is_the_same_network_on_gray_content(unshuffle, level_input):
    """convert_checkpoint_channels (the warm start of a gray run from a color model, or
    back) is exact on gray images. Oracle: the source model itself, run on the gray image
    replicated to RGB (and, for color -> gray, its output mixed by BT.601 luma)."""
    from magncli.models.registry import convert_checkpoint_channels
    config = dict(TINY, unshuffle=unshuffle, level_input=level_input)
    # float64 throughout, so that only a wrong conversion can show.
    color = random_magn("magn", seed=3, in_channels=3, **config).double().eval()
    torch.nn.init.normal_(color.tail.bias, std=0.05)     # distinct per channel
    gray = build_model("magn", in_channels=1, **config).double().eval()
    gray.load_state_dict(convert_checkpoint_channels("magn", color.state_dict(), color.config, 1))
    torch.manual_seed(0)
    y = torch.rand(2, 1, 21, 18, dtype=torch.float64)                          # (B, 1, H, W)
    level = torch.full_like(y, 0.3)
    with_level = (lambda t: torch.cat([t, level], 1)) if level_input else (lambda t: t)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        rgb_out = color(with_level(y.expand(-1, 3, -1, -1)))                   # (B, 3, H, W)
        assert (rgb_out[:, 0] - rgb_out[:, 2]).abs().max() > 1e-3              # the channels differ
        torch.testing.assert_close(gray(with_level(y)), (rgb_out * luma).sum(1, keepdim=True))
        back = build_model("magn", in_channels=3, **config).double().eval()    # 1 -> 3
        back.load_state_dict(convert_checkpoint_channels("magn", gray.state_dict(), gray.config, 3))
        torch.testing.assert_close(back(with_level(y.expand(-1, 3, -1, -1))),
                                   gray(with_level(y)).expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="between 1 and 3"):
        convert_checkpoint_channels("magn", color.state_dict(), color.config, 4)


def test_deepening_keeps_the_function_and_the_new_blocks_learn():
    """deepen (the warm start of a deeper network from a trained one) adds ResBlocks that
    start as the identity. Oracle: the source model's own output, in float64; then one
    gradient step moves every new block's weights (they are not dead)."""
    from magncli.models.registry import deepen
    config = dict(TINY, unshuffle=2)
    shallow = random_magn("magn", seed=5, in_channels=3, **config).double().eval()
    deep = build_model("magn", in_channels=3, **dict(config, n_resblocks=TINY["n_resblocks"] + 2)).double()
    grown = deepen("magn", shallow.state_dict(), shallow.config, deep.state_dict(), deep.config["n_resblocks"])
    deep.load_state_dict(grown)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    with torch.no_grad():
        assert (shallow(x) - x).abs().max() > 1e-3                          # not the identity
        torch.testing.assert_close(deep.eval()(x), shallow(x))
    new = [f"{side}.{i}." for side in ("body_pre", "body_post")
           for i in range(TINY["n_resblocks"], deep.config["n_resblocks"])]
    deep.train()
    optimizer = torch.optim.SGD(deep.parameters(), lr=0.1)
    ((deep(x) - x.flip(-1)) ** 2).mean().backward()
    before = {k: v.clone() for k, v in deep.state_dict().items()}
    optimizer.step()
    for block in new:
        assert not torch.equal(deep.state_dict()[block + "conv2.weight"], before[block + "conv2.weight"]), block
    with pytest.raises(ValueError, match="not shorten"):
        deepen("magn", deep.state_dict(), deep.config, shallow.state_dict(), TINY["n_resblocks"])


def test_growing_the_global_graph_keeps_the_function_and_the_graph_learns():
    """grow_global_graph (the both-levels variant from its local twin, #34) adds pixel
    graphs whose value projection is zero: the same output (float64 oracle: the twin's
    own), and one gradient step moves the value projection (it is not dead)."""
    from magncli.models.registry import grow_global_graph
    twin = random_magn("magn-s-local", seed=6, in_channels=1, **TINY).double().eval()
    both = build_model("magn-s", in_channels=1, **TINY).double()
    both.load_state_dict(grow_global_graph("magn", twin.state_dict(), twin.config, both.state_dict()))
    x = torch.rand(2, 1, 24, 32, dtype=torch.float64)
    with torch.no_grad():
        assert (twin(x) - x).abs().max() > 1e-3
        torch.testing.assert_close(both.eval()(x), twin(x))
    both.train()
    ((both(x) - x.flip(-1)) ** 2).mean().backward()
    grads = [p.grad for name, p in both.named_parameters() if ".pixel_graph.value." in name]
    assert grads and all(g is not None and g.abs().max() > 0 for g in grads)
    with pytest.raises(ValueError, match="already"):
        grow_global_graph("magn", both.state_dict(), both.config, both.state_dict())
