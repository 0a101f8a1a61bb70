"""Run every benchmark case, each in its own process, and write the results to JSON.

Usage: `python benchmarks/run.py --output benchmarks/results/latest.json [--only sft]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import (  # noqa: E402
    bench_cpo_orpo,
    bench_distillation,
    bench_dpo,
    bench_generation,
    bench_grpo,
    bench_kto_bco,
    bench_ppo,
    bench_prm,
    bench_reward,
    bench_sft,
    bench_token_logps,
)
from benchmarks.common import run_case_in_subprocess  # noqa: E402


SUITES = {
    "sft": ("benchmarks.bench_sft", bench_sft.CASES),
    "dpo": ("benchmarks.bench_dpo", bench_dpo.CASES),
    "reward": ("benchmarks.bench_reward", bench_reward.CASES),
    "prm": ("benchmarks.bench_prm", bench_prm.CASES),
    "grpo": ("benchmarks.bench_grpo", bench_grpo.CASES),
    "generation": ("benchmarks.bench_generation", bench_generation.CASES),
    "ppo": ("benchmarks.bench_ppo", bench_ppo.CASES),
    "kto_bco": ("benchmarks.bench_kto_bco", bench_kto_bco.CASES),
    "cpo_orpo": ("benchmarks.bench_cpo_orpo", bench_cpo_orpo.CASES),
    "token_logps": ("benchmarks.bench_token_logps", bench_token_logps.CASES),
    "distillation": ("benchmarks.bench_distillation", bench_distillation.CASES),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="benchmarks/results/latest.json")
    parser.add_argument("--only", nargs="*", choices=sorted(SUITES), help="Run only these suites.")
    args = parser.parse_args()
    results = []
    for name, (module, cases) in SUITES.items():
        if args.only and name not in args.only:
            continue
        for case in cases:
            result = run_case_in_subprocess(module, case)
            print(json.dumps(result))
            results.append(result)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as file:
        json.dump({"machine": platform.platform(), "cpus": os.cpu_count(), "results": results}, file, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
