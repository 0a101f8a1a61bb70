"""PRM training throughput (samples/s, tokens/s) and peak memory on the tiny and small token-classification models.

Run one case: `python -m benchmarks.bench_prm '{"size": "tiny"}'` (prints one JSON line).
`benchmarks/run.py` runs every case in its own process and writes the table to JSON.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time

import torch
from datasets import Dataset

from benchmarks.common import StepTimer, peak_rss_mib


CASES = [
    {"size": "tiny", "train_on_last_step_only": False},
    {"size": "tiny", "train_on_last_step_only": True},
    {"size": "small", "train_on_last_step_only": False},
]


def synthetic_stepwise(num_examples: int, seed: int = 0) -> Dataset:
    """Stepwise-supervision rows with 2-8 steps of varied lengths and random step labels."""
    rng = random.Random(seed)
    words = "add the two numbers then subtract five so the total is seven and the answer is twelve".split()
    rows = {"prompt": [], "completions": [], "labels": []}
    for _ in range(num_examples):
        num_steps = rng.randint(2, 8)
        rows["prompt"].append(" ".join(rng.choices(words, k=rng.randint(4, 40))))
        rows["completions"].append([" ".join(rng.choices(words, k=rng.randint(4, 30))) for _ in range(num_steps)])
        rows["labels"].append([rng.random() < 0.7 for _ in range(num_steps)])
    return Dataset.from_dict(rows)


def run_case(
    size: str, train_on_last_step_only: bool, steps: int = 12, batch_size: int = 8, max_length: int = 256
) -> dict:
    from trl.testing import get_tiny_model_path
    from trl.trainer.prm_config import PRMConfig
    from trl.trainer.prm_trainer import PRMTrainer

    torch.manual_seed(0)
    dataset = synthetic_stepwise(batch_size * (steps + 2) * 3)
    with tempfile.TemporaryDirectory() as output_dir:
        args = PRMConfig(
            output_dir=output_dir,
            report_to="none",
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            max_length=max_length,
            train_on_last_step_only=train_on_last_step_only,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            learning_rate=1e-4,
        )
        timer = StepTimer()
        start = time.perf_counter()
        trainer = PRMTrainer(
            get_tiny_model_path("qwen2-token-cls", size=size), args=args, train_dataset=dataset, callbacks=[timer]
        )
        setup_seconds = time.perf_counter() - start
        trainer.train()
        elapsed = timer.elapsed()
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    return {
        "benchmark": "prm",
        "model": f"qwen2-token-cls-{size}",
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "train_on_last_step_only": train_on_last_step_only,
        "samples_per_second": round(batch_size * timer.steps / elapsed, 1),
        "tokens_per_second": round(sum(lengths) / len(lengths) * batch_size * timer.steps / elapsed, 1),
        "seconds_per_step": round(elapsed / timer.steps, 4),
        "setup_seconds": round(setup_seconds, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


if __name__ == "__main__":
    case = json.loads(sys.argv[1]) if len(sys.argv) > 1 else CASES[0]
    print(json.dumps(run_case(**case)))
