"""CPO and ORPO throughput (pairs/s, tokens/s), peak memory and MFU on the tiny and small test models.

Both trainers are reference-free: one forward + backward pass over the [chosen; rejected] rows per step, so their
cost per pair is that of DPO with precomputed reference log-probs.

Run one case: `python -m benchmarks.bench_cpo_orpo '{"method": "orpo", "size": "small"}'` (prints one JSON line).
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


CASES = [
    {"method": "cpo", "size": "tiny"},
    {"method": "cpo", "size": "small"},
    {"method": "cpo", "size": "small", "loss_type": "simpo"},
    {"method": "orpo", "size": "tiny"},
    {"method": "orpo", "size": "small"},
]


def _trainer_classes(method: str) -> tuple[type, type]:
    if method == "cpo":
        from trl.trainer.cpo_config import CPOConfig
        from trl.trainer.cpo_trainer import CPOTrainer

        return CPOConfig, CPOTrainer
    from trl.trainer.orpo_config import ORPOConfig
    from trl.trainer.orpo_trainer import ORPOTrainer

    return ORPOConfig, ORPOTrainer


def run_case(
    method: str, size: str, loss_type: str | None = None, steps: int = 12, batch_size: int = 8, max_length: int = 256
) -> dict:
    from trl.testing import get_tiny_model_path
    from trl.trainer.utils import compute_flops_per_token, compute_mfu

    torch.manual_seed(0)
    config_class, trainer_class = _trainer_classes(method)
    model_path = get_tiny_model_path("qwen2", size=size)
    dataset = synthetic_preference(batch_size * (steps + 2))
    extra = {"loss_type": loss_type} if loss_type else {}
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_class(
            output_dir=output_dir, report_to="none", max_steps=steps, per_device_train_batch_size=batch_size,
            max_length=max_length, gradient_checkpointing=False, logging_steps=1, save_strategy="no",
            learning_rate=1e-5, disable_tqdm=True, **extra,
        )  # fmt: skip
        timer = StepTimer()
        trainer = trainer_class(model_path, args=args, train_dataset=dataset, callbacks=[timer])
        trainer.train()
        elapsed = timer.elapsed()
    collator = trainer.data_collator
    real_tokens = sum(
        int(collator([trainer.train_dataset[i] for i in range(j, j + batch_size)])["attention_mask"].sum())
        for j in range(0, batch_size * steps, batch_size)
    )
    tokens_per_second = real_tokens / steps * timer.steps / elapsed
    peak = measured_matmul_peak()
    flops_per_token = compute_flops_per_token(AutoConfig.from_pretrained(model_path), max_length)
    return {
        "benchmark": method,
        "model": f"qwen2-{size}",
        "loss_type": getattr(trainer.args, "loss_type", "orpo"),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "pairs_per_second": round(batch_size * timer.steps / elapsed, 2),
        "tokens_per_second": round(tokens_per_second, 1),
        "seconds_per_step": round(elapsed / timer.steps, 4),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "mfu": round(compute_mfu(int(flops_per_token), tokens_per_second, 1, peak), 4),
    }


if __name__ == "__main__":
    case = json.loads(sys.argv[1]) if len(sys.argv) > 1 else CASES[0]
    print(json.dumps(run_case(**case)))
