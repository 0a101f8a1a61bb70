"""Per-decode-step time of the transformers backend against the time of the step's own matrix multiplications.

One case: `python -m benchmarks.bench_generation '{"size": "tiny", "loop": "lean"}'` (prints one JSON line).
Before/after comparison, alternating fresh processes: `python -m benchmarks.bench_generation --alternate 5`.

The workload is a GRPO rollout: 4 prompts (8-40 tokens, left-padded) x 4 completions = 16 rows, 24 new tokens,
temperature 1.0 sampling, on the `trl.testing` Qwen2 models (tiny: hidden 32, small: hidden 128), one torch thread.
`loop="generate"` is `model.generate` (the old path), `loop="lean"` the lean decode loop (sdpa attention, bitwise
the same logits), `loop="lean-matmul"` the lean loop with `lean_attention="matmul"`.

- `step_ms`: `(T(24 tokens) - T(1 token)) / 23`, each `T` the median of 7 timed calls after a warm-up, so the prefill
  and the per-call fixed costs cancel out.
- `linear_ms`: the step's linear layers (every projection and the LM head, unfused, the model's own weights) timed
  directly on `[16, in_features]` inputs, one pass; `attention_matmul_ms`: the two attention products (`q k^T`,
  `p v`) per layer at the mean key length, as `torch.matmul`; `matmul_ms` is their sum.
- `linear_flops_ms`: the linear layers' FLOPs at the 1024^2 fp32 matmul rate measured in the same process (the peak
  rate that small matrices do not reach).
- `step_over_matmul` = `step_ms / matmul_ms`; `step_over_linear` = `step_ms / linear_ms`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from benchmarks.common import measured_matmul_peak, peak_rss_mib


LOOPS = ("generate", "lean", "lean-matmul")
CASES = [{"size": size, "loop": loop} for size in ("tiny", "small") for loop in LOOPS]
PROMPTS, COMPLETIONS, NEW_TOKENS, REPEATS = 4, 4, 24, 7


def _median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _matmul_times(model, rows: int, mean_keys: int, repeats: int = 50) -> tuple[float, float, float]:
    """Seconds of one decode step's linear layers and attention products, timed directly; FLOPs of the former."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(rows, m.in_features) for m in linears]
    flops = sum(2 * rows * m.in_features * m.out_features for m in linears)
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    q = torch.randn(rows, kv_heads, heads // kv_heads, head_dim)
    k_t = torch.randn(rows, kv_heads, head_dim, mean_keys)
    v = torch.randn(rows, kv_heads, mean_keys, head_dim)
    p = torch.randn(rows, kv_heads, heads // kv_heads, mean_keys)
    layers = config.num_hidden_layers

    def run_linears():
        for module, x in zip(linears, inputs, strict=True):
            torch.nn.functional.linear(x, module.weight, module.bias)

    def run_attention():
        for _ in range(layers):
            torch.matmul(q, k_t)
            torch.matmul(p, v)

    with torch.inference_mode():
        for _ in range(5):
            run_linears()
            run_attention()
        linear = _median_time(run_linears, repeats)
        attention = _median_time(run_attention, repeats)
    return linear, attention, flops


def run_case(size: str = "tiny", loop: str = "lean", threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM

    from trl.generation import SamplingParams, TransformersBackend
    from trl.testing import get_tiny_model_path

    model = AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2", size=size)).eval()
    decode_loop, _, attention = loop.partition("-")
    backend = TransformersBackend(model, decode_loop=decode_loop, lean_attention=attention or "sdpa")
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 41, (PROMPTS,), generator=generator).tolist()
    prompts = [torch.randint(3, model.config.vocab_size, (n,), generator=generator).tolist() for n in lengths]
    lengths_seen = []

    def generate(tokens: int):
        sampling = SamplingParams(n=COMPLETIONS, temperature=1.0, max_tokens=tokens, generation_kwargs={"seed": 0})
        result = backend.generate(prompts, sampling)
        if tokens == NEW_TOKENS:
            lengths_seen.append(sum(len(c) for c in result.completion_ids) / len(result))

    for _ in range(2):
        generate(NEW_TOKENS)
        generate(1)
    full = _median_time(lambda: generate(NEW_TOKENS), REPEATS)
    first = _median_time(lambda: generate(1), REPEATS)
    step = (full - first) / (NEW_TOKENS - 1)
    rows = PROMPTS * COMPLETIONS
    linear, attention, flops = _matmul_times(model, rows, max(lengths) + NEW_TOKENS // 2)
    peak = measured_matmul_peak()
    matmul = linear + attention
    return {
        "case": f"generation-{size}-{loop}",
        "size": size,
        "loop": loop,
        "decode_loop_used": backend.last_decode_loop,
        "rows": rows,
        "new_tokens": NEW_TOKENS,
        "mean_completion_length": statistics.mean(lengths_seen),
        "generate_seconds": full,
        "step_ms": step * 1e3,
        "linear_ms": linear * 1e3,
        "attention_matmul_ms": attention * 1e3,
        "matmul_ms": matmul * 1e3,
        "linear_flops_ms": flops / peak * 1e3,
        "step_over_matmul": step / matmul,
        "step_over_linear": step / linear,
        "matmul_peak_gflops": peak / 1e9,
        "peak_rss_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }


def alternate(repeats: int, sizes=("tiny", "small")) -> dict:
    """Run generate / lean alternately in fresh processes, `repeats` times each per size; medians and spreads."""
    from benchmarks.common import run_case_in_subprocess

    runs = {(size, loop): [] for size in sizes for loop in LOOPS}
    for _ in range(repeats):
        for size in sizes:
            for loop in LOOPS:
                result = run_case_in_subprocess("benchmarks.bench_generation", {"size": size, "loop": loop})
                runs[size, loop].append(result)
                print(json.dumps(result), file=sys.stderr)
    summary = {}
    for (size, loop), results in runs.items():
        entry = {}
        for key in ("step_ms", "matmul_ms", "linear_ms", "linear_flops_ms", "step_over_matmul", "step_over_linear"):
            values = sorted(r[key] for r in results)
            entry[key] = {"median": statistics.median(values), "min": values[0], "max": values[-1]}
        summary[f"{size}-{loop}"] = entry
    for size in sizes:
        before = [r["step_ms"] for r in runs[size, "generate"]]
        for loop in LOOPS[1:]:
            after = [r["step_ms"] for r in runs[size, loop]]
            summary[f"{size}-{loop}-speedup"] = statistics.median(before) / statistics.median(after)
            # Outside the noise only if the slowest "after" run beats the fastest "before" run.
            summary[f"{size}-{loop}-separated"] = max(after) < min(before)
    return summary


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--alternate":
        print(json.dumps(alternate(int(sys.argv[2])), indent=2))
    else:
        case = json.loads(sys.argv[1]) if len(sys.argv) > 1 else CASES[1]
        print(json.dumps(run_case(**case)))
