"""`token_logps` forward + backward: the logits path against the chunked LM head, on the tiny and small test models.

Every variant runs in the same process, interleaved (in a rotating order), `repeats` times, on `threads` threads; the
minimum (the run least disturbed by other work on a shared machine) and the median are reported. The batch is SFT-like: `rows` right-padded rows of up to `length` tokens,
the second half of each row scored, with entropy and top-1 flags (what SFT logs).

Run one case: `python -m benchmarks.bench_token_logps '{"size": "small"}'` (prints one JSON line).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch


CASES = [
    {"size": "tiny"},
    {"size": "small"},
    {"size": "small", "rows": 16, "length": 512},
    # The LM head alone at a real model's vocabulary, where the `[N, V]` logits the chunked path never holds are large.
    {"head_only": True, "vocab_size": 32768, "hidden_size": 128, "positions": 2048, "repeats": 5},
]
VARIANTS = {"logits": None, "chunk_256": 256, "chunk_1024": 1024, "chunk_4096": 4096}


def synthetic_batch(vocab_size: int, rows: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=generator)
    columns = torch.arange(length)
    attention_mask = (columns < lengths[:, None]).long()
    completion_mask = attention_mask * (columns >= (lengths[:, None] // 2)).long()
    input_ids = torch.randint(1, vocab_size, (rows, length), generator=generator) * attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def _step(model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_size: int | None) -> float:
    from trl.kernels import token_logps

    start = time.perf_counter()
    token = token_logps(model, batch, chunk_size=chunk_size, return_entropy=True, return_top1=True)
    token.logps.sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def run_case(
    size: str = "small",
    rows: int = 8,
    length: int = 256,
    repeats: int = 21,
    threads: int = 1,
    head_only: bool = False,
    **head,
) -> dict:
    if head_only:
        return run_head_case(repeats=repeats, threads=threads, **head)
    from transformers import AutoModelForCausalLM

    from trl.testing import get_tiny_model_path

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2", size=size)).train()
    batch = synthetic_batch(model.config.vocab_size, rows, length)
    for chunk_size in VARIANTS.values():  # warm-up
        _step(model, batch, chunk_size)
    times = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            times[name].append(_step(model, batch, VARIANTS[name]))
    best = {name: min(values) for name, values in times.items()}
    medians = {name: statistics.median(values) for name, values in times.items()}
    scored = int(batch["completion_mask"][:, 1:].sum())
    return {
        "benchmark": "token_logps",
        "model": f"qwen2-{size}",
        "rows": rows,
        "length": length,
        "scored_tokens": scored,
        "logits_mib": round(scored * model.config.vocab_size * 4 / 2**20, 1),
        "min_ms": {name: round(1e3 * value, 2) for name, value in best.items()},
        "median_ms": {name: round(1e3 * value, 2) for name, value in medians.items()},
        "min_relative_to_logits": {name: round(value / best["logits"], 3) for name, value in best.items()},
        "threads": torch.get_num_threads(),
    }


def _head_step(hidden_N_H: torch.Tensor, head: torch.nn.Linear, targets_N: torch.Tensor, chunk_size: int | None):
    from trl.kernels import chunked_selective_log_softmax
    from trl.kernels.token_logps import logits_scores

    start = time.perf_counter()
    if chunk_size is None:
        logps_N = logits_scores(head(hidden_N_H), targets_N, {"return_entropy": True, "return_top1": True})["logps"]
    else:
        logps_N = chunked_selective_log_softmax(
            hidden_N_H, head.weight, targets_N, chunk_size, return_entropy=True, return_argmax=True
        )[0]
    logps_N.sum().backward()
    hidden_N_H.grad = head.weight.grad = None
    return time.perf_counter() - start


def run_head_case(vocab_size: int, hidden_size: int, positions: int, repeats: int, threads: int) -> dict:
    """The LM head and log-softmax alone (no transformer), at a vocabulary size the test models do not have."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    head = torch.nn.Linear(hidden_size, vocab_size, bias=False)
    hidden_N_H = torch.randn(positions, hidden_size, requires_grad=True)
    targets_N = torch.randint(0, vocab_size, (positions,))
    times = {name: [] for name in VARIANTS}
    for repeat in range(repeats + 1):
        for name, chunk_size in VARIANTS.items():
            elapsed = _head_step(hidden_N_H, head, targets_N, chunk_size)
            if repeat:  # the first round is a warm-up
                times[name].append(elapsed)
    best = {name: min(values) for name, values in times.items()}
    return {
        "benchmark": "token_logps_head",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "scored_tokens": positions,
        "logits_mib": round(positions * vocab_size * 4 / 2**20, 1),
        "min_ms": {name: round(1e3 * value, 2) for name, value in best.items()},
        "min_relative_to_logits": {name: round(value / best["logits"], 3) for name, value in best.items()},
        "threads": threads,
    }


if __name__ == "__main__":
    case = json.loads(sys.argv[1]) if len(sys.argv) > 1 else CASES[0]
    print(json.dumps(run_case(**case)))
