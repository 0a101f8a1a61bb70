"""SFT throughput, peak memory and MFU on the tiny and small test models, with and without packing.

Run one case: `python -m benchmarks.bench_sft '{"size": "tiny", "packing": false}'` (prints one JSON line).
`benchmarks/run.py` runs every case in its own process and writes the table to JSON.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile

import torch
from datasets import Dataset
from transformers import AutoConfig

from benchmarks.common import PhaseTimer, measured_matmul_peak, peak_rss_mib


CASES = [
    {"size": "tiny", "packing": False},
    {"size": "tiny", "packing": True},
    {"size": "small", "packing": False},
    {"size": "small", "packing": True},
]


def synthetic_prompt_completion(num_examples: int, seed: int = 0) -> Dataset:
    """Prompt-completion rows of varied lengths (like real data, where padding is a large share of a batch)."""
    rng = random.Random(seed)
    words = "the sky is blue and the sea is green while a small cat sleeps under an old tree near the river".split()
    rows = {"prompt": [], "completion": []}
    for _ in range(num_examples):
        rows["prompt"].append(" ".join(rng.choices(words, k=rng.randint(4, 40))))
        rows["completion"].append(" " + " ".join(rng.choices(words, k=rng.randint(4, 80))))
    return Dataset.from_dict(rows)


def run_case(
    size: str, packing: bool, steps: int = 12, batch_size: int = 8, max_length: int = 256, threads: int | None = None
) -> dict:
    from trl import SFTConfig, SFTTrainer
    from trl.testing import get_tiny_model_path
    from trl.trainer.utils import compute_flops_per_token, compute_mfu

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model_path = get_tiny_model_path("qwen2", size=size)
    dataset = synthetic_prompt_completion(batch_size * (steps + 2) * 3)
    with tempfile.TemporaryDirectory() as output_dir:
        args = SFTConfig(
            output_dir=output_dir,
            report_to="none",
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            max_length=max_length,
            packing=packing,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            learning_rate=1e-4,
        )
        trainer = SFTTrainer(model_path, args=args, train_dataset=dataset)
        timer = PhaseTimer().attach(trainer)
        trainer.train()
        elapsed = timer.step_seconds()
    tokens_per_step = trainer._total_train_tokens / steps
    tokens_per_second = tokens_per_step * timer.steps / elapsed
    config = AutoConfig.from_pretrained(model_path)
    peak = measured_matmul_peak()
    flops_per_token = compute_flops_per_token(config, max_length)
    return {
        "benchmark": "sft",
        "model": f"qwen2-{size}",
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "packing": packing,
        "tokens_per_second": round(tokens_per_second, 1),
        "seconds_per_step": round(elapsed / timer.steps, 4),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "mfu": round(compute_mfu(flops_per_token, tokens_per_second, 1, peak), 4),
        # The figure: 6 x linear parameters x real tokens / time / peak (no attention-score term).
        "mfu_real_tokens": round(compute_mfu(compute_flops_per_token(config, 0), tokens_per_second, 1, peak), 4),
        "threads": torch.get_num_threads(),
        "phases": timer.fractions(),
    }


if __name__ == "__main__":
    case = json.loads(sys.argv[1]) if len(sys.argv) > 1 else CASES[0]
    print(json.dumps(run_case(**case)))
