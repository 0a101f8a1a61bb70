"""DPO throughput (pairs/s, tokens/s), peak memory and MFU on the tiny and small test models: sigmoid loss with a
frozen reference copy (a reference forward every step) and with precomputed reference log-probs.

Run one case: `python -m benchmarks.bench_dpo '{"size": "small", "precompute": false}'` (prints one JSON line).
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
from transformers import AutoConfig

from benchmarks.common import StepTimer, measured_matmul_peak, peak_rss_mib


CASES = [
    {"size": "tiny", "precompute": False},
    {"size": "small", "precompute": False},
    {"size": "small", "precompute": True},
    {"size": "small", "precompute": False, "padding_free": True},
]


def synthetic_preference(num_examples: int, seed: int = 0) -> Dataset:
    """Prompt / chosen / rejected rows of varied lengths (real pairs differ in length, hence padding)."""
    rng = random.Random(seed)
    words = "the sky is blue and the sea is green while a small cat sleeps under an old tree near the river".split()
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(num_examples):
        rows["prompt"].append(" ".join(rng.choices(words, k=rng.randint(4, 40))))
        rows["chosen"].append(" " + " ".join(rng.choices(words, k=rng.randint(4, 80))))
        rows["rejected"].append(" " + " ".join(rng.choices(words, k=rng.randint(4, 80))))
    return Dataset.from_dict(rows)


def run_case(
    size: str,
    precompute: bool,
    padding_free: bool = False,
    steps: int = 12,
    batch_size: int = 8,
    max_length: int = 256,
) -> dict:
    from trl.testing import get_tiny_model_path
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import compute_flops_per_token, compute_mfu

    torch.manual_seed(0)
    model_path = get_tiny_model_path("qwen2", size=size)
    dataset = synthetic_preference(batch_size * (steps + 2))
    with tempfile.TemporaryDirectory() as output_dir:
        args = DPOConfig(
            output_dir=output_dir,
            report_to="none",
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            max_length=max_length,
            precompute_ref_log_probs=precompute,
            padding_free=padding_free,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            learning_rate=1e-5,
            disable_tqdm=True,
        )
        timer = StepTimer()
        trainer = DPOTrainer(model_path, args=args, train_dataset=dataset, callbacks=[timer])
        precompute_start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - precompute_start
        elapsed = timer.elapsed()
    collator = trainer.data_collator
    real_tokens = sum(
        int(collator([trainer.train_dataset[i] for i in range(j, j + batch_size)])["attention_mask"].sum())
        for j in range(0, batch_size * steps, batch_size)
    )
    tokens_per_second = real_tokens / steps * timer.steps / elapsed
    pairs_per_second = batch_size * timer.steps / elapsed
    config = AutoConfig.from_pretrained(model_path)
    peak = measured_matmul_peak()
    # The policy pass is forward + backward (6N per token); the reference pass, when run, is a forward (2N).
    flops_per_token = compute_flops_per_token(config, max_length) * (1.0 if precompute else 4.0 / 3.0)
    return {
        "benchmark": "dpo",
        "model": f"qwen2-{size}",
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "reference": "precomputed" if precompute else "frozen copy",
        "padding_free": padding_free,
        "pairs_per_second": round(pairs_per_second, 2),
        "tokens_per_second": round(tokens_per_second, 1),
        "seconds_per_step": round(elapsed / timer.steps, 4),
        "train_seconds_including_precompute": round(total, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "mfu": round(compute_mfu(int(flops_per_token), tokens_per_second, 1, peak), 4),
    }


if __name__ == "__main__":
    case = json.loads(sys.argv[1]) if len(sys.argv) > 1 else CASES[0]
    print(json.dumps(run_case(**case)))
