"""GKD / Distillation step time: tiny student, small teacher, on-policy (lmbda=1) and dataset (lmbda=0) batches.

Run one case: `python -m benchmarks.bench_distillation '{"trainer": "gkd", "lmbda": 1.0}'` (prints one JSON line).
`benchmarks/run.py --only distillation` runs every case in its own process.
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch

from benchmarks.bench_sft import synthetic_prompt_completion
from benchmarks.common import StepTimer, peak_rss_mib


CASES = [
    {"trainer": "gkd", "lmbda": 0.0},
    {"trainer": "gkd", "lmbda": 1.0},
    {"trainer": "distillation", "lmbda": 1.0},
]


def run_case(trainer: str, lmbda: float, steps: int = 8, batch_size: int = 8, new_tokens: int = 32) -> dict:
    from trl import DistillationConfig, DistillationTrainer, GKDConfig, GKDTrainer
    from trl.testing import get_tiny_model_path

    torch.manual_seed(0)
    dataset = synthetic_prompt_completion(batch_size * (steps + 2))
    common = dict(
        report_to="none", max_steps=steps, per_device_train_batch_size=batch_size, max_length=256, lmbda=lmbda,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", learning_rate=1e-4,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as output_dir:
        if trainer == "gkd":
            args, trainer_class = GKDConfig(output_dir=output_dir, max_new_tokens=new_tokens, **common), GKDTrainer
        else:
            args = DistillationConfig(output_dir=output_dir, max_completion_length=new_tokens, loss_top_k=0, **common)
            trainer_class = DistillationTrainer
        timer = StepTimer()
        student, teacher = get_tiny_model_path("qwen2"), get_tiny_model_path("qwen2", size="small")
        run = trainer_class(student, teacher, args=args, train_dataset=dataset, callbacks=[timer])
        run.train()
        elapsed = timer.elapsed()
    return {
        "benchmark": "distillation",
        "trainer": trainer,
        "lmbda": lmbda,
        "student": "qwen2-tiny",
        "teacher": "qwen2-small",
        "seconds_per_step": round(elapsed / timer.steps, 4),
        "sequences_per_second": round(batch_size * timer.steps / elapsed, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


if __name__ == "__main__":
    print(json.dumps(run_case(**json.loads(sys.argv[1]))))
