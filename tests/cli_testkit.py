"""Helpers of the command-line tests of `magn degrade` and `magn eval`: images the tests
make, and the one-line user error the command prints."""
import cv2
import numpy as np
from typer.testing import CliRunner

from magncli.cli.common import cli_message
from magncli.errors import MagnError

runner = CliRunner()


def make_images(folder, n=2, color=True, size=(48, 64)):
    """Smooth textured test images written as 8-bit PNG; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    paths = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.rand(*size, 3 if color else 1) * 255, (0, 0), 2)
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
        paths.append(path)
    return paths


def user_error(result, *words):
    """A MagnError (one line, no traceback in the output) with a non-zero exit code;
    the words are looked for in the line the command line prints."""
    assert result.exit_code != 0
    assert isinstance(result.exception, MagnError), result.output
    message = cli_message(result.exception)
    assert "\n" not in message and "Traceback" not in result.output
    for word in words:
        assert word in message
    return message
