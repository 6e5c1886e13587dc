"""DnCNN and FFDNet in KAIR's layouts: recognised, loaded strictly, computing what KAIR's
code computes (a naive re-statement of its forward), restored exactly by the tiler, and
scoring their published figures (../shared/peers/README.md) through `magn eval`."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from magncli import load_model
from magncli.cli.app import app
from magncli.errors import MagnError
from magncli.evaluate import run_eval
from magncli.inference import InferenceOptions, restore_array
from magncli.models.registry import ModelFacts, build_model, detect_arch
from magncli.tasks import restore_for_task

runner = CliRunner()

PEER_FILES = {"dncnn_25.pth": ("dncnn", 1, 17), "dncnn_gray_blind.pth": ("dncnn", 1, 20),
              "dncnn_color_blind.pth": ("dncnn", 3, 20), "ffdnet_color.pth": ("ffdnet", 3, 12)}


def _kair_convs(state, x):
    """KAIR's sequential, re-stated: conv (ReLU conv)*: every model.2i is a 3x3 conv."""
    n = len(state) // 2
    for i in range(n):
        x = F.conv2d(x, state[f"model.{2 * i}.weight"], state[f"model.{2 * i}.bias"], padding=1)
        x = torch.relu(x) if i < n - 1 else x
    return x


