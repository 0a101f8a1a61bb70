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
