"""magncli/official_protocols.py: DAGL/PANet's test-time protocols, the recursive quadrants
of forward_chop and the x8 self-ensemble, and the engine's --tiling chop running them with
the settings a model's facts name."""
import pytest
import torch
import torch.nn.functional as F

from magncli.ensemble import self_ensemble as self_ensemble_x8
from magncli.models import build_model
from magncli.official_protocols import PROTOCOLS, forward_chop


def _small_rf_model(n_convs=3):
    """A conv net with receptive field radius n_convs (3x3 convs, zero padding)."""
    torch.manual_seed(7)
    layers = []
    for i in range(n_convs):
        layers += [torch.nn.Conv2d(1 if i == 0 else 4, 1 if i == n_convs - 1 else 4, 3, padding=1)]
        if i < n_convs - 1:
            layers.append(torch.nn.PReLU())
    return torch.nn.Sequential(*layers).eval()


@pytest.mark.parametrize("multiple", [1, 4])
@pytest.mark.parametrize("size", [(37, 53), (64, 48)])
def test_forward_chop_equals_whole_image_for_small_receptive_field(multiple, size):
    model = _small_rf_model(3)
    x = torch.rand(2, 1, *size)
    calls = []
    with torch.no_grad():
        want = model(x)
        got = forward_chop(lambda t: calls.append(t.shape) or model(t), x,
                           shave=4, min_size=300, multiple=multiple)
    assert len(calls) > 4                                         # it recursed
    if multiple == 4:
        assert all(s[-2] % 4 == 0 and s[-1] % 4 == 0 for s in calls if s[-2] < size[0] and s[-1] < size[1])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # seams are hard: with a receptive field wider than the shave the result differs
    wide = _small_rf_model(8)
    with torch.no_grad():
        assert not torch.allclose(forward_chop(wide, x, shave=2, min_size=300, multiple=1),
                                  wide(x), atol=1e-6)


def test_protocol_presets():
    assert PROTOCOLS["dagl-gray"] == {"shave": 24, "min_size": 10000, "multiple": 4}
    assert PROTOCOLS["panet-rgb"]["min_size"] == 6800


def test_self_ensemble_of_equivariant_function_is_the_function():
    x = torch.rand(2, 3, 10, 14)
    torch.testing.assert_close(self_ensemble_x8(lambda t: t, x), x)
    # an isotropic 3x3 blur commutes with flips and transposes
    w = torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]).div(16).expand(3, 1, 3, 3)
    blur = lambda t: F.conv2d(t, w, padding=1, groups=3)  # noqa: E731
    torch.testing.assert_close(self_ensemble_x8(blur, x), blur(x), atol=1e-6, rtol=0)
    # a non-equivariant one is really averaged (shift right by one column)
    shift = lambda t: F.pad(t, (1, 0))[..., :-1]  # noqa: E731
    assert not torch.allclose(self_ensemble_x8(shift, x), shift(x))


@pytest.mark.slow
def test_engine_chop_tiling_is_the_official_protocol():
    # `--tiling chop` in restore/eval runs forward_chop with the model's official settings.
    from magncli.inference import InferenceOptions, restore_tensor
    from magncli.official_protocols import chop_settings
    model = build_model("dagl", n_resblocks=1).eval()
    assert chop_settings(model) == PROTOCOLS["dagl-gray"]
    x = torch.rand(1, 1, 120, 104)
    with torch.no_grad():
        expected = forward_chop(model, x, **PROTOCOLS["dagl-gray"])
    got = restore_tensor(model, x, InferenceOptions(device="cpu", tiling="chop"))
    # The engine runs the CPU in channels_last: the same sums in another order (~2e-6).
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert InferenceOptions(tiling="chop").describe()["tile"] == "chop"