def _kair_pixel_unshuffle(x, r=2):
    """basicblock.pixel_unshuffle as KAIR wrote it (view, permute), not torch's."""
    b, c, h, w = x.shape
    x = x.contiguous().view(b, c, h // r, r, w // r, r).permute(0, 1, 3, 5, 2, 4)
    return x.contiguous().view(b, c * r * r, h // r, w // r)


def _kair_ffdnet(state, y, sigma):
    """network_ffdnet.FFDNet.forward: replicate-pad to even, unshuffle, sigma/255 map,
    convs, pixel-shuffle, crop."""
    h, w = y.shape[-2:]
    y = torch.nn.ReplicationPad2d((0, w % 2, 0, h % 2))(y)
    x = _kair_pixel_unshuffle(y)
    m = torch.full((1, 1, x.shape[-2], x.shape[-1]), sigma / 255.0)
    return F.pixel_shuffle(_kair_convs(state, torch.cat([x, m], 1)), 2)[..., :h, :w]


def test_random_peers_compute_what_kair_computes_and_are_recognised():
    torch.manual_seed(0)
    dncnn = build_model("dncnn", in_channels=1, n_feats=8, n_convs=5).eval()
    ffdnet = build_model("ffdnet", in_channels=3, n_feats=8, n_convs=4).eval()
    assert detect_arch(dncnn.state_dict()) == ("dncnn", dncnn.config)
    assert detect_arch(ffdnet.state_dict()) == ("ffdnet", ffdnet.config)
    assert list(dncnn.state_dict()) == [f"model.{i}.{p}" for i in range(0, 10, 2) for p in ("weight", "bias")]
    gray = torch.rand(1, 1, 21, 30)
    color = torch.rand(1, 3, 21, 31)                                   # odd: KAIR's replicate pad
    with torch.no_grad():
        torch.testing.assert_close(dncnn(gray), gray - _kair_convs(dncnn.state_dict(), gray))
        expected = _kair_ffdnet(ffdnet.state_dict(), color, 25.0)
        got = restore_for_task(ffdnet, color[0].permute(1, 2, 0).numpy(), "denoise", level=25,
                               options=InferenceOptions(tile=64))
    torch.testing.assert_close(torch.from_numpy(got).permute(2, 0, 1)[None], expected, rtol=1e-5, atol=1e-5)


def test_ffdnet_has_no_blind_use():
    ffdnet = build_model("ffdnet", in_channels=3, n_feats=8, n_convs=4)
    with pytest.raises(MagnError, match="needs the sigma"):
        restore_for_task(ffdnet, np.zeros((8, 8, 3), np.float32), "denoise")


def test_a_local_model_is_tiled_exactly():
    """A plain CNN states its reach; the engine overlaps its tiles by 4x that, so tiled
    and whole-image outputs agree (a tile of 64 with the old fixed overlap of 16 did not)."""
    dncnn = build_model("dncnn", in_channels=1, n_feats=4, n_convs=12).eval()
    with torch.no_grad():                      # box filters: every pixel of the reach counts
        for name, p in dncnn.named_parameters():
            p.copy_(torch.full_like(p, 1 / (9 * p.shape[1])) if name.endswith("weight") else torch.zeros_like(p))
    image = np.random.default_rng(0).random((150, 700, 1)).astype(np.float32)
    with torch.no_grad():
        whole = dncnn(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    tiled = restore_array(dncnn, image, InferenceOptions(tile=128))      # overlap raised to 48
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    unstated = type("Unstated", (type(dncnn),), {"facts": ModelFacts(in_channels=1)})
    dncnn.__class__ = unstated                 # the same weights, its reach not stated: overlap 16
    assert np.abs(restore_array(dncnn, image, InferenceOptions(tile=128)) - whole).max() > 1e-3
    dncnn.__class__ = unstated.__base__
    assert InferenceOptions().describe(dncnn)["tile"] == 512 and InferenceOptions().describe(dncnn)["overlap"] == 48


def test_the_published_peer_files_load_strictly(peers_root, tmp_path):
    for name, (arch, channels, convs) in PEER_FILES.items():
        model = load_model(peers_root / name)
        assert (model.arch, model.config["in_channels"], model.config["n_convs"]) == (arch, channels, convs)
    state = torch.load(peers_root / "dncnn_25.pth", weights_only=True)
    state.pop("model.32.bias")
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(MagnError, match="model.32.bias"):
        load_model(tmp_path / "cut.pth", arch="dncnn")


def test_restore_tells_ffdnet_the_sigma_and_refuses_it_without(peers_root, tmp_path):
    from PIL import Image as PILImage
    noisy = np.clip(0.5 + np.random.default_rng(0).normal(0, 25 / 255, (40, 48, 3)), 0, 1)
    PILImage.fromarray((noisy * 255).astype(np.uint8)).save(tmp_path / "n.png")
    ffdnet = str(peers_root / "ffdnet_color.pth")
    result = runner.invoke(app, ["restore", str(tmp_path / "n.png"), "--task", "denoise", "-w", ffdnet, "-q"])
    assert result.exit_code == 1 and "needs the sigma: it has no blind use (give --sigma)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "n_magn.png").exists()
    result = runner.invoke(app, ["restore", str(tmp_path / "n.png"), "--task", "denoise", "-w", ffdnet,
                                 "--sigma", "25", "--json", "-q"])
    assert result.exit_code == 0, result.output
    record = [line for line in result.output.splitlines() if line.startswith("{")][0]
    assert '"sigma": 25, "sigma_source": "given"' in record


@pytest.mark.slow
@pytest.mark.datasets
def test_peers_score_their_published_figures(peers_root, data_root):
    """README of ../shared/peers: DnCNN-B BSD68 sigma 25 29.16; FFDNet McMaster 32.35,
    CBSD68 31.21 (sigma 25), within 0.05 dB, by `magn eval`'s protocol and engine."""
    rows = run_eval("denoise", ["BSD68"], [25], [f"dncnn:{peers_root / 'dncnn_gray_blind.pth'}"],
                    data_root=data_root, options=InferenceOptions())
    assert rows[0]["psnr"] == pytest.approx(29.16, abs=0.05)
    rows = run_eval("denoise", ["McMaster", "CBSD68"], [25], [str(peers_root / "ffdnet_color.pth")],
                    data_root=data_root, options=InferenceOptions(), blind=True)
    assert [r["model"] for r in rows] == [str(peers_root / "ffdnet_color.pth")] * 2      # no blind row
    assert [round(r["psnr"], 2) for r in rows] == [pytest.approx(32.35, abs=0.05), pytest.approx(31.21, abs=0.05)]
