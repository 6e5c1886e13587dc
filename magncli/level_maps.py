"""The level maps: how a level-conditioned model is told its input's degradation level,
one constant plane after the image's channels (the tasks' `level_plane`; FFDNet reads the
same plane). One home, so that the tasks and the architectures agree on the scale.
"""
from __future__ import annotations

from typing import Optional

from magncli.jpeg_quality import ijg_scale

# A level nobody stated (a PNG saved from a JPEG; noise of unknown strength, no --sigma):
# training shows it on a share of its patches (level_unknown), so the model runs blind.
UNKNOWN_LEVEL = -1.0

# Denoising: sigma over 50 (0-255 scale), so sigma 0 -> 0, 25 -> 0.5, 50 -> 1.0, capped at
# 4.0 (sigma 200). FFDNet's map is sigma/255; /50 puts the levels people use (0-75) on the
# scale of the JPEG map, where a head convolution grown from zeros learns them fast.
SIGMA_PLANE_UNIT = 50.0


def sigma_plane(sigma: Optional[float]) -> float:
    return UNKNOWN_LEVEL if sigma is None else min(float(sigma) / SIGMA_PLANE_UNIT, 4.0)


# JPEG: the table scale over 500, so q10 -> 1.0, q50 -> 0.2, q90 -> 0.04, q100 -> 0 (the
# artifacts grow with the quantization steps, in proportion to the scale); capped at 2.0
# (q5 and below).
def quality_plane(quality: Optional[float]) -> float:
    return UNKNOWN_LEVEL if quality is None else min(ijg_scale(int(quality)) / 500.0, 2.0)
