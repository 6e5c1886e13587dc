"""The training loop behind `magn train`.

    trainer = Trainer(load_config(["train/denoise-gray-s25.toml"]), "runs/s25")
    summary = trainer.run()                 # trains to config.steps, writes the run folder
    Trainer(load_run_config("runs/s25"), "runs/s25", resume=True).run()   # continues it
                                            # (load_run_config: training/runstate.py)

One step: a batch of degraded/clean patches -> model (autocast bf16/fp16 on CUDA) -> MSE
-> backward (GradScaler for fp16) -> gradient clipping -> Adam -> LR schedule -> EMA.

The run folder (only rank 0 writes; every file is written to a temporary name and
os.replace'd, so a kill at any moment leaves the previous version intact; the names,
the EMA and the RNG states are in training/runstate.py):

    .magn-run                  marks the folder as a run: only a run's files are replaced
                               (runstate.py; while a process trains it, the folder is
                               claimed as .NAME.magn-lock beside it)
    config.toml                the settings actually used
    log.jsonl                  one JSON record per log interval, validation and event
    curves.png                 loss and validation PSNR
    state_latest.pt            everything needed to resume (see Trainer._state), weights
                               included: one file is one atomic resume point, so a resume
                               never mixes two checkpoints
    model_latest.safetensors   EMA weights at the last checkpoint
    model_best.safetensors     EMA weights at the best validation PSNR
    export.safetensors         fp16 EMA weights at the end, with provenance metadata

Resuming restores the model, EMA, optimizer, scheduler, scaler, RNG states and the step,
which is also the data position (see data.py), so on the CPU with workers=0 a run killed
and resumed ends with the same weights, bit for bit, as one that was never stopped.

Distributed: under torchrun (WORLD_SIZE > 1) the model is wrapped in DDP (nccl on CUDA,
gloo on the CPU), each rank takes its slice of every batch, and rank 0 alone validates,
logs and writes files. BatchNorm running statistics follow rank 0 (DDP broadcasts them
before each forward); the weights are the same on every rank.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from magncli.checkpoints import load_state_dict_strict, read_checkpoint, save_checkpoint
from magncli.errors import MagnError
from magncli.fileio import drop_claim, hold_claim, home_as_tilde, write_file_atomic
from magncli.inference import InferenceOptions, resolve_device, resolve_precision
from magncli.models.registry import build_model, facts
from magncli.training.config import RESUMABLE, TrainConfig, config_to_toml
from magncli.training.curves import write_curves
from magncli.training.data import PatchDataset, make_loader, resolve_data_folder, scan_images
from magncli.training import memory
from magncli.training.threads import AutoThreads
from magncli.training.runstate import (BEST_FILE, CONFIG_FILE, CURVES_FILE, EMA, EXPORT_FILE, LATEST_FILE,
                                       LOG_FILE, STATE_FILE, atomic_torch_save, cpu_state, first_warm_start,
                                       check_new_run_folder, check_resumable, hardware_string, read_log,
                                       rng_states, set_rng_states, write_marker)
from magncli.training.warm_start import filled_config, fit_weights
from magncli.version import __version__, git_commit

log = logging.getLogger("magn")

# --------------------------------------------------------------------------- loss

# psnr-gain: added to both errors (100 dB), so that a lossless sample counts as a tie.
PSNR_GAIN_EPS = 1e-10


def training_loss(restored: Tensor, clean: Tensor, degraded: Tensor, kind: str = "mse",
                  relative_floor: float = 1e-5) -> Tensor:
    """restored, clean, degraded (b, C, p, p) -> the scalar loss.

    mse: the paper's (eq. 14). relative-mse: each sample's MSE over its degraded input's
    MSE plus relative_floor (the default, 1e-5, is 50 dB: a nearly lossless input does
    not get an unbounded weight), averaged: every level counts alike in dB, down to the
    floor. With plain MSE over q5-100 a q95
    patch's error is about 1/300 of a q10 patch's, so a whole-range model learns the
    high qualities hardly at all (measured: an early model made q90-95 files worse).
    psnr-gain: the mean over samples of 10 log10(that ratio), i.e. minus the PSNR gain
    in dB, the number the benchmarks report. Its gradient is each sample's MSE gradient
    over its own error, so a sample the model makes much worse than its input weighs no
    more than any other, where relative-mse gave it a gradient 100-1000x the usual (the
    spikes of the whole-range JPEG runs)."""
    if kind == "mse":
        return F.mse_loss(restored, clean)
    per_sample = (restored - clean).pow(2).mean((1, 2, 3))                    # (b,)
    input_error = (degraded.float() - clean).pow(2).mean((1, 2, 3))            # (b,)
    if kind == "psnr-gain":
        return (10 * torch.log10((per_sample + PSNR_GAIN_EPS) / (input_error + PSNR_GAIN_EPS))).mean()
    return (per_sample / (input_error + relative_floor)).mean()


# --------------------------------------------------------------------------- clipping

# grad_clip_median: the median over this many recent steps (about 40 s at one thread),
# applied once this many are in.
GRAD_NORM_HISTORY = 500
GRAD_NORM_MIN_HISTORY = 50


# --------------------------------------------------------------------------- schedule

def lr_factor(config: TrainConfig, step: int) -> float:
    """Learning rate / config.lr at `step` (a pure function, so resuming needs no state):
    linear warmup, then cosine down to min_lr, multistep decay, or constant."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        floor = min(1.0, config.min_lr / config.lr)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "multistep":
        return config.gamma ** sum(step >= m for m in config.milestones)
    return 1.0


