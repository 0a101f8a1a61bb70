"""Compare the benchmarks of two checkouts, alternating their runs in fresh processes.

Usage: `python benchmarks/compare.py --before /path/to/old/checkout [--after .] --rounds 3 [--only sft dpo]`

Each case runs `--rounds` times per checkout, before and after alternating (before, after, before, after, ...), each
run in its own process with the checkout's `trl` first on `sys.path`. The report gives, per case, the median of each
side, the spread (max - min over the rounds, relative to the median: the noise on this machine) and the ratio of the
medians. A ratio inside the spread is not a change.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys


def _cases(checkout: str, module: str) -> list[dict]:
    path = os.path.join(checkout, *module.split(".")) + ".py"
    spec = importlib.util.spec_from_file_location(f"_compare_{abs(hash(path))}", path)
    loaded = importlib.util.module_from_spec(spec)
    sys.path.insert(0, checkout)
    try:
        spec.loader.exec_module(loaded)
    finally:
        sys.path.remove(checkout)
    return loaded.CASES


def _run(checkout: str, module: str, case: dict) -> dict:
    env = {**os.environ, "TRL_QUIET": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": checkout}
    output = subprocess.run(
        [sys.executable, "-m", module, json.dumps(case)], capture_output=True, text=True, env=env, cwd=checkout
    )
    if output.returncode != 0:
        raise RuntimeError(f"{checkout}: case {case} failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def _throughput_key(result: dict) -> str:
    # The first per-second figure a case reports is its throughput (tokens/s, pairs/s, examples/s, ...).
    for key in result:
        if key.endswith("_per_second") or key.endswith("per_s"):
            return key
    return "seconds_per_step"


def _summary(values: list[float]) -> tuple[float, float]:
    median = statistics.median(values)
    return median, (max(values) - min(values)) / median if median else 0.0


def compare(before: str, after: str, suites: list[str], rounds: int) -> list[dict]:
    """Run every common case of `suites` `rounds` times per checkout, alternating, and summarise."""
    rows = []
    for suite in suites:
        module = f"benchmarks.bench_{suite}"
        after_cases = {json.dumps(case, sort_keys=True): case for case in _cases(after, module)}
        for case in _cases(before, module):
            if json.dumps(case, sort_keys=True) not in after_cases:
                continue
            runs = {"before": [], "after": []}
            for _ in range(rounds):
                runs["before"].append(_run(before, module, case))
                runs["after"].append(_run(after, module, case))
            key = _throughput_key(runs["after"][0])
            row = {"suite": suite, "case": case, "metric": key}
            for side in ("before", "after"):
                row[side], row[f"{side}_spread"] = _summary([float(run[key]) for run in runs[side]])
                row[f"{side}_peak_rss_mib"] = max(float(run.get("peak_rss_mib", 0.0)) for run in runs[side])
            row["ratio"] = row["after"] / row["before"] if row["before"] else float("nan")
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="Checkout of the old code (e.g. a `git worktree`).")
    parser.add_argument("--after", default=".", help="Checkout of the new code.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=["sft", "dpo", "reward", "prm", "kto_bco", "cpo_orpo", "grpo"])
    parser.add_argument("--output", default=None, help="Write the rows as JSON here.")
    args = parser.parse_args()
    rows = compare(os.path.abspath(args.before), os.path.abspath(args.after), args.only, args.rounds)
    if args.output:
        with open(args.output, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
