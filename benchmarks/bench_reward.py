"""Reward-model training throughput (pairs/s, tokens/s), peak memory and MFU on the tiny and small test models.

Run one case: `python -m benchmarks.bench_reward '{"size": "small"}'` (prints one JSON line).
`benchmarks/run.py` runs every case in its own process and writes the table to JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch
from transformers import AutoConfig

from benchmarks.bench_dpo import synthetic_preference
from benchmarks.common import StepTimer, measured_matmul_peak, peak_rss_mib


CASES = [{"size": "tiny"}, {"size": "small"}]


def run_case(size: str, steps: int = 12, batch_size: int = 8, max_length: int = 256) -> dict:
    from trl.testing import get_tiny_model_path
    from trl.trainer.reward_config import RewardConfig
    from trl.trainer.reward_trainer import RewardTrainer
    from trl.trainer.utils import compute_flops_per_token, compute_mfu

    torch.manual_seed(0)
    model_path = get_tiny_model_path("qwen2-seq-cls", size=size)
    dataset = synthetic_preference(batch_size * (steps + 2))
    with tempfile.TemporaryDirectory() as output_dir:
        args = RewardConfig(
            output_dir=output_dir,
            report_to="none",
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            max_length=max_length,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            learning_rate=1e-5,
            disable_tqdm=True,
        )
        timer = StepTimer()
        trainer = RewardTrainer(model_path, args=args, train_dataset=dataset, callbacks=[timer])
        trainer.train()
        elapsed = timer.elapsed()
    tokens_per_step = trainer._total_train_tokens / steps
    tokens_per_second = tokens_per_step * timer.steps / elapsed
    config = AutoConfig.from_pretrained(model_path)
    # A score head (hidden -> 1) replaces the LM head: remove the vocabulary projection from the FLOP count.
    flops_per_token = compute_flops_per_token(config, max_length) - 6 * config.hidden_size * config.vocab_size
    peak = measured_matmul_peak()
    return {
        "benchmark": "reward",
        "model": f"qwen2-seq-cls-{size}",
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "pairs_per_second": round(batch_size * timer.steps / elapsed, 2),
        "tokens_per_second": round(tokens_per_second, 1),
        "seconds_per_step": round(elapsed / timer.steps, 4),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "mfu": round(compute_mfu(flops_per_token, tokens_per_second, 1, peak), 4),
    }


if __name__ == "__main__":
    case = json.loads(sys.argv[1]) if len(sys.argv) > 1 else CASES[0]
    print(json.dumps(run_case(**case)))
