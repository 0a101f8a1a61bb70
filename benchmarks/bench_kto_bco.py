"""KTO and BCO throughput (examples/s, tokens/s) and peak memory on the tiny and small test models.

The passes of a step, each packed without padding where the model keeps packed sequences apart
(`trl.trainer.packed_rows`; the padded forward otherwise):

- KTO with a frozen reference copy: the policy's pass over the completion rows (with gradients), the KL rows' own
  pass without gradients, and one reference pass over
  the completion and KL rows together;
- KTO with precomputed reference log-probs: the two policy passes only;
- BCO (no KL rows) with a frozen copy: the policy's pass over the completion rows and one reference pass over them.

Run one case: `python -m benchmarks.bench_kto_bco '{"method": "kto", "size": "small", "precompute": false}'` (prints
one JSON line). `benchmarks/run.py` runs every case in its own process and writes the table to JSON.
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
    {"method": "kto", "size": "tiny", "precompute": False},
    {"method": "kto", "size": "small", "precompute": False},
    {"method": "kto", "size": "small", "precompute": True},
    {"method": "bco", "size": "small", "precompute": False},
]


def synthetic_unpaired(num_examples: int, seed: int = 0) -> Dataset:
    """Prompt / completion / label rows of varied lengths, half of them desirable."""
    rng = random.Random(seed)
    words = "the sky is blue and the sea is green while a small cat sleeps under an old tree near the river".split()
    rows = {"prompt": [], "completion": [], "label": []}
    for index in range(num_examples):
        rows["prompt"].append(" ".join(rng.choices(words, k=rng.randint(4, 40))))
        rows["completion"].append(" " + " ".join(rng.choices(words, k=rng.randint(4, 80))))
        rows["label"].append(index % 2 == 0)
    return Dataset.from_dict(rows)


def _trainer(method: str, model_path: str, output_dir: str, dataset: Dataset, timer: StepTimer, **config: object):
    if method == "kto":
        from trl.trainer.kto_config import KTOConfig as config_class
        from trl.trainer.kto_trainer import KTOTrainer as trainer_class
    else:
        from trl.trainer.bco_config import BCOConfig as config_class
        from trl.trainer.bco_trainer import BCOTrainer as trainer_class
    args = config_class(
        output_dir=output_dir, report_to="none", gradient_checkpointing=False, logging_steps=1, save_strategy="no",
        learning_rate=1e-5, disable_tqdm=True, **config,
    )  # fmt: skip
    return trainer_class(model_path, args=args, train_dataset=dataset, callbacks=[timer])


def run_case(
    method: str, size: str, precompute: bool, steps: int = 12, batch_size: int = 8, max_length: int = 256
) -> dict:
    from trl.testing import get_tiny_model_path

    torch.manual_seed(0)
    model_path = get_tiny_model_path("qwen2", size=size)
    dataset = synthetic_unpaired(batch_size * (steps + 2))
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = _trainer(
            method, model_path, output_dir, dataset, timer, max_steps=steps, per_device_train_batch_size=batch_size,
            max_length=max_length, precompute_ref_log_probs=precompute,
        )  # fmt: skip
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
        elapsed = timer.elapsed()
    collator = trainer.data_collator
    real_tokens = sum(
        int(collator([trainer.train_dataset[i] for i in range(j, j + batch_size)])["attention_mask"].sum())
        for j in range(0, batch_size * steps, batch_size)
    )
    return {
        "benchmark": method,
        "model": f"qwen2-{size}",
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "reference": "precomputed" if precompute else "frozen copy",
        "examples_per_second": round(batch_size * timer.steps / elapsed, 2),
        "tokens_per_second": round(real_tokens / steps * timer.steps / elapsed, 1),
        "seconds_per_step": round(elapsed / timer.steps, 4),
        "train_seconds_including_precompute": round(total, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


if __name__ == "__main__":
    case = json.loads(sys.argv[1]) if len(sys.argv) > 1 else CASES[0]
    print(json.dumps(run_case(**case)))
