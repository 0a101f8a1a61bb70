"""Online DPO, Nash-MD and XPO step time on the tiny test model, split into generate / score / reference / train,
with peak RSS.

Run one case: `python -m benchmarks.bench_online_preference '{"method": "online_dpo"}'` (prints one JSON line).

Each optimizer step samples 8 pairs (16 completions of up to 16 tokens; Nash-MD's second completion from the
geometric mixture, XPO's from the reference), scores them with a rule reward and trains on them. Phase times are the
trainer's `timing/*` metrics averaged over the steps after the first (warm-up) one.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from benchmarks.common import peak_rss_mib


CASES = [{"method": "online_dpo"}, {"method": "nash_md"}, {"method": "xpo"}]
PHASES = ("generate", "score", "reference", "train")


def even_tokens(completion_ids, **kwargs):
    return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]


def run(case: dict) -> dict:
    import trl
    from trl.testing import get_tiny_model_path, load_test_dataset

    names = {"online_dpo": "OnlineDPO", "nash_md": "NashMD", "xpo": "XPO"}[case["method"]]
    config_cls, trainer_cls = getattr(trl, f"{names}Config"), getattr(trl, f"{names}Trainer")
    steps = case.get("steps", 6)
    with tempfile.TemporaryDirectory() as tmp:
        args = config_cls(
            output_dir=tmp, report_to="none", max_steps=steps, per_device_train_batch_size=8, max_new_tokens=16,
            logging_steps=1, save_strategy="no", gradient_checkpointing=False, seed=0,
        )  # fmt: skip
        trainer = trainer_cls(get_tiny_model_path("qwen2"), reward_funcs=even_tokens, args=args,
                              train_dataset=load_test_dataset("standard_prompt_only"))  # fmt: skip
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    rows = [row for row in trainer.state.log_history if "timing/train" in row][1:]
    result = {"method": case["method"], "steps": steps, "wall_s": round(wall, 3), "peak_rss_mib": peak_rss_mib()}
    for phase in PHASES:
        result[f"{phase}_s"] = round(sum(row[f"timing/{phase}"] for row in rows) / max(len(rows), 1), 4)
    return result


if __name__ == "__main__":
    os.environ.setdefault("TRL_QUIET", "1")
    cases = [json.loads(sys.argv[1])] if len(sys.argv) > 1 else CASES
    for case in cases:
        print(json.dumps(run(case)))
