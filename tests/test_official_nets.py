"""DAGL and PANet ports against the official layouts and forward fixtures in
../shared/reference beside the checkout, or $MAGN_REFERENCE (skipped when absent), and
their chunked attentions. Their official test protocols: tests/test_official_protocols.py."""
import os
import json
from pathlib import Path

import pytest
import torch

from magncli.checkpoints import load_state_dict_strict, model_from_checkpoint
from magncli.errors import MagnError
from magncli.models import build_model, detect_arch
from magncli.models import dagl as dagl_mod
from magncli.models import panet as panet_mod
from magncli.attention import rows_per_chunk
from magncli.models.dagl import dynamic_knn_attention, dynamic_knn_attention_reference
from magncli.models.panet import pyramid_attention_core, pyramid_attention_reference

REF = Path(os.environ.get("MAGN_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))
needs_ref = pytest.mark.skipif(not (REF / "README.md").is_file(), reason="reference fixtures absent")

LAYOUTS = [  # (arch or variant, overrides, key file, config detect_arch must return)
    ("dagl", {}, "dagl_gray_keys.json",
     {"in_channels": 1, "n_resblocks": 16, "n_feats": 64, "tie_trunk_prelu": True}),
    ("dagl-demosaic", {}, "dagl_demosaic_keys.json",
     {"in_channels": 3, "n_resblocks": 32, "n_feats": 64, "tie_trunk_prelu": True}),
    ("panet", {}, "panet_rgb_keys.json",
     {"in_channels": 3, "n_resblocks": 80, "n_feats": 64, "tie_trunk_prelu": True,
      "pyramid_resize": "floor_size"}),
    ("panet-gray", {}, "panet_gray_keys.json",
     {"in_channels": 1, "n_resblocks": 80, "n_feats": 64, "tie_trunk_prelu": True,
      "pyramid_resize": "floor_size"}),
]
# parameters() without the duplicated trunk PReLU keys (README section 1)
UNIQUE_PARAMS = {"dagl_gray_keys.json": 5_727_438, "dagl_demosaic_keys.json": 6_911_440,
                 "panet_rgb_keys.json": 5_957_279, "panet_gray_keys.json": 5_954_973}


def _keys(name):
    return [(k, list(shape)) for k, shape, _ in json.loads((REF / name).read_text())]


def _fixture(name):
    from safetensors.torch import load_file
    return {k: v.float() for k, v in load_file(str(REF / name)).items()}  # fp16 -> fp32


@pytest.fixture(scope="module")
def dagl_gray():
    model = build_model("dagl").eval()
    load_state_dict_strict(model, _fixture("dagl_gray_weights.safetensors"))
    return model


def _panet_small(mode="floor_size"):
    model = build_model("panet", n_resblocks=4, pyramid_resize=mode).eval()
    load_state_dict_strict(model, _fixture("panet_rgb_small_weights.safetensors"))
    return model


# --------------------------------------------------------------------------- layouts

@needs_ref
@pytest.mark.parametrize("arch,overrides,keyfile,_cfg", LAYOUTS, ids=[l[2] for l in LAYOUTS])
def test_state_dict_equals_official_layout(arch, overrides, keyfile, _cfg):
    model = build_model(arch, **overrides)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == _keys(keyfile)                               # names, shapes AND order
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert sum(p.numel() for p in model.parameters()) == UNIQUE_PARAMS[keyfile]
    # fact A1: one trunk PReLU, listed under every trunk block's key
    trunk = [m.body[1] for m in model.body if hasattr(m, "body") and isinstance(m.body[1], torch.nn.PReLU)]
    assert len(trunk) == model.config["n_resblocks"] and all(p is trunk[0] for p in trunk)


def test_untied_trunk_prelus_are_independent():
    model = build_model("dagl", n_resblocks=4, tie_trunk_prelu=False)
    assert model.body[0].body[1] is not model.body[1].body[1]


# --------------------------------------------------------------------------- fixtures

@needs_ref
def test_dagl_gray_reproduces_official_outputs(dagl_gray):
    io = _fixture("dagl_gray_io.safetensors")
    with torch.no_grad():
        for i in range(3):
            diff = (dagl_gray(io[f"input_{i}"]) - io[f"output_{i}"]).abs().max().item()
            assert diff < 1e-4, (i, diff)


@needs_ref
def test_dagl_gray_fixture_with_many_chunks(dagl_gray, monkeypatch):
    # A budget of ~40 query rows per chunk: 50x45 has 13*12 = 156 queries over 2250 keys.
    monkeypatch.setattr(dagl_mod.CE, "score_budget_bytes", 2250 * 9 * 40)
    io = _fixture("dagl_gray_io.safetensors")
    with torch.no_grad():
        diff = (dagl_gray(io["input_2"]) - io["output_2"]).abs().max().item()
    assert diff < 1e-4


@needs_ref
@pytest.mark.parametrize("mode,suffix", [("floor_size", ""), ("scale_factor", "_rsf_default")])
def test_panet_small_reproduces_official_outputs(mode, suffix, monkeypatch):
    model = _panet_small(mode)
    io = _fixture("panet_rgb_small_io.safetensors")
    with torch.no_grad():
        for i in range(2):
            diff = (model(io[f"input_{i}"]) - io[f"output_{i}{suffix}"]).abs().max().item()
            assert diff < 1e-5, (mode, i, diff)
        # the same through ~100-query chunks (L = 7470 keys for 48x48)
        monkeypatch.setattr(panet_mod.PyramidAttention, "score_budget_bytes", 7470 * 4 * 100)
        diff = (model(io["input_0"]) - io[f"output_0{suffix}"]).abs().max().item()
        assert diff < 1e-5


# --------------------------------------------------------------------------- chunked attention

def _knn_inputs(n_q=50, n_k=256, d=8, D=20):
    """Random inputs on a coarse binary grid, so that M, its row mean (n_k a power of 2)
    and the margin are exact in float32 whatever the summation order: the comparison
    then never hinges on a margin that rounds to zero in one path and not the other
    (the mask is a step function)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(0, 3, (n_q, d), generator=g) / 4          # {0, .25, .5}
    k = torch.randint(0, 3, (n_k, d), generator=g) / 4
    v = torch.randn(n_k, D, generator=g)
    thr = torch.randint(0, 9, (n_q,), generator=g) / 4          # 0 .. 2
    beta = torch.randint(-4, 5, (n_q,), generator=g) / 8        # -.5 .. .5
    beta[::5] = -1e4                                  # every 5th row fully pruned
    q[7] = 0                                          # an all-zero adjacency row
    return q, k, v, thr, beta


@pytest.mark.parametrize("rows", [1, 7, 50, 64, None])
def test_chunked_dynamic_knn_equals_materialised(rows):
    q, k, v, thr, beta = _knn_inputs()
    with torch.no_grad():
        want = dynamic_knn_attention_reference(q, k, v, thr, beta)
        got = dynamic_knn_attention(q, k, v, thr, beta, rows=rows)
    assert torch.isfinite(got).all()
    assert torch.equal(got[::5], torch.zeros_like(got[::5]))     # pruned rows: zeros, not NaN
    assert torch.equal(got[7], torch.zeros_like(got[7]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got.abs().sum(1) > 0).sum() > 20                       # not vacuous


def test_chunked_dynamic_knn_gradients_match_materialised():
    q, k, v, thr, beta = _knn_inputs(n_q=12, n_k=64)
    grads = []
    for fn in (lambda *a: dynamic_knn_attention(*a, rows=5), dynamic_knn_attention_reference):
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        fn(*ins, thr, beta).square().sum().backward()
        grads.append([t.grad for t in ins])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rows", [1, 9, 64, None])
def test_chunked_pyramid_attention_equals_materialised(rows):
    g = torch.Generator().manual_seed(4)
    q, k, v = torch.randn(64, 18, generator=g), torch.randn(500, 18, generator=g), torch.randn(500, 30, generator=g)
    k = k / k.norm(dim=1, keepdim=True)
    torch.testing.assert_close(pyramid_attention_core(q, k, v, rows=rows),
                               pyramid_attention_reference(q, k, v), atol=1e-5, rtol=1e-5)


def _rss_peak_growth(fn):
    """Peak resident memory growth of fn() in bytes (Linux VmHWM, reset via clear_refs)."""
    def hwm():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    try:
        Path("/proc/self/clear_refs").write_text("5")   # reset the peak to the current RSS
    except OSError:
        pytest.skip("cannot reset peak RSS on this system")
    base = hwm()
    fn()
    return hwm() - base


@pytest.mark.slow
def test_chunked_dynamic_knn_never_materialises_the_score_matrix():
    # DAGL's adjacency for 4096 queries x 73728 keys would be 1.125 GiB in float32.
    n_q, n_k, budget = 4096, 73728, 64 * 2**20
    g = torch.Generator().manual_seed(5)
    q = torch.rand(n_q, 16, generator=g)
    k = torch.rand(n_k, 16, generator=g)
    v = torch.rand(n_k, 16, generator=g)
    thr, beta = torch.rand(n_q, generator=g), torch.zeros(n_q)
    rows = rows_per_chunk(1, n_k, budget, bytes_per_score=9)
    assert rows * n_k * 9 <= budget and rows < n_q               # sizing: really chunked
    out = {}
    with torch.no_grad():
        growth = _rss_peak_growth(lambda: out.setdefault(
            "y", dynamic_knn_attention(q, k, v, thr, beta, budget_bytes=budget)))
    full = n_q * n_k * 4
    assert out["y"].shape == (n_q, 16) and torch.isfinite(out["y"]).all()
    assert growth < full / 4, f"peak RSS grew {growth / 2**20:.0f} MiB (full matrix {full / 2**20:.0f} MiB)"


# --------------------------------------------------------------------------- detection / loading

@needs_ref
@pytest.mark.parametrize("arch,_o,keyfile,config", LAYOUTS, ids=[l[2] for l in LAYOUTS])
def test_detect_arch_recognises_official_layouts(arch, _o, keyfile, config):
    state = {k: torch.zeros(shape) for k, shape in _keys(keyfile)}
    assert detect_arch(state) == (arch.split("-")[0], config)


@needs_ref
def test_detect_untied_trunk_prelus():
    state = {k: torch.zeros(shape) for k, shape in _keys("dagl_gray_keys.json")}
    state["body.3.body.1.weight"] = torch.full((1,), 0.3)
    assert detect_arch(state)[1]["tie_trunk_prelu"] is False


def test_magn_like_checkpoints_are_not_detected_as_dagl_or_panet():
    # An EDSR-style trunk with graph blocks but neither CE nor pyramid-attention keys.
    state = {"head.0.weight": torch.zeros(64, 1, 3, 3), "tail.0.weight": torch.zeros(1, 64, 3, 3),
             "add_mean.weight": torch.zeros(3, 3, 1, 1), "sub_mean.weight": torch.zeros(3, 3, 1, 1)}
    for i in range(16):
        state[f"body.{i}.body.0.weight"] = torch.zeros(64, 64, 3, 3)
    state["body.16.g1.patch.fc1.weight"] = torch.zeros(196, 784)
    state["body.16.thr_conv.weight"] = torch.zeros(1, 64, 7, 7)
    state["body.17.weight"] = torch.zeros(64, 64, 3, 3)
    assert dagl_mod._detect(state) is None and panet_mod._detect(state) is None


@needs_ref
def test_model_from_checkpoint_bare_pt_auto(tmp_path):
    sd = _fixture("dagl_gray_weights.safetensors")
    torch.save(sd, tmp_path / "dagl.pt")
    model = model_from_checkpoint(tmp_path / "dagl.pt", arch="auto")
    assert model.arch == "dagl" and model.config["n_resblocks"] == 16
    assert torch.equal(model.state_dict()["body.8.c3_4.fc2.0.weight"], sd["body.8.c3_4.fc2.0.weight"])


@needs_ref
def test_model_from_checkpoint_wrapped_module_prefixed_pt_reproduces_fixture(tmp_path):
    sd = _fixture("panet_rgb_small_weights.safetensors")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, tmp_path / "p.pth")
    model = model_from_checkpoint(tmp_path / "p.pth", arch="auto")
    assert model.arch == "panet" and model.config["n_resblocks"] == 4
    io = _fixture("panet_rgb_small_io.safetensors")
    with torch.no_grad():
        assert (model(io["input_1"]) - io["output_1"]).abs().max().item() < 1e-5


@needs_ref
def test_missing_key_is_a_magn_error_naming_it(tmp_path):
    sd = _fixture("panet_rgb_small_weights.safetensors")
    del sd["body.2.conv_match.1.weight"]
    torch.save(sd, tmp_path / "p.pt")
    with pytest.raises(MagnError, match=r"missing: body\.2\.conv_match\.1\.weight"):
        model_from_checkpoint(tmp_path / "p.pt", arch="panet", n_resblocks=4)


@needs_ref
def test_unequal_tied_prelu_values_are_refused_when_tied():
    sd = _fixture("panet_rgb_small_weights.safetensors")
    sd["body.4.body.1.weight"] = torch.full((1,), 0.1)
    with pytest.raises(MagnError, match="tied"):
        load_state_dict_strict(build_model("panet", n_resblocks=4), sd)
    untied = build_model("panet", n_resblocks=4, tie_trunk_prelu=False)
    load_state_dict_strict(untied, sd)
    assert untied.body[4].body[1].weight.item() == pytest.approx(0.1)
