"""GRPO and RLOO step time on the tiny test model, split into the rollout phases, with tokens/s and peak RSS.

Run one case: `python -m benchmarks.bench_grpo '{"method": "grpo"}'` (prints one JSON line).
`benchmarks/run.py` runs every case in its own process and writes the table to JSON.

Each optimizer step generates `per_device_train_batch_size` completions (`num_generations` per prompt) of up to
`max_completion_length` tokens with transformers generation, scores them with a rule reward, and trains on them
(one generation per step, on-policy). The phase times are the trainer's own `timing/*` metrics, averaged over the
steps after the first (warm-up) one: `generate`, `score`, `reference` (reference-model log-probs; RLOO's default
`beta=0.05` needs them, GRPO's `beta=0` does not), `train` (forward + backward), `weight_sync`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch
from transformers import TrainerCallback

from benchmarks.common import peak_rss_mib


CASES = [
    {"method": "grpo"},
    {"method": "rloo"},
]
PHASES = ("generate", "score", "reference", "train", "weight_sync")


def even_tokens(completion_ids, **kwargs):
    return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]


class _StepTimer(TrainerCallback):
    """Wall-clock time of the steps after the first (warm-up) one."""

    def __init__(self):
        self.start = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.start = time.perf_counter()


def run_case(
    method: str, size: str = "tiny", steps: int = 8, batch_size: int = 16, num_generations: int = 4, length: int = 32
) -> dict:
    from trl.testing import get_tiny_model_path, load_test_dataset
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.rloo_config import RLOOConfig
    from trl.trainer.rloo_trainer import RLOOTrainer

    torch.manual_seed(0)
    config_class, trainer_class = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[method]
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_class(
            output_dir=output_dir,
            report_to="none",
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            num_generations=num_generations,
            max_completion_length=length,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            learning_rate=1e-5,
            seed=0,
        )
        timer = _StepTimer()
        trainer = trainer_class(
            get_tiny_model_path("qwen2", size=size),
            reward_funcs=even_tokens,
            args=args,
            train_dataset=load_test_dataset("conversational_prompt_only"),
            callbacks=[timer],
        )
        trainer.train()
        elapsed = time.perf_counter() - timer.start
    rows = [row for row in trainer.state.log_history if "timing/train" in row][1:]
    phases = {phase: sum(row[f"timing/{phase}"] for row in rows) / len(rows) for phase in PHASES}
    tokens = rows[-1]["num_tokens"] - trainer.state.log_history[0]["num_tokens"]
    return {
        "case": f"{method}-{size}",
        "method": method,
        "size": size,
        "completions_per_step": batch_size,
        "max_completion_length": length,
        "mean_completion_length": sum(row["completions/mean_length"] for row in rows) / len(rows),
        "step_seconds": elapsed / (steps - 1),
        **{f"{phase}_seconds": round(seconds, 5) for phase, seconds in phases.items()},
        "tokens_per_second": tokens / elapsed,
        "peak_rss_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    case = json.loads(sys.argv[1]) if len(sys.argv) > 1 else CASES[0]
    print(json.dumps(run_case(**case)))
