"""Offline quick start: post-training a tiny model end to end (SFT, then DPO, then GRPO), with live progress, a figure
and a report.

Run with `make quickstart` (or `.venv/bin/python scripts/quickstart.py`). Nothing is downloaded: the model and
tokenizer are built locally by `trl.testing`, the data is trl's bundled tiny datasets. It writes to
`quickstart-output/`:

- `sft/`, `dpo/`, `grpo/`: the model after each stage (`grpo/` is the final one, reloaded at the end);
- `curves.png`: the loss of the SFT and DPO stages and the reward of the GRPO stage, per step;
- `report.html`: the same figure with the numbers and sample generations, to open in a browser;
- `configs/`: the YAML config of each stage, to rerun it with `trl sft|dpo|grpo --config <file>`.

The building blocks (`run_sft`, `run_dpo`, `run_grpo`, `write_figure`, `write_report`) are importable and tested
(`tests/test_quickstart.py`).
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field


OUTPUT_DIR = os.path.abspath("quickstart-output")


# ------------------------------------------------------------------------------------------------ live progress
@dataclass
class StageHistory:
    """The per-step metrics one stage logged: `{"loss": [(step, value), ...], "reward": [...], ...}`."""

    name: str
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    seconds: float = 0.0

    def curve(self, key: str) -> list[float]:
        return [value for _, value in self.metrics.get(key, [])]


def live_progress_callback(stage: str, history: StageHistory, keys: tuple[str, ...]):
    """
    A `TrainerCallback` showing a rich progress bar with the latest `keys` metrics, and recording every logged value.

    Args:
        stage (`str`):
            Name shown before the bar.
        history ([`StageHistory`]):
            Filled with each logged value of `keys` (and the loss).
        keys (`tuple[str, ...]`):
            Metric names shown next to the bar, e.g. `("loss",)` or `("reward",)`.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import TrainerCallback

    class LiveProgress(TrainerCallback):
        def __init__(self):
            self.progress = None
            self.task = None
            self.started = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            self.started = time.time()
            self.progress = Progress(
                TextColumn(f"[bold]{stage:<5}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=Console(stderr=False),
                transient=False,
                refresh_per_second=4,
            )
            self.progress.start()
            self.task = self.progress.add_task(stage, total=state.max_steps, metrics="")

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            for key, value in logs.items():
                if isinstance(value, (int, float)) and (key in keys or key == "loss"):
                    history.metrics.setdefault(key, []).append((state.global_step, float(value)))
            if self.progress is not None:
                shown = "  ".join(f"{key} {logs[key]:.3f}" for key in keys if isinstance(logs.get(key), (int, float)))
                if shown:
                    self.progress.update(self.task, metrics=shown)

        def on_train_end(self, args, state, control, **kwargs):
            history.seconds = time.time() - self.started
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)
                self.progress.stop()
                self.progress = None

    return LiveProgress()


