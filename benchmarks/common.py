"""Shared pieces of the benchmarks: a measured matmul peak, peak-RSS reading, and running a case in a subprocess."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import torch
from transformers import TrainerCallback


def measured_matmul_peak(size: int = 1024, repeats: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a square `size` matmul on this machine, the ceiling that MFU is measured against."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_rss_mib() -> float:
    """Peak resident set size of this process, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case_in_subprocess(module: str, case: dict) -> dict:
    """Run `python -m <module> '<case json>'` so each case's peak RSS is its own; return its JSON result."""
    env = {**os.environ, "TRL_QUIET": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    output = subprocess.run(
        [sys.executable, "-m", module, json.dumps(case)], capture_output=True, text=True, env=env, check=False
    )
    if output.returncode != 0:
        raise RuntimeError(f"benchmark case {case} failed:\n{output.stderr[-4000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


class StepTimer(TrainerCallback):
    """Times the optimizer steps after the first one, which pays for warm-up (allocations, lazy imports)."""

    def __init__(self):
        self.start: float | None = None
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.start = time.perf_counter()
        elif self.start is not None:
            self.steps += 1

    def elapsed(self) -> float:
        """Seconds since the end of the first step."""
        return time.perf_counter() - self.start


class PhaseTimer(StepTimer):
    """`StepTimer` that also splits the timed steps into forward (`compute_loss`), backward, optimizer (gradient
    clipping and `optimizer.step`) and "other" (the rest of the step: collation, metrics, logging glue).

    `attach(trainer)` wraps the trainer's `compute_loss`, `accelerator.backward` and `_clip_grad_norm` on the instance;
    `fractions()` gives each phase's share of the timed steps' wall time.
    """

    PHASES = ("forward", "backward", "optimizer")

    def __init__(self):
        super().__init__()
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self._optimizer_start = 0.0

    def _timed(self, phase: str, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if self.start is not None:
                    self.seconds[phase] += time.perf_counter() - start

        return wrapper

    def attach(self, trainer) -> PhaseTimer:
        trainer.compute_loss = self._timed("forward", trainer.compute_loss)
        trainer.accelerator.backward = self._timed("backward", trainer.accelerator.backward)
        trainer._clip_grad_norm = self._timed("optimizer", trainer._clip_grad_norm)
        trainer.add_callback(self)
        return self

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        self.end = time.perf_counter()

    def step_seconds(self) -> float:
        """Seconds from the end of the first step to the end of the last one (the end of training not included)."""
        return self.end - self.start

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._optimizer_start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.start is not None:
            self.seconds["optimizer"] += time.perf_counter() - self._optimizer_start

    def fractions(self) -> dict[str, float]:
        """Each phase's share of the wall time since the end of the first step, "other" the remainder."""
        total = self.step_seconds()
        shares = {phase: seconds / total for phase, seconds in self.seconds.items()}
        shares["other"] = 1.0 - sum(shares.values())
        return {phase: round(share, 4) for phase, share in shares.items()}
