"""curves.png: training loss and validation PSNR against step, drawn with OpenCV."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from magncli.datasets import write_file_atomic

PANEL_W, PANEL_H = 640, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 20, 30, 40
BLACK, GRAY, BLUE, RED = (0, 0, 0), (200, 200, 200), (180, 90, 20), (40, 40, 200)  # BGR


def _panel(points: Sequence[Tuple[float, float]], title: str, colour, log_y: bool = False) -> np.ndarray:
    """One plot: axes with min/max labels, a polyline of (step, value) and dots."""
    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    cv2.putText(img, title, (MARGIN_L, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, BLACK, 1, cv2.LINE_AA)
    x0, y0 = MARGIN_L, PANEL_H - MARGIN_B                  # bottom-left corner of the plot area
    x1, y1 = PANEL_W - MARGIN_R, MARGIN_T
    cv2.rectangle(img, (x0, y1), (x1, y0), GRAY, 1)
    points = [(s, v) for s, v in points if v is not None and math.isfinite(v) and (v > 0 or not log_y)]
    if not points:
        cv2.putText(img, "no data yet", (x0 + 10, (y0 + y1) // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    GRAY, 1, cv2.LINE_AA)
        return img
    steps = np.array([p[0] for p in points], dtype=np.float64)
    values = np.array([p[1] for p in points], dtype=np.float64)
    shown = np.log10(values) if log_y else values
    s_lo, s_hi = steps.min(), max(steps.max(), steps.min() + 1)
    v_lo, v_hi = shown.min(), shown.max()
    if v_hi - v_lo < 1e-9:
        v_lo, v_hi = v_lo - 0.5, v_hi + 0.5
    px = x0 + (steps - s_lo) / (s_hi - s_lo) * (x1 - x0)
    py = y0 - (shown - v_lo) / (v_hi - v_lo) * (y0 - y1)
    pts = np.stack([px, py], axis=1).round().astype(np.int32)
    cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 1, cv2.LINE_AA)
    if len(pts) <= 60:
        for x, y in pts:
            cv2.circle(img, (int(x), int(y)), 2, colour, -1, cv2.LINE_AA)
    label = (lambda v: f"{10 ** v:.3g}") if log_y else (lambda v: f"{v:.2f}")
    font = dict(fontFace=cv2.FONT_HERSHEY_SIMPLEX, fontScale=0.4, color=BLACK, thickness=1,
                lineType=cv2.LINE_AA)
    cv2.putText(img, label(v_hi), (4, y1 + 10), **font)
    cv2.putText(img, label(v_lo), (4, y0), **font)
    cv2.putText(img, f"{s_lo:.0f}", (x0, y0 + 16), **font)
    cv2.putText(img, f"step {s_hi:.0f}", (x1 - 80, y0 + 16), **font)
    return img


def draw_curves(records: List[dict]) -> np.ndarray:
    """BGR uint8 image: loss (log scale) above validation PSNR, from log.jsonl records."""
    loss = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_psnr"]) for r in records if "val_psnr" in r]
    return np.vstack([_panel(loss, "training loss (MSE, log scale)", BLUE, log_y=True),
                      _panel(val, "validation PSNR (dB, EMA weights)", RED)])


def write_curves(path, records: List[dict]) -> None:
    ok, png = cv2.imencode(".png", draw_curves(records))
    if ok:
        write_file_atomic(path, png.tobytes(), overwrite=True)
