"""curves.png: training loss against step and validation PSNR against CPU-hours, drawn
with OpenCV; and the same PSNR panel for several runs at once (the variant study, the
model cards)."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from magncli.fileio import write_file_atomic

PANEL_W, PANEL_H = 640, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 20, 30, 40
BLACK, GRAY, BLUE, RED = (0, 0, 0), (200, 200, 200), (180, 90, 20), (40, 40, 200)  # BGR
SERIES_COLOURS = (RED, BLUE, (40, 150, 40), (150, 40, 150), (0, 140, 220), (90, 90, 90))

Points = Sequence[Tuple[float, float]]


def _panel(series: Sequence[Tuple[str, tuple, Points]], title: str, x_label: str,
           log_y: bool = False) -> np.ndarray:
    """One plot of (label, colour, [(x, value)]) series on shared axes, min/max labels,
    a legend when there is more than one series."""
    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    cv2.putText(img, title, (MARGIN_L, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, BLACK, 1, cv2.LINE_AA)
    x0, y0 = MARGIN_L, PANEL_H - MARGIN_B                  # bottom-left corner of the plot area
    x1, y1 = PANEL_W - MARGIN_R, MARGIN_T
    cv2.rectangle(img, (x0, y1), (x1, y0), GRAY, 1)
    series = [(label, colour, [(x, v) for x, v in points
                               if v is not None and math.isfinite(v) and (v > 0 or not log_y)])
              for label, colour, points in series]
    series = [s for s in series if s[2]]
    if not series:
        cv2.putText(img, "no data yet", (x0 + 10, (y0 + y1) // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    GRAY, 1, cv2.LINE_AA)
        return img
    xs = np.array([x for _, _, pts in series for x, _ in pts], dtype=np.float64)
    values = np.array([v for _, _, pts in series for _, v in pts], dtype=np.float64)
    shown_all = np.log10(values) if log_y else values
    s_lo, s_hi = xs.min(), max(xs.max(), xs.min() + 1e-9)
    v_lo, v_hi = shown_all.min(), shown_all.max()
    if v_hi - v_lo < 1e-9:
        v_lo, v_hi = v_lo - 0.5, v_hi + 0.5
    font = dict(fontFace=cv2.FONT_HERSHEY_SIMPLEX, fontScale=0.4, thickness=1, lineType=cv2.LINE_AA)
    for i, (label, colour, points) in enumerate(series):
        steps = np.array([p[0] for p in points], dtype=np.float64)
        shown = np.array([p[1] for p in points], dtype=np.float64)
        shown = np.log10(shown) if log_y else shown
        px = x0 + (steps - s_lo) / (s_hi - s_lo) * (x1 - x0)
        py = y0 - (shown - v_lo) / (v_hi - v_lo) * (y0 - y1)
        pts = np.stack([px, py], axis=1).round().astype(np.int32)
        cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 1, cv2.LINE_AA)
        if len(pts) <= 60:
            for x, y in pts:
                cv2.circle(img, (int(x), int(y)), 2, colour, -1, cv2.LINE_AA)
        if len(series) > 1:
            cv2.putText(img, label, (x0 + 8, y0 - 10 - 14 * (len(series) - 1 - i)), color=colour, **font)
    label = (lambda v: f"{10 ** v:.3g}") if log_y else (lambda v: f"{v:.2f}")
    cv2.putText(img, label(v_hi), (4, y1 + 10), color=BLACK, **font)
    cv2.putText(img, label(v_lo), (4, y0), color=BLACK, **font)
    cv2.putText(img, f"{s_lo:.3g}", (x0, y0 + 16), color=BLACK, **font)
    cv2.putText(img, f"{x_label} {s_hi:.3g}", (x1 - 130, y0 + 16), color=BLACK, **font)
    return img


def validation_points(records: List[dict]) -> List[Tuple[float, float]]:
    """(CPU-hours, validation PSNR) of a run's log; runs logged before cpu_s use wall time."""
    return [(r.get("cpu_s", r.get("elapsed_s", 0.0)) / 3600, r["val_psnr"])
            for r in records if "val_psnr" in r]


def draw_curves(records: List[dict]) -> np.ndarray:
    """BGR uint8 image: loss (log scale) against step above validation PSNR against
    CPU-hours, from log.jsonl records."""
    loss = [(r["step"], r["loss"]) for r in records if "loss" in r]
    return np.vstack([_panel([("loss", BLUE, loss)], "training loss (MSE, log scale)", "step", log_y=True),
                      _panel([("val", RED, validation_points(records))],
                             "validation PSNR (dB, EMA weights)", "CPU-hours")])


def draw_validation_series(series: Sequence[Tuple[str, Points]], title: str,
                           x_label: str = "CPU-hours") -> np.ndarray:
    """One panel of several runs' (x, PSNR) curves, e.g. the variant study against
    CPU-hours or steps."""
    coloured = [(label, SERIES_COLOURS[i % len(SERIES_COLOURS)], points)
                for i, (label, points) in enumerate(series)]
    return _panel(coloured, title, x_label)


def write_png(path, image: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", image)
    if ok:
        write_file_atomic(path, png.tobytes(), overwrite=True)


def write_curves(path, records: List[dict]) -> None:
    write_png(path, draw_curves(records))