def _quiet_trainer(trainer, callback) -> None:
    """Replace transformers' tqdm bar and log printer by the live rich bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(callback)


# Each stage's settings, shared by the Python runs below and the YAML configs written for `trl <method> --config`.
COMMON_SETTINGS = {"lr_scheduler_type": "constant", "logging_steps": 1, "save_strategy": "no", "report_to": "none"}
STAGE_SETTINGS = {
    "sft": {"max_steps": 120, "learning_rate": 3.0e-3, "per_device_train_batch_size": 8, "max_length": 128},
    "dpo": {"max_steps": 20, "learning_rate": 1.0e-3, "per_device_train_batch_size": 8, "max_length": 128},
    "grpo": {
        "max_steps": 40,
        "learning_rate": 2.0e-3,
        "per_device_train_batch_size": 16,
        "num_generations": 8,
        "max_completion_length": 12,
    },
}
STAGE_DATASETS = {"sft": "standard_language_modeling", "dpo": "standard_preference", "grpo": "standard_prompt_only"}


# Where the stages also log their metrics: "none" (the default; the figure and the report are written anyway) or
# "trackio" (`pip install "trl[trackio]"`; local dashboard of project "trl-quickstart": `trackio show --project
# trl-quickstart`). Set by `--report_to` of this script.
TRACKIO_PROJECT = "trl-quickstart"
report_to = "none"


def _stage_args(stage: str, output_dir: str, steps: int | None, seed: int) -> dict:
    settings = {**COMMON_SETTINGS, **STAGE_SETTINGS[stage], "output_dir": output_dir, "seed": seed}
    if steps is not None:
        settings["max_steps"] = steps
    if report_to != "none":
        settings.update(report_to=report_to, project=TRACKIO_PROJECT, run_name=stage)
    # Pinned memory only helps copies to a GPU; on CPU torch warns about it.
    return {**settings, "dataloader_pin_memory": False, "overwrite_output_dir": True}


# ------------------------------------------------------------------------------------------------ the stages
def run_sft(model_path: str, output_dir: str, steps: int | None = None, seed: int = 0) -> StageHistory:
    """
    Supervised fine-tuning on the bundled `standard_language_modeling` data; saves the model to `output_dir`.

    Returns:
        [`StageHistory`]: The loss per step.
    """
    from trl import SFTConfig, SFTTrainer
    from trl.testing import load_test_dataset

    history = StageHistory("SFT")
    args = SFTConfig(**_stage_args("sft", output_dir, steps, seed))
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=load_test_dataset(STAGE_DATASETS["sft"]))
    _quiet_trainer(trainer, live_progress_callback("SFT", history, ("loss",)))
    trainer.train()
    trainer.save_model(output_dir)
    return history


def run_dpo(model_path: str, output_dir: str, steps: int | None = None, seed: int = 0) -> StageHistory:
    """
    Direct Preference Optimization on the bundled `standard_preference` pairs; saves the model to `output_dir`.

    Returns:
        [`StageHistory`]: The loss and the reward margin (`rewards/margins`) per step.
    """
    from trl import DPOConfig, DPOTrainer
    from trl.testing import load_test_dataset

    history = StageHistory("DPO")
    args = DPOConfig(**_stage_args("dpo", output_dir, steps, seed))
    trainer = DPOTrainer(model=model_path, args=args, train_dataset=load_test_dataset(STAGE_DATASETS["dpo"]))
    _quiet_trainer(trainer, live_progress_callback("DPO", history, ("loss", "rewards/margins")))
    trainer.train()
    trainer.save_model(output_dir)
    return history


def digit_reward(completions: list[str], **kwargs) -> list[float]:
    """
    The GRPO stage's rule reward: the fraction of a completion's characters that are digits (0 for an empty one).

    The prompts ask "What is 1 plus 6?" and the like; a rule this simple is easy to game, and the tiny model soon
    answers everything with digits: the reward rises steadily, which is what the quick start shows.
    """
    rewards = []
    for completion in completions:
        text = completion.strip()
        rewards.append(sum(character.isdigit() for character in text) / len(text) if text else 0.0)
    return rewards


def run_grpo(model_path: str, output_dir: str, steps: int | None = None, seed: int = 0) -> StageHistory:
    """
    GRPO with [`digit_reward`] on the bundled `standard_prompt_only` prompts; saves the model to `output_dir`.

    Returns:
        [`StageHistory`]: The mean reward (`reward`) and the loss per step.
    """
    from trl import GRPOConfig, GRPOTrainer
    from trl.testing import load_test_dataset

    history = StageHistory("GRPO")
    args = GRPOConfig(**_stage_args("grpo", output_dir, steps, seed))
    trainer = GRPOTrainer(
        model=model_path,
        reward_funcs=digit_reward,
        args=args,
        train_dataset=load_test_dataset(STAGE_DATASETS["grpo"]),
    )
    _quiet_trainer(trainer, live_progress_callback("GRPO", history, ("reward",)))
    trainer.train()
    trainer.save_model(output_dir)
    return history


# ------------------------------------------------------------------------------------------------ figure and report
def write_figure(histories: list[StageHistory], path: str) -> str | None:
    """
    Save a PNG with one panel per stage: the loss of SFT and DPO, the mean reward of GRPO, against the step.

    Returns:
        `str` or `None`: The path, or `None` when matplotlib is not installed (`pip install "trl[quickstart]"`).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(1, len(histories), figsize=(4.2 * len(histories), 3.4), squeeze=False)
    for axis, history in zip(axes[0], histories):
        key = "reward" if history.metrics.get("reward") else "loss"
        steps = [step for step, _ in history.metrics.get(key, [])]
        axis.plot(steps, history.curve(key), marker=".", color="tab:green" if key == "reward" else "tab:blue")
        axis.set_title(f"{history.name}: {key}")
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _first_last(values: list[float], k: int = 5) -> tuple[float, float]:
    k = max(1, min(k, len(values) // 2 or 1))
    return sum(values[:k]) / k, sum(values[-k:]) / k


def summary_lines(histories: list[StageHistory]) -> list[str]:
    """One line per stage: its main metric at the start and the end (means of the first and last 5 logs)."""
    lines = []
    for history in histories:
        key = "reward" if history.metrics.get("reward") else "loss"
        values = history.curve(key)
        if values:
            first, last = _first_last(values)
            lines.append(
                f"{history.name:<5} {key} {first:.3f} -> {last:.3f}  ({len(values)} steps, {history.seconds:.0f} s)"
            )
    return lines


def write_report(histories: list[StageHistory], figure_path: str | None, samples: dict[str, str], path: str) -> str:
    """
    Write a self-contained HTML report: the figure (embedded), a table of each stage's start / end values, the
    sample generations of the final model, and the per-step numbers.
    """
    parts = [
        "<!doctype html><meta charset='utf-8'><title>trl quick start</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:.2em .8em;text-align:left}"
        "pre{background:#f4f4f4;padding:.6em}</style>",
        "<h1>trl quick start: SFT, DPO, GRPO on a tiny model</h1>",
    ]
    if figure_path is not None:
        with open(figure_path, "rb") as file:
            encoded = base64.b64encode(file.read()).decode()
        parts.append(f"<img alt='loss and reward curves' src='data:image/png;base64,{encoded}' style='width:100%'>")
    parts.append(
        "<h2>Stages</h2><table><tr><th>stage</th><th>metric</th><th>start</th><th>end</th><th>steps</th></tr>"
    )
    for history in histories:
        key = "reward" if history.metrics.get("reward") else "loss"
        values = history.curve(key)
        if values:
            first, last = _first_last(values)
            parts.append(
                f"<tr><td>{history.name}</td><td>{key}</td><td>{first:.3f}</td><td>{last:.3f}</td>"
                f"<td>{len(values)}</td></tr>"
            )
    parts.append("</table><h2>Greedy generations after SFT and after GRPO</h2>")
    for prompt, completion in samples.items():
        parts.append(f"<pre><b>{html.escape(prompt)}</b>{html.escape(completion)}</pre>")
    numbers = {history.name: history.metrics for history in histories}
    parts.append(f"<h2>Numbers</h2><pre>{html.escape(json.dumps(numbers, indent=1))}</pre>")
    with open(path, "w") as file:
        file.write("\n".join(parts))
    return path


def write_stage_configs(model_path: str, directory: str) -> None:
    """The YAML configs of the three stages, runnable with `trl sft|dpo|grpo --config <file>`."""
    import yaml

    from trl.testing import get_dataset_path

    os.makedirs(directory, exist_ok=True)
    models = {"sft": model_path, "dpo": os.path.join(OUTPUT_DIR, "sft"), "grpo": os.path.join(OUTPUT_DIR, "dpo")}
    for stage, settings in STAGE_SETTINGS.items():
        config = {
            "model_name_or_path": models[stage],
            "dataset_name": get_dataset_path(),
            "dataset_config": STAGE_DATASETS[stage],
            **settings,
            **COMMON_SETTINGS,
            "output_dir": os.path.join(OUTPUT_DIR, stage),
        }
        if stage == "grpo":
            config["reward_funcs"] = ["quickstart_rewards.digit_reward"]
        with open(os.path.join(directory, f"{stage}.yaml"), "w") as file:
            yaml.safe_dump(config, file, sort_keys=False)
    with open(os.path.join(directory, "quickstart_rewards.py"), "w") as file:
        file.write(
            "def digit_reward(completions, **kwargs):\n"
            "    texts = [completion.strip() for completion in completions]\n"
            "    return [sum(ch.isdigit() for ch in text) / len(text) if text else 0.0 for text in texts]\n"
        )


def generate(model_dir: str, prompts: list[str]) -> dict[str, str]:
    """Reload `model_dir` with `from_pretrained` and greedily continue each prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples = {}
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        samples[prompt] = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return samples


def quiet_libraries() -> None:
    """Keep the output to the live bars: no per-file loading bars, no informational logs."""
    import datasets
    import transformers

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def main() -> None:
    import argparse

    global report_to
    parser = argparse.ArgumentParser(description="Offline quick start: SFT -> DPO -> GRPO on a tiny model.")
    parser.add_argument(
        "--report_to", choices=["none", "trackio"], default="none", help="Also log to a local trackio dashboard."
    )
    report_to = parser.parse_args().report_to
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    print("trl quick start: SFT -> DPO -> GRPO on a tiny model, offline, on CPU", flush=True)
    quiet_libraries()
    import torch

    # The tiny model's matrices are too small for several threads to pay off: one thread is several times faster.
    torch.set_num_threads(1)
    from trl.testing import get_tiny_model_path

    shutil.rmtree(OUTPUT_DIR, ignore_errors=True)
    os.makedirs(OUTPUT_DIR)
    model_path = get_tiny_model_path("qwen2")
    print(f"tiny model built at {model_path}", flush=True)
    histories = [
        run_sft(model_path, os.path.join(OUTPUT_DIR, "sft")),
        run_dpo(os.path.join(OUTPUT_DIR, "sft"), os.path.join(OUTPUT_DIR, "dpo")),
        run_grpo(os.path.join(OUTPUT_DIR, "dpo"), os.path.join(OUTPUT_DIR, "grpo")),
    ]
    print("\n".join(["", *summary_lines(histories)]))
    sft_loss, grpo_reward = histories[0].curve("loss"), histories[2].curve("reward")
    if not sft_loss or _first_last(sft_loss)[1] >= _first_last(sft_loss)[0]:
        sys.exit("the SFT loss did not fall")
    if not grpo_reward or _first_last(grpo_reward)[1] <= _first_last(grpo_reward)[0]:
        sys.exit("the GRPO reward did not rise")
    prompts = ["The sky is", "What is 1 plus 6?"]
    samples = {}
    for stage in ("sft", "grpo"):
        for prompt, completion in generate(os.path.join(OUTPUT_DIR, stage), prompts).items():
            samples[f"[{stage}] {prompt}"] = completion
            print(f"{stage} model, reloaded with from_pretrained: {prompt!r} -> {completion!r}")
    figure = write_figure(histories, os.path.join(OUTPUT_DIR, "curves.png"))
    report = write_report(histories, figure, samples, os.path.join(OUTPUT_DIR, "report.html"))
    write_stage_configs(model_path, os.path.join(OUTPUT_DIR, "configs"))
    print(f"figure: {figure or 'skipped (pip install matplotlib)'}")
    print(f"report: {report}  (open it in a browser)")
    print(f"configs: {os.path.join(OUTPUT_DIR, 'configs')}/  (rerun a stage with `trl sft --config .../sft.yaml`)")
    if report_to == "trackio":
        print(f"dashboard: trackio show --project {TRACKIO_PROJECT}")


if __name__ == "__main__":
    main()
