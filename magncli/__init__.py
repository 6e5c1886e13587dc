"""magn: MAGN image restoration (denoising, JPEG artifact removal, demosaicing).

The Python API, usable without the command line:

    import magncli
    model = magncli.load_model("magn-s-local-dejpeg-color")  # a published name, a path or a URL
    restored = magncli.restore_array(model, image)          # (H, W, C) float32 in [0, 1]
    restored = magncli.restore_array(model, noisy, level=25)            # a model with a level map, told it
    rgb = magncli.restore_for_task(model, cfa, "demosaic")  # as `magn restore` does (pattern="auto")

Arrays are uint8, uint16 (scaled by their range) or float in [0, 1]; outputs are
clamped to [0, 1] (magncli.api).
    magncli.restore_file("photo.jpg", "photo_magn.png", task="dejpeg")

    net = magncli.build_model("magn", in_channels=1)        # an untrained architecture
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from magncli.version import __version__
from magncli.errors import MagnError

# The rest of the API is imported when first used (PEP 562): `import magncli`, and the
# command line's --help, load no torch. Nor does importing it touch the environment: the
# OpenMP wait policy is the command line's (magncli/cli/app.py), a program's own settings
# are its own.
_LAZY = {"save_checkpoint": "magncli.checkpoints", "Image": "magncli.images",
         "read_image": "magncli.images", "write_image": "magncli.images",
         "restore_array": "magncli.api", "restore_for_task": "magncli.api",
         "InferenceOptions": "magncli.inference", "restore_tensor": "magncli.inference",
         "build_model": "magncli.models.registry", "list_archs": "magncli.models.registry"}

if TYPE_CHECKING:
    from magncli.api import restore_array, restore_for_task  # noqa: F401
    from magncli.checkpoints import save_checkpoint  # noqa: F401
    from magncli.images import Image, read_image, write_image  # noqa: F401
    from magncli.inference import InferenceOptions, restore_tensor  # noqa: F401
    from magncli.models.registry import build_model, list_archs  # noqa: F401


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'magncli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def load_model(weights: str, arch: str = "auto", *, offline: Optional[bool] = None,
               model_dir: Optional[str] = None):
    """A ready model (eval mode, fp32, CPU) from a checkpoint path, a published name or a URL."""
    from magncli.checkpoints import model_from_checkpoint
    if Path(weights).is_file():
        return model_from_checkpoint(weights, arch=arch)
    from magncli.weights import resolve_weights
    return model_from_checkpoint(resolve_weights(weights, offline=offline, model_dir=model_dir), arch=arch)


def restore_file(source, target, task: str, weights: Optional[str] = None,
                 options: Optional[InferenceOptions] = None, overwrite: bool = False,
                 progress=None, force: bool = False) -> dict:
    """Restore one image file into `target` (atomic write); returns a record of what ran.
    progress(done, total), if given, hears the tile passes (see magncli.inference; on the
    CPU it is called from the engine's worker threads, one call at a time). A JPEG
    the published models would make worse is written unchanged (the record's "unchanged"
    says why) unless `force`, which also runs a checkpoint that states another task."""
    from magncli.inference import InferenceOptions
    from magncli.restore import Restorer
    restorer = Restorer(task=task, weights=weights, options=options or InferenceOptions(), force=force)
    return restorer.restore_file(source, target, overwrite=overwrite, progress=progress)


__all__ = ["Image", "InferenceOptions", "MagnError", "build_model", "list_archs", "load_model",
           "read_image", "restore_array", "restore_file", "restore_for_task", "restore_tensor",
           "save_checkpoint", "write_image", "__version__"]
