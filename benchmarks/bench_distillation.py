"""GKD / Distillation step time: tiny student, small teacher; on-policy (lmbda=1) against dataset (lmbda=0) batches.

The two cases train on sequences of the same shape, so the difference between them is the cost of sampling: the
dataset completions are exactly `new_tokens` tokens long (plus EOS), and sampling cannot stop before `new_tokens`
(`min_new_tokens`), so every generated completion is `new_tokens` tokens long too. Without this, the dataset case trains
on completions up to ~100 tokens while the tiny student often samples EOS early, and the longer forward/backward of
the dataset case hides the generation cost of the on-policy case.

Each step is timed on its own (after `warmup` steps) and the median is reported, as the benchmark machine is shared:
`seconds_per_step` (median step), `generation_seconds_per_step` (median time spent sampling in a step),
`completion_tokens` (mean completion length trained on). Run one case:
`python -m benchmarks.bench_distillation '{"trainer": "gkd", "lmbda": 1.0}'` (prints one JSON line);
`benchmarks/run.py --only distillation` runs every case in its own process.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time

import torch
from datasets import Dataset
from transformers import TrainerCallback

from benchmarks.common import peak_rss_mib


CASES = [
    {"trainer": "gkd", "lmbda": 0.0},
    {"trainer": "gkd", "lmbda": 1.0},
    {"trainer": "distillation", "lmbda": 0.0},
    {"trainer": "distillation", "lmbda": 1.0},
]
WORDS = "the sky is blue and the sea is green while a small cat sleeps under an old tree near the river".split()


def fixed_length_dataset(tokenizer, num_examples: int, completion_tokens: int, seed: int = 0) -> Dataset:
    """Prompts of 4-40 words and completions of exactly `completion_tokens` tokens (EOS not counted)."""
    rng = random.Random(seed)
    rows = {"prompt": [], "completion": []}
    for _ in range(num_examples):
        rows["prompt"].append(" ".join(rng.choices(WORDS, k=rng.randint(4, 40))))
        ids = tokenizer(" " + " ".join(rng.choices(WORDS, k=2 * completion_tokens)))["input_ids"][:completion_tokens]
        rows["completion"].append(tokenizer.decode(ids))
    return Dataset.from_dict(rows)


class StepClock(TrainerCallback):
    """Seconds of every optimizer step, and of the sampling inside it (the trainer's generate calls, timed)."""

    def __init__(self, trainer):
        self.steps, self.generation, self._in_step = [], [], 0.0
        for backend in (trainer.generation_backend, trainer.teacher_generation_backend):
            backend.generate = self._timed(backend.generate)

    def _timed(self, generate):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return generate(*args, **kwargs)
            finally:
                self._in_step += time.perf_counter() - start

        return timed

    def on_step_begin(self, args, state, control, **kwargs):
        self._start, self._in_step = time.perf_counter(), 0.0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.perf_counter() - self._start)
        self.generation.append(self._in_step)


def run_case(
    trainer: str, lmbda: float, steps: int = 12, warmup: int = 2, batch_size: int = 8, new_tokens: int = 32
) -> dict:
    from transformers import AutoTokenizer

    from trl import DistillationConfig, DistillationTrainer, GKDConfig, GKDTrainer
    from trl.testing import get_tiny_model_path

    torch.manual_seed(0)
    student, teacher = get_tiny_model_path("qwen2"), get_tiny_model_path("qwen2", size="small")
    tokenizer = AutoTokenizer.from_pretrained(student)
    dataset = fixed_length_dataset(tokenizer, batch_size * (steps + 2), new_tokens)
    common = dict(
        report_to="none", max_steps=steps, per_device_train_batch_size=batch_size, max_length=256, lmbda=lmbda,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", learning_rate=1e-4,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as output_dir:
        full_length = {"min_new_tokens": new_tokens}  # GenerationConfig field: no EOS before `new_tokens`
        if trainer == "gkd":
            args, trainer_class = GKDConfig(output_dir=output_dir, max_new_tokens=new_tokens, **common), GKDTrainer
            args.generation_kwargs = full_length  # not a GKDConfig field; the shared sampling_params reads it
        else:
            args = DistillationConfig(
                output_dir=output_dir, max_completion_length=new_tokens, loss_top_k=0, **common,
                generation_kwargs=full_length,
            )  # fmt: skip
            trainer_class = DistillationTrainer
        run = trainer_class(student, teacher, args=args, train_dataset=dataset)
        clock = StepClock(run)
        run.add_callback(clock)
        run.train()
    lengths = [row["completions/mean_length"] for row in run.state.log_history if "completions/mean_length" in row]
    step_s = statistics.median(clock.steps[warmup:])
    return {
        "benchmark": "distillation",
        "trainer": trainer,
        "lmbda": lmbda,
        "student": "qwen2-tiny",
        "teacher": "qwen2-small",
        "seconds_per_step": round(step_s, 4),
        "generation_seconds_per_step": round(statistics.median(clock.generation[warmup:]), 4),
        "completion_tokens": round(statistics.mean(lengths), 1) if lengths else new_tokens,
        "sequences_per_second": round(batch_size / step_s, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


if __name__ == "__main__":
    print(json.dumps(run_case(**json.loads(sys.argv[1]))))
