"""Validation during training, through the `magn eval` engine.

The validation images are loaded and degraded once, exactly as `magn eval` does
(datasets.load_ground_truth, Degradation.apply with a fixed seed); each validation then
runs the model through evaluate.evaluate_method, i.e. tasks.restore_for_task (the
same task view, tiles and blending as `magn restore`) and metrics.psnr. So a validation PSNR is a `magn eval` number
on those (optionally cropped) images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from torch import nn

from magncli import datasets
from magncli.degrade import DEFAULT_PATTERN
from magncli.eval_methods import BASELINES, model_method
from magncli.evaluate import evaluate_method
from magncli.images import center_crop
from magncli.inference import InferenceOptions
from magncli.models.registry import facts
from magncli.tasks import get_task
from magncli.training.config import TrainConfig


class Validator:
    """Scores a model on the validation set at each validation level.

    validator(model) -> {"σ15": 31.2, "σ25": 28.9, "mean": 30.05} (and "σ15 blind", ... for a
    model with a level map); `input_psnr` holds the
    same for the degraded inputs (the eval "input" row), the bar to beat."""

    def __init__(self, config: TrainConfig, options: InferenceOptions,
                 files: Optional[Sequence[Path]] = None, name: Optional[str] = None):
        """Validate on config.val, or on `files` (images held out of the training data)."""
        if files is None:
            self.name, folder, _ = datasets.resolve_set(config.val)
            files = datasets.list_images(folder)
        else:
            self.name = name or "held-out images"
        files = list(files)[:config.val_images or None]
        mode = "gray" if config.channels == 1 else "color"
        self.stems = [p.stem for p in files]
        self.truths = [center_crop(datasets.load_ground_truth(p, mode), config.val_crop)
                       for p in files]                                         # float32 (H, W, C)
        # A model trained on random Bayer patterns is scored on GRBG.
        pattern = config.pattern if config.pattern != "random" else DEFAULT_PATTERN
        self.degradations = get_task(config.task).degradations(config.validation_levels(),
                                                               config.val_seed, pattern)
        self.inputs = [[d.apply(t) for t in self.truths] for d in self.degradations]
        self.options = options
        self.input_psnr = self._score(BASELINES["input"])

    def _score(self, method) -> Dict[str, float]:
        scores: List[float] = []
        result = {}
        for degradation, degraded in zip(self.degradations, self.inputs):
            row, _ = evaluate_method(method, self.stems, degraded, self.truths, degradation)
            result[degradation.label] = row["psnr"]
            scores.append(row["psnr"])
        result["mean"] = float(np.mean(scores))
        return result

    def __call__(self, model: nn.Module) -> Dict[str, float]:
        """The scores at each level; a model with a level map is scored told the level and
        blind (labels "σ25" and "σ25 blind"), and "mean" is the mean of both, so that a run
        is chosen for both ways it is used."""
        scores = self._score(model_method(model, self.options, "validation"))
        if not facts(model).level_input:
            return scores
        blind = self._score(model_method(model, self.options, "validation", level_known=False))
        given_mean, blind_mean = scores.pop("mean"), blind.pop("mean")
        scores.update({f"{label} blind": psnr for label, psnr in blind.items()})
        scores["mean"] = (given_mean + blind_mean) / 2
        return scores
