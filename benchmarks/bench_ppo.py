"""PPO step time on the tiny test model, split into the rollout phases, with tokens/s and peak RSS.

Run one case: `python -m benchmarks.bench_ppo '{"num_ppo_epochs": 1}'` (prints one JSON line).
`benchmarks/run.py` runs every case in its own process and writes the table to JSON.

Each rollout batch holds `per_device_train_batch_size` prompts with one completion of up to `response_length`
tokens (transformers generation), scored by the tiny sequence-classifier reward model; the value model is another
tiny sequence classifier. A rollout batch feeds `num_ppo_epochs` optimizer steps, so the `generate` / `score` /
`reference` phases (and the policy + value pass inside `score`'s step) are spread over that many steps. Phase times
are the trainer's `timing/*` metrics averaged over the steps after the first rollout batch.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch

from benchmarks.bench_grpo import PHASES, _StepTimer
from benchmarks.common import peak_rss_mib


CASES = [{"num_ppo_epochs": 1}, {"num_ppo_epochs": 4}]


def run_case(num_ppo_epochs: int = 4, steps: int = 8, batch_size: int = 16, length: int = 32) -> dict:
    from trl.testing import get_tiny_model_path, load_test_dataset
    from trl.trainer.ppo_config import PPOConfig
    from trl.trainer.ppo_trainer import PPOTrainer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as output_dir:
        args = PPOConfig(
            output_dir=output_dir, report_to="none", max_steps=steps, per_device_train_batch_size=batch_size,
            num_ppo_epochs=num_ppo_epochs, response_length=length, gradient_checkpointing=False, logging_steps=1,
            save_strategy="no", learning_rate=1e-5, seed=0, num_sample_generations=0,
        )  # fmt: skip
        timer = _StepTimer()
        seq_cls = get_tiny_model_path("qwen2-seq-cls")
        trainer = PPOTrainer(
            args, None, get_tiny_model_path("qwen2"), None, seq_cls, load_test_dataset("conversational_prompt_only"),
            seq_cls, callbacks=[timer],
        )  # fmt: skip
        trainer.train()
        elapsed = time.perf_counter() - timer.start
    rows = [row for row in trainer.state.log_history if "timing/train" in row][num_ppo_epochs:]
    phases = {phase: sum(row[f"timing/{phase}"] for row in rows) / len(rows) for phase in PHASES}
    tokens = [row["num_tokens"] for row in trainer.state.log_history if "num_tokens" in row]
    return {
        "case": f"ppo-epochs{num_ppo_epochs}",
        "num_ppo_epochs": num_ppo_epochs,
        "completions_per_rollout": batch_size,
        "response_length": length,
        "step_seconds": elapsed / (steps - 1),
        **{f"{phase}_seconds": round(seconds, 5) for phase, seconds in phases.items()},
        "tokens_per_second": (tokens[-1] - tokens[0]) / elapsed,
        "peak_rss_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    case = json.loads(sys.argv[1]) if len(sys.argv) > 1 else CASES[0]
    print(json.dumps(run_case(**case)))
