"""The training loop behind `magn train`.

    trainer = Trainer(load_config(["train/denoise-gray-s25.toml"]), "runs/s25")
    summary = trainer.run()                 # trains to config.steps, writes the run folder
    Trainer(load_run_config("runs/s25"), "runs/s25", resume=True).run()   # continues it
                                            # (load_run_config: runs/folder.py)

One step: a batch of degraded/clean patches -> model (autocast bf16/fp16 on CUDA) -> MSE
-> backward (GradScaler for fp16) -> gradient clipping -> Adam -> LR schedule -> EMA.

The run folder (magncli/runs/folder.py says what each file holds): only rank 0 writes it,
and every file is written to a temporary name and os.replace'd, so a kill at any moment
leaves the previous version intact. The Trainer's jobs, each in its own file: the loss and
schedule (loss.py), the data (data.py), warm starts (warm_start.py), validation
(validation.py), the memory check (memory.py), DDP (distributed.py), the EMA and RNG
states (runstate.py), provenance and export (magncli/runs/). This file is the loop and
its resume point (Trainer._state).

Resuming restores the model, EMA, optimizer, scheduler, scaler, RNG states and the step,
which is also the data position (see data.py), so on the CPU with workers=0 a run killed
and resumed ends with the same weights, bit for bit, as one that was never stopped.

Distributed: under torchrun (WORLD_SIZE > 1) the model is wrapped in DDP (nccl on CUDA,
gloo on the CPU), each rank takes its slice of every batch, and rank 0 alone validates,
logs and writes files. BatchNorm running statistics follow rank 0 (DDP broadcasts them
before each forward); the weights are the same on every rank.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from magncli.checkpoints import load_state_dict_strict, save_checkpoint
from magncli.errors import MagnError
from magncli.fileio import drop_claim, hold_claim, write_file_atomic
from magncli.devices import resolve_precision
from magncli.inference import InferenceOptions
from magncli.models.registry import build_model, facts
from magncli.runs import provenance
from magncli.runs.export import export_run
from magncli.runs.folder import (BEST_FILE, CONFIG_FILE, CURVES_FILE, EXPORT_FILE, LATEST_FILE, LOG_FILE,
                                 STATE_FILE, check_new_run_folder, check_resumable, read_log, write_marker)
from magncli.training import memory
from magncli.training.config import RESUMABLE, RESUMABLE_STEPS, TrainConfig, config_to_toml
from magncli.runs.curves import write_curves
from magncli.training.data import PatchDataset, make_loader, resolve_data_folder, scan_images
from magncli.training.distributed import Distributed
from magncli.training.loss import lr_factor, training_loss
from magncli.training.runstate import EMA, atomic_torch_save, cpu_state, hardware_string, rng_states, set_rng_states
from magncli.training.threads import AutoThreads
from magncli.training.warm_start import load_warm_start
from magncli.version import __version__, git_commit

log = logging.getLogger("magn")

# --------------------------------------------------------------------------- clipping

# grad_clip_median: the median over this many recent steps (about 40 s at one thread),
# applied once this many are in.
GRAD_NORM_HISTORY = 500
GRAD_NORM_MIN_HISTORY = 50


# --------------------------------------------------------------------------- trainer

class Trainer:
    """Builds everything for a run (or restores it from run_dir with resume=True);
    `run()` trains. `reporter(progress)` gets a dict after every step (a progress bar)."""

    def __init__(self, config: TrainConfig, run_dir, resume: bool = False,
                 reporter: Optional[Callable[[dict], None]] = None, command: Optional[str] = None,
                 new_span: bool = False):
        """new_span: a resume may change steps, the cosine's span (a lineage recipe's
        replay of a run that did so: training/lineage.py); the resume record says so."""
        self.config = config.check()
        self.new_span = new_span
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
            self.warm_start = load_warm_start(self.model, config.init_from)
        self.model = self.model.to(self.device, memory_format=self.memory_format)
        if facts(self.model).graph_attention:
            self.model.set_attention_backend(config.backend)
        self.model.train()
        if self.device.type == "cpu" and self.dist.is_main:
            memory.check_training_fits(self.model, config, config.channels + self.dataset.level_input,
                                       self.dataset.nbytes, self.memory_format, self.amp_dtype)
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
        if self.dist.is_main:
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
                   **({"steps": self.config.steps} if self.new_span else {}),
                   "params": sum(p.numel() for p in self.model.parameters()),
                   "val_set": self.validator.name if self.validator else None,
                   "val_input_psnr": self.validator.input_psnr if self.validator else None})

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
        if self.config.schedule in RESUMABLE_STEPS or self.new_span:
            changed = [k for k in changed if k != "steps"]
        elif "steps" in changed:
            raise MagnError(f"cannot resume with steps {self.config.steps}: it is the span of the run's "
                            f"{self.config.schedule} schedule ({state['config']['steps']} steps), which a "
                            f"resume keeps; to train on, start a new run from its weights: magn train "
                            f"--config {self.run_dir / CONFIG_FILE} --init-from {self.run_dir / LATEST_FILE} "
                            f"--steps N --out NEW_RUN")
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

    def _provenance(self, step: int, cpu_s: float) -> dict:
        """How the weights of `step` were made (runs/provenance.py); every weights file of
        the run carries it."""
        if self._data_record is None:           # hashes every image: once per process
            self._data_record = self.images.describe()
        return provenance.provenance(self.run_dir, self.config, step=step, cpu_s=cpu_s, elapsed_s=self.elapsed_s,
                                     data=self._data_record, hardware=hardware_string(self.device, self.dist.world),
                                     validation=self.validator.name if self.validator else None,
                                     command=self.command)

    def export(self, best: bool = False) -> Path:
        """RUN/export.safetensors from the checkpoint on disk (runs/export.py): the last
        one, or with best the best held-out validation so far."""
        return export_run(self.run_dir, best=best)

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
