"""The training loop shared by both phases of the toy model.

A :class:`Phase` says what to train (networks, loss, steps, batch size, learning rate,
EMA or not); :meth:`Trainer.run` trains it on one accelerate ``Accelerator``: AdamW with
a cosine schedule, gradient clipping, an optional EMA, a per-phase wall-clock cap,
progress bars, and checkpoints (every ``checkpoint_every`` steps, at the end and on
Ctrl-C) that ``--resume`` continues from. The phases themselves are in
:mod:`e4e_lab.toy.train_phases`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .train_checkpoints import (STATE_FILE, check_same_model, checkpoint_name, latest_checkpoint,
                                load_emas, load_generator, prune_checkpoints, save_emas,
                                save_generator, staged_folder)
from .train_config import PHASES, PhaseReport, TrainConfig
from .train_data import CreatureStream, make_loader

log = logging.getLogger("e4e_lab.toy.train")  # one logger for the whole training run


@dataclass
class Phase:
    """One training phase: its networks, loss and the knobs that differ between phases."""

    name: str
    modules: dict[str, torch.nn.Module]
    loss: Callable[[dict[str, Any], torch.Generator], torch.Tensor]
    steps: int
    batch_size: int
    lr: float
    use_ema: bool = False


@dataclass
class _Run:
    """The live state of a phase being trained (what a checkpoint holds, and the clocks)."""

    optimizer: Any
    schedule: Any
    emas: dict[str, Any]
    generator: torch.Generator
    params: list[torch.nn.Parameter]
    report: PhaseReport
    step: int = 0
    session_start: float = field(default_factory=time.monotonic)
    # time and steps not yet folded into the report
    segment_start: float = field(default_factory=time.monotonic)
    segment_first_step: int = 0
    recent_losses: list[float] = field(default_factory=list)

    def account(self) -> None:
        """Fold the time, steps and losses since the last call into ``report``."""
        now = time.monotonic()
        elapsed, steps = now - self.segment_start, self.step - self.segment_first_step
        self.report.wall_seconds += elapsed
        self.report.steps_done = self.step
        if steps > 0 and elapsed > 0:
            self.report.samples_per_second = steps * self.report.batch_size / elapsed
        if self.recent_losses:
            self.report.final_loss = float(np.mean(self.recent_losses))
        self.segment_start, self.segment_first_step = now, self.step


class Trainer:
    """Runs the phases of one :class:`TrainConfig` on one accelerate ``Accelerator``."""

    def __init__(self, cfg: TrainConfig) -> None:
        from accelerate import Accelerator

        self.cfg = cfg
        on_cuda = cfg.device == "cuda"
        if on_cuda and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
        self.accelerator = Accelerator(cpu=not on_cuda,
                                       mixed_precision="bf16" if on_cuda else "no")
        self.device = self.accelerator.device

    def run(self, phase: Phase) -> PhaseReport:
        """Train ``phase`` to its step count (or its time cap), starting from its latest
        checkpoint with --resume; the networks end in eval mode holding the EMA weights."""
        run = self._start(phase)
        stream = CreatureStream((self.cfg.seed, PHASES.index(phase.name), run.step),
                                self.cfg.model.image_size)
        batches = iter(make_loader(stream, phase.batch_size, self.cfg.workers, self.device))
        try:
            self._loop(phase, run, batches)
        except KeyboardInterrupt:
            log.warning("%s: interrupted at step %d; saving a checkpoint", phase.name, run.step)
            self._checkpoint(phase, run)
            raise
        self._checkpoint(phase, run)
        for name, ema in run.emas.items():
            ema.copy_to(phase.modules[name].parameters())
        for module in phase.modules.values():
            module.eval().requires_grad_(False)
        self.accelerator.free_memory()
        return run.report

    def _start(self, phase: Phase) -> _Run:
        """Optimizer, LR schedule, EMA and noise generator of ``phase``, resumed if asked."""
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        cfg = self.cfg
        for module in phase.modules.values():
            module.to(self.device).train().requires_grad_(True)
        params = [p for m in phase.modules.values() for p in m.parameters()]
        optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=1e-2)
        schedule = get_scheduler("cosine", optimizer,
                                 num_warmup_steps=int(cfg.warmup_fraction * phase.steps),
                                 num_training_steps=max(phase.steps, 1))
        *_, optimizer, schedule = self.accelerator.prepare(*phase.modules.values(), optimizer,
                                                           schedule)
        emas = ({name: EMAModel(m.parameters(), decay=cfg.ema_max_decay, use_ema_warmup=True,
                                power=cfg.ema_power, foreach=True)
                 for name, m in phase.modules.items()} if phase.use_ema else {})
        generator = torch.Generator(self.device).manual_seed(
            cfg.seed * 1000 + PHASES.index(phase.name))
        report = PhaseReport(phase.name, phase.steps, batch_size=phase.batch_size, lr=phase.lr)
        run = _Run(optimizer, schedule, emas, generator, params, report)
        if cfg.resume:
            self._resume(phase, run)
        return run

    def _loop(self, phase: Phase, run: _Run, batches: Iterator[dict[str, Any]]) -> None:
        from tqdm.auto import tqdm

        with tqdm(total=phase.steps, initial=run.step, desc=phase.name, dynamic_ncols=True,
                  disable=not self.cfg.progress) as bar:
            while run.step < phase.steps:
                if self._out_of_time(phase, run.session_start):
                    run.report.stopped_early = True
                    log.info("%s: --max-minutes reached after %d steps", phase.name, run.step)
                    return
                loss = self._step(phase, run, next(batches))
                run.step += 1
                run.recent_losses = (run.recent_losses + [loss])[-50:]
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(run.recent_losses):.4f}")
                if run.step % self.cfg.checkpoint_every == 0 and run.step < phase.steps:
                    self._checkpoint(phase, run)

    def _step(self, phase: Phase, run: _Run, batch: dict[str, Any]) -> float:
        """One optimisation step (and EMA update); returns the loss."""
        with self.accelerator.autocast():
            loss = phase.loss(batch, run.generator)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(run.params, 1.0)
        run.optimizer.step()
        run.schedule.step()
        run.optimizer.zero_grad(set_to_none=True)
        for name, ema in run.emas.items():
            ema.step(phase.modules[name].parameters())
        return float(loss.detach())

    def _out_of_time(self, phase: Phase, started: float) -> bool:
        cap = self.cfg.minutes_cap(phase.name)
        return cap is not None and time.monotonic() - started >= cap * 60.0

    # -- checkpoints --

    def _checkpoint(self, phase: Phase, run: _Run) -> Path:
        """Write ``checkpoints/<phase>-<step>/`` atomically (a staging folder renamed):
        accelerate's state (weights, optimizer, LR schedule), EMA weights, the noise
        generator and ``state.json`` (step, report, settings)."""
        run.account()
        root = self.cfg.checkpoints
        final = root / checkpoint_name(phase.name, run.step)
        with staged_folder(final) as staging:
            self.accelerator.save_state(str(staging), safe_serialization=True)
            save_emas(run.emas, phase.modules, staging)
            save_generator(run.generator, staging)
            state = {"phase": phase.name, "step": run.step, "report": run.report.to_dict(),
                     "config": self.cfg.describe()}
            (staging / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        prune_checkpoints(root, phase.name, self.cfg.keep_checkpoints)
        log.info("checkpoint %s", final)
        return final

    def _resume(self, phase: Phase, run: _Run) -> None:
        """Load the latest checkpoint of ``phase`` into ``run`` (if there is one)."""
        folder = latest_checkpoint(self.cfg.checkpoints, phase.name)
        if folder is None:
            return
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        check_same_model(state["config"], self.cfg)
        self.accelerator.load_state(str(folder))
        load_emas(run.emas, phase.modules, folder)
        load_generator(run.generator, folder)
        saved = state["report"]
        run.step = run.segment_first_step = int(state["step"])
        run.report.wall_seconds = saved["wall_seconds"]
        run.report.final_loss = saved["final_loss"]
        run.report.resumed_from_step = run.report.steps_done = run.step
        log.info("%s: resuming from %s (step %d)", phase.name, folder, run.step)