# --------------------------------------------------------------------------- distributed

class Distributed:
    """Rank, world size and device. Joins the process group torchrun describes
    (WORLD_SIZE > 1), or uses one the caller has initialised already."""

    def __init__(self, device_spec: str):
        self.owns_group = False
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank = int(os.environ.get("RANK", "0"))
            self.world = int(os.environ.get("WORLD_SIZE", "1"))
        device = resolve_device(device_spec)
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
            torch.cuda.set_device(device)
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------- trainer

class Trainer:
    """Builds everything for a run (or restores it from run_dir with resume=True);
    `run()` trains. `reporter(progress)` gets a dict after every step (a progress bar)."""

    def __init__(self, config: TrainConfig, run_dir, resume: bool = False,
                 reporter: Optional[Callable[[dict], None]] = None, command: Optional[str] = None,
                 record_session: bool = True):
        """record_session=False opens a run folder read-only (e.g. to export while the
        run itself goes on in another process): no log record, no config rewrite."""
        self.config = config.check()
        self.run_dir = Path(run_dir)
        self.reporter = reporter or (lambda progress: None)
        self.command = command  # the command line that ran this, for the export's provenance
        self.dist = Distributed(config.device)
        self.device = self.dist.device
        # A number of threads, or auto (0): the cores nothing else keeps busy (threads.py).
        self.auto_threads = AutoThreads() if not config.threads else None
        torch.set_num_threads(config.threads or self.auto_threads.current)
        self.amp_dtype = resolve_precision(config.precision, self.device)
        # channels_last: 3x3 convolutions on the CPU run faster in it (oneDNN's layout),
        # in fp32 and more so in bf16 (benchmarks/bench_train.py).
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.preserve_format
        self._claim = None             # the run folder's claim (rank 0, while writing it)
        self._check_run_dir(resume)

        scanned = scan_images(resolve_data_folder(config.data))
        if self.dist.is_main:
            for _, reason in scanned.skipped:
                log.warning("skipped unreadable training image: %s", reason)
        self.images, held_out = scanned.split_holdout(config.val_holdout)
        self.dataset = PatchDataset(self.images.paths, config)

        torch.manual_seed(config.seed)  # the initial weights
        self.model = build_model(config.arch, in_channels=config.channels, **config.model)
        self.warm_start = None
        if config.init_from and not resume:
            self.warm_start = self._load_init_weights(config.init_from)
        self.model = self.model.to(self.device, memory_format=self.memory_format)
        if facts(self.model).graph_attention:
            self.model.set_attention_backend(config.backend)
        self.model.train()
        if self.device.type == "cpu" and self.dist.is_main:
            self._check_memory()
        self.ema = EMA(self.model, config.ema_decay)
        # Fused: one multi-threaded kernel over all the weights, where the default loops over
        # them in Python, one tensor at a time (15.8 against 3.4 ms a step for the gray
        # denoiser's 712k weights, one thread): a serial cost that a second thread cannot share.
        # The same Adam (its state loads either way).
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=tuple(config.betas),
                                          fused=self.device.type in ("cpu", "cuda"))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(config, s))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step, self.best_psnr, self.elapsed_s = 0, -math.inf, 0.0
        self.checkpoint_step: Optional[int] = None   # the step of the resume point on disk, once there is one
        self.recent_grad_norms: Deque[float] = deque(maxlen=GRAD_NORM_HISTORY)
        # CPU seconds of this process (all its threads) spent training, over every resume;
        # a warm start carries those of the weights it started from.
        self.cpu_s = float(self.warm_start["cpu_s"]) if self.warm_start else 0.0
        self._data_record: Optional[dict] = None   # the training data's provenance, once hashed
        if resume:
            self._load_state()
        # What the forward pass calls: compiled, or the DDP wrapper when distributed (which
        # then runs eager). Both share the model's parameters, so checkpoints and the EMA
        # see the same tensors.
        self.net = torch.compile(self.model) if config.compile else self.model
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

        self.validator = None
        if (config.val or held_out) and self.dist.is_main:
            from magncli.training.validation import Validator
            options = InferenceOptions(device=str(self.device), precision=config.precision,
                                       backend=config.backend)
            self.validator = Validator(config, options, files=held_out or None,
                                       name=f"{self.images.folder.name} held-out ({len(held_out)})")
        if self.dist.is_main and record_session:
            try:
                self._start_run_dir(resume)
            except BaseException:
                self._drop_run_dir()
                raise

    # ------------------------------------------------------------------ run folder
    def _check_run_dir(self, resume: bool) -> None:
        if resume:
            check_resumable(self.run_dir)
        else:
            check_new_run_folder(self.run_dir)

    def _hold_run_dir(self) -> None:
        """Claim the run folder for as long as this trainer writes it: two processes
        training one folder would overwrite each other's checkpoints."""
        if self._claim is None and self.dist.is_main:
            self._claim = hold_claim(self.run_dir)

    def _drop_run_dir(self) -> None:
        claim, self._claim = self._claim, None
        drop_claim(self.run_dir, claim)

    def _start_run_dir(self, resume: bool) -> None:
        self._hold_run_dir()
        self._check_run_dir(resume)   # again, now that no other process can change it
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_marker(self.run_dir)
        header = f"magn train {__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}: the settings used"
        write_file_atomic(self.run_dir / CONFIG_FILE, config_to_toml(self.config, header), overwrite=True)
        log_path = self.run_dir / LOG_FILE
        if resume:
            # Records after the checkpoint belong to steps that will be trained again.
            kept = [r for r in read_log(log_path) if r.get("step", 0) <= self.step]
            write_file_atomic(log_path, "".join(json.dumps(r) + "\n" for r in kept), overwrite=True)
        else:  # a run that died before its first checkpoint leaves nothing to resume: start clean
            for name in (LOG_FILE, CURVES_FILE, LATEST_FILE, BEST_FILE, EXPORT_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
        skipped = [p.name for p, _ in self.images.skipped]
        self._log({"event": "resume" if resume else "start", "step": self.step, "command": self.command,
                   "commit": git_commit(),   # the code this session trains with
                   "data": self.images.folder.name, "images": len(self.images.paths),
                   "skipped_images": len(skipped), "skipped": skipped,
                   "device": str(self.device), "world_size": self.dist.world,
                   "threads": torch.get_num_threads(), "precision": self.config.precision,
                   "cpu_s": round(self.cpu_s, 1), "warm_start": self.warm_start,
                   "params": sum(p.numel() for p in self.model.parameters()),
                   "val_set": self.validator.name if self.validator else None,
                   "val_input_psnr": self.validator.input_psnr if self.validator else None})

    def _load_init_weights(self, source: str) -> dict:
        """Warm start: the weights (and so the EMA) of a checkpoint file or published name;
        the optimizer starts fresh. Returns what the provenance records of it."""
        from magncli.checkpoints import read_checkpoint
        from magncli.weights import file_sha256, resolve_weights
        path = resolve_weights(source)
        state, meta = read_checkpoint(path)
        own = self.model.config
        theirs = filled_config(self.model.arch, meta["config"]) if meta.get("config") else None
        if meta.get("arch") not in (None, self.model.arch) or (meta.get("config") and theirs is None):
            raise MagnError(f"{source}: its architecture ({meta.get('arch')} {meta.get('config')}) "
                            f"is not this run's ({self.model.arch} {own})")
        converted = None
        if theirs is not None:
            state, converted = fit_weights(self.model.arch, state, theirs, own, self.model.state_dict(), source)
        load_state_dict_strict(self.model, state, source=str(path))
        provenance = meta.get("provenance") or {}
        weights = source if not Path(source).exists() else Path(source).name
        if weights in (LATEST_FILE, BEST_FILE):        # a run's own file: name the run too
            weights = f"{Path(source).resolve().parent.name}/{weights}"
        record = {"weights": weights,
                  "sha256": file_sha256(path), "step": meta.get("step"),
                  "cpu_s": float(provenance.get("cpu_hours", 0.0)) * 3600.0,
                  "commands": provenance.get("command")}
        if converted:
            record["converted"] = converted
        # How those weights began, and so on back (each warm start's own record nests the
        # one before): a card can then name every run that made a checkpoint.
        earlier = first_warm_start(provenance)
        if earlier:
            record["from"] = earlier
        return record

    def _log(self, record: dict) -> None:
        with open(self.run_dir / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ state
    def _state(self) -> dict:
        """The resume point: tensors, numbers, strings and containers only (weights_only)."""
        return {"step": self.step, "best_psnr": self.best_psnr, "elapsed_s": self.elapsed_s,
                "cpu_s": self.cpu_s,
                "model": cpu_state(self.model), "ema": cpu_state(self.ema.model),
                "ema_updates": self.ema.updates,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_states(),
                "recent_grad_norms": list(self.recent_grad_norms),
                "config": asdict(self.config)}

    def _load_state(self) -> None:
        path = self.run_dir / STATE_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file
            raise MagnError(f"{path}: cannot be read as a training state ({e})") from None
        changed = [k for k, v in state["config"].items()
                   if k not in RESUMABLE and getattr(self.config, k) != v]
        if changed:
            raise MagnError(f"cannot resume with changed settings: {', '.join(changed)} "
                            f"(only {', '.join(sorted(RESUMABLE))} may change)")
        load_state_dict_strict(self.model, state["model"], source=str(path))
        load_state_dict_strict(self.ema.model, state["ema"], source=str(path))
        self.ema.updates = state["ema_updates"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_states(state["rng"])
        self.step, self.best_psnr, self.elapsed_s = state["step"], state["best_psnr"], state["elapsed_s"]
        self.checkpoint_step = self.step
        self.cpu_s = float(state.get("cpu_s", self.elapsed_s))  # states before cpu_s: wall time
        self.recent_grad_norms.extend(state.get("recent_grad_norms", []))

    def _meta(self, **extra) -> dict:
        """Checkpoint metadata beside arch/config: what the model is for, and how far along."""
        return {"task": self.config.task, "channels": self.config.channels, **self.config.levels(),
                "step": self.step, **extra}

    def save_checkpoint(self) -> None:
        """The resume point first (one atomic file), then the EMA weights and the curves."""
        atomic_torch_save(self._state(), self.run_dir / STATE_FILE)
        self.checkpoint_step = self.step
        save_checkpoint(self.run_dir / LATEST_FILE, self.ema.model,
                        self._meta(provenance=self._provenance(self.step, self.cpu_s)))
        write_curves(self.run_dir / CURVES_FILE, read_log(self.run_dir / LOG_FILE))

    def _commands(self) -> Optional[str]:
        """The command lines that made these weights: the start, then each resume (a
        resume may change --steps, so the first command alone would not say how far)."""
        records = [r for r in read_log(self.run_dir / LOG_FILE) if r.get("event") in ("start", "resume")]
        commands = [r.get("command") for r in records]
        if not records or records[-1].get("command") != self.command:
            commands.append(self.command)  # a run folder whose events predate the "command" field
        # command_line() already reads the home folder as "~"; older logs did not.
        return "; then ".join(home_as_tilde(c) for c in commands if c) or None

    def _sessions(self) -> List[dict]:
        """Each start, resume and warm start of this run, as the log recorded them."""
        keys = ("event", "step", "commit", "precision", "threads", "device", "warm_start")
        return [{k: r.get(k) for k in keys if r.get(k) is not None}
                for r in read_log(self.run_dir / LOG_FILE) if r.get("event") in ("start", "resume")]

    @staticmethod
    def _trained_commit(sessions: List[dict]) -> Optional[str]:
        """The commit(s) the sessions trained with, as their start records say; a log from
        before they did so gives the checkout's commit at export time instead."""
        if not any(s.get("commit") for s in sessions):
            return git_commit()
        return ", ".join(dict.fromkeys(s.get("commit") or "unrecorded" for s in sessions))

    def _provenance(self, step: int, cpu_s: float) -> dict:
        """How the weights of `step` were made, with the keys of a weights-manifest entry.
        Every weights file of a run carries it (model_latest and model_best too), so that
        a warm start from any of them keeps the CPU-hours and the runs behind it."""
        if self._data_record is None:           # hashes every image: once per process
            self._data_record = self.images.describe()
        config, sessions = self.config, self._sessions()
        return {"training_data": self._data_record,
                "steps": step, "planned_steps": config.steps,
                "batch_size": config.batch, "patch_size": config.patch,
                "hardware": hardware_string(self.device, self.dist.world),
                "wall_time": f"{self.elapsed_s / 3600:.2f} h",
                "cpu_hours": round(cpu_s / 3600, 3),
                "sessions": sessions, "commit": self._trained_commit(sessions),
                "command": self._commands(),
                "validation": self.validator.name if self.validator else None,
                "notes": f"seed {config.seed}, lr {config.lr} {config.schedule}, EMA {config.ema_decay}"}

    def export(self, best: bool = False) -> Path:
        """fp16 EMA weights; `provenance` has the keys of a weights-manifest entry. Called
        at the end of a run, or at any checkpoint to publish while a long run goes on
        (then steps < planned_steps). best: the EMA weights of the best validation so far
        (model_best), with the step and CPU-hours at which they were validated."""
        model, step, cpu_s = self.ema.model, self.step, self.cpu_s
        if best:
            state, meta = read_checkpoint(self.run_dir / BEST_FILE)
            model = copy.deepcopy(self.ema.model)
            load_state_dict_strict(model, state)
            step = int(meta["step"])
            cpu_s = next(r.get("cpu_s", r.get("elapsed_s", 0)) for r in read_log(self.run_dir / LOG_FILE)
                         if "val_psnr" in r and r["step"] == step)
        provenance = self._provenance(step, cpu_s)
        if best:
            provenance["notes"] += f"; the best held-out validation, at step {step} of a run then at step {self.step}"
        best_psnr = self.best_psnr if math.isfinite(self.best_psnr) else None
        return save_checkpoint(self.run_dir / EXPORT_FILE, model,
                               dict(self._meta(provenance=provenance, best_val_psnr=best_psnr), step=step),
                               half=True)

    # ------------------------------------------------------------------ training
    def _train_step(self, degraded: torch.Tensor, clean: torch.Tensor) -> Tuple[float, float, bool]:
        """One optimizer step; returns (loss, the gradient's global norm before clipping,
        whether it was clipped)."""
        degraded = degraded.to(self.device, non_blocking=True,
                               memory_format=self.memory_format)               # (b, C, p, p)
        clean = clean.to(self.device, non_blocking=True)                       # (b, C, p, p)
        with torch.autocast(self.device.type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype != torch.float32):
            restored = self.net(degraded)                                      # (b, C, p, p)
        loss = training_loss(restored.float(), clean, degraded[:, :clean.shape[1]], self.config.loss,
                             self.config.relative_floor)
        if not torch.isfinite(loss):
            raise MagnError(f"the loss became {loss.item()} at step {self.step + 1}; "
                            "lower lr= or use precision=fp32")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        limit = self._clip_limit()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), limit).item()
        self.recent_grad_norms.append(grad_norm)                               # before clipping
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.ema.update(self.model)
        return loss.item(), grad_norm, grad_norm > limit

    def _check_memory(self) -> None:
        """Refuse, in one line, a run that would not fit in the memory available to it
        (training/memory.py), before its first step rather than at the kernel's hand."""
        available = memory.available_bytes()
        if available is None:
            return
        config = self.config
        channels = config.channels + self.dataset.level_input
        sample = torch.rand(1, channels, config.patch, config.patch, generator=torch.Generator().manual_seed(0))
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}      # BatchNorm's statistics
        need = memory.training_bytes(self.model, sample.to(memory_format=self.memory_format), self.amp_dtype,
                                     config.batch, self.dataset.nbytes, config.workers)
        with torch.no_grad():
            for name, value in self.model.named_buffers():
                value.copy_(buffers[name])                                     # as before the trial
        if need > memory.FIT_SHARE * available:
            raise MagnError(f"this run would need about {memory.gib(need)} beyond the "
                            f"{memory.gib(memory.process_rss_bytes())} magn holds, and "
                            f"{memory.gib(available)} is available: lower batch= ({config.batch}) or "
                            f"patch= ({config.patch}), use workers=0 ({config.workers}), or a smaller "
                            f"arch= ({config.arch}; magn-s-local is the CPU's)")

    def _follow_the_machine(self) -> None:
        """With threads auto: take the cores nothing else uses, give one back while
        something else runs (looked at every half minute); the log says when."""
        if self.auto_threads is None:
            return
        threads = self.auto_threads.threads()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            if self.dist.is_main:
                self._log({"event": "threads", "step": self.step, "threads": threads})

    def _clip_limit(self) -> float:
        """The gradient-norm bound of this step: grad_clip, and grad_clip_median times the
        median of the recent norms once there are enough of them. A clipped gradient keeps
        its direction; only its step is bounded. The norm is logged either way."""
        limit = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        if self.config.grad_clip_median > 0 and len(self.recent_grad_norms) >= GRAD_NORM_MIN_HISTORY:
            limit = min(limit, self.config.grad_clip_median * float(np.median(self.recent_grad_norms)))
        return limit

    def validate(self) -> Dict[str, float]:
        """Score the EMA weights; keep them as model_best when the mean PSNR improved."""
        scores = self.validator(self.ema.model)
        self.ema.model.to(self.device)  # the engine falls back to the CPU on a CUDA OOM
        improved = scores["mean"] > self.best_psnr
        if improved:
            self.best_psnr = scores["mean"]
            save_checkpoint(self.run_dir / BEST_FILE, self.ema.model,
                            self._meta(val_psnr=scores["mean"], val_set=self.validator.name,
                                       provenance=self._provenance(self.step, self.cpu_s)))
        self._log({"step": self.step, "val_psnr": scores["mean"], "val": scores, "best": improved,
                   "elapsed_s": round(self.elapsed_s, 2), "cpu_s": round(self.cpu_s, 1)})
        return scores

    def run(self, until: Optional[int] = None, cpu_hours: Optional[float] = None) -> dict:
        """Train to config.steps (or stop after step `until`, or once this call has spent
        `cpu_hours` of CPU time, with a checkpoint); returns a summary."""
        self._hold_run_dir()
        try:
            return self._run(until, cpu_hours)
        finally:
            self._drop_run_dir()

    def _run(self, until: Optional[int], cpu_hours: Optional[float]) -> dict:
        config, main = self.config, self.dist.is_main
        stop = min(config.steps, until or config.steps)
        loader = make_loader(self.dataset, config, self.step, stop, self.dist.rank, self.dist.world,
                             pin_memory=self.device.type == "cuda")
        run_start, elapsed_before, cpu_before = time.perf_counter(), self.elapsed_s, self.cpu_s
        losses: List[float] = []        # since the last log record
        grad_norms: List[float] = []
        clipped = 0
        step_seconds = 0.0              # data wait + training of those steps (no validation)
        val_psnr = None
        fetch_start, cpu_start = time.perf_counter(), time.process_time()
        for degraded, clean in loader:
            self._follow_the_machine()
            loss, grad_norm, was_clipped = self._train_step(degraded, clean)
            self.step += 1
            losses.append(loss)
            grad_norms.append(grad_norm)
            clipped += was_clipped
            step_seconds += time.perf_counter() - fetch_start
            # Training CPU time: data (in this process with workers=0) and the step, not
            # validation or checkpoints, so curves against it compare runs fairly.
            self.cpu_s += time.process_time() - cpu_start
            self.elapsed_s = elapsed_before + time.perf_counter() - run_start
            if main:
                samples_per_s = len(losses) * config.batch / max(step_seconds, 1e-9)
                if self.step % config.log_every == 0 or self.step == stop:
                    self._log({"step": self.step, "loss": float(np.mean(losses)),
                               "grad_norm": float(np.median(grad_norms)),
                               "grad_norm_max": float(np.max(grad_norms)), "clipped_steps": clipped,
                               "lr": self.scheduler.get_last_lr()[0],
                               "samples_per_s": round(samples_per_s, 3),
                               "elapsed_s": round(self.elapsed_s, 2), "cpu_s": round(self.cpu_s, 1)})
                    losses, grad_norms, clipped, step_seconds = [], [], 0, 0.0
                out_of_time = cpu_hours is not None and self.cpu_s - cpu_before >= cpu_hours * 3600
                # A CPU-time budget ends with a validation: curves compared at equal CPU time
                # then have a point at the budget itself.
                if self.validator and (self.step % config.val_every == 0 or self.step == config.steps
                                       or out_of_time):
                    val_psnr = self.validate()["mean"]
                if self.step % config.ckpt_every == 0 or self.step == stop or out_of_time:
                    self.save_checkpoint()
                self.reporter({"step": self.step, "steps": config.steps, "loss": loss,
                               "val_psnr": val_psnr, "samples_per_s": samples_per_s})
                if out_of_time:
                    break
            fetch_start, cpu_start = time.perf_counter(), time.process_time()
        if main and self.step == config.steps:
            self.export()
            self._log({"event": "end", "step": self.step, "elapsed_s": round(self.elapsed_s, 2),
                       "best_val_psnr": self.best_psnr if math.isfinite(self.best_psnr) else None})
            write_curves(self.run_dir / CURVES_FILE, read_log(self.run_dir / LOG_FILE))
        if self.dist.world > 1:
            dist.barrier()  # rank 0's files are complete before any rank moves on
        return {"step": self.step, "best_val_psnr": self.best_psnr, "elapsed_s": self.elapsed_s,
                "run_dir": str(self.run_dir)}

    def close(self) -> None:
        self._drop_run_dir()
        self.dist.close()
