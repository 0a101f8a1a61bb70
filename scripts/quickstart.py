"""Offline quick start: SFT of a tiny model through the real `trl sft` command, then reload and generate.

Run with `make quickstart` (or `.venv/bin/python scripts/quickstart.py`). Nothing is downloaded: the model and
tokenizer are built locally by `trl.testing`, the data is the bundled `standard_language_modeling` set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml


OUTPUT_DIR = os.path.abspath("quickstart-output")


def write_config(model_path: str, dataset_path: str, path: str) -> None:
    config = {
        "model_name_or_path": model_path,
        "dataset_name": dataset_path,
        "dataset_config": "standard_language_modeling",
        "output_dir": OUTPUT_DIR,
        "max_steps": 40,
        "per_device_train_batch_size": 8,
        "learning_rate": 3.0e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 5,
        "max_length": 128,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
    }
    with open(path, "w") as file:
        yaml.safe_dump(config, file)


def train(config_path: str) -> list[float]:
    """Run `trl sft --config <yaml>` and return the logged training losses."""
    trl_command = os.path.join(os.path.dirname(sys.executable), "trl")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.run(
        [trl_command, "sft", "--config", config_path], env=env, capture_output=True, text=True, check=False
    )
    if process.returncode != 0:
        sys.exit(f"trl sft failed:\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}")
    losses = []
    for line in (process.stdout + process.stderr).splitlines():
        line = line.strip()
        if line.startswith("{") and "'loss'" in line:
            losses.append(float(json.loads(line.replace("'", '"'))["loss"]))
    return losses


def generate(prompt: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(OUTPUT_DIR)
    tokenizer = AutoTokenizer.from_pretrained(OUTPUT_DIR)
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def main() -> None:
    from trl.testing import get_dataset_path, get_tiny_model_path

    shutil.rmtree(OUTPUT_DIR, ignore_errors=True)
    model_path = get_tiny_model_path("qwen2")
    print(f"tiny model built at {model_path}")
    with tempfile.TemporaryDirectory() as tmp:
        config_path = os.path.join(tmp, "sft.yaml")
        write_config(model_path, get_dataset_path(), config_path)
        print(f"running: trl sft --config {config_path}")
        losses = train(config_path)
    for step, loss in enumerate(losses, start=1):
        print(f"  log {step:2d}  loss {loss:.4f}")
    if not losses or losses[-1] >= losses[0]:
        sys.exit("the loss did not fall")
    print(f"loss fell from {losses[0]:.3f} to {losses[-1]:.3f}; model saved to {OUTPUT_DIR}")
    prompt = "The sky is"
    print(
        f"reloaded with AutoModelForCausalLM.from_pretrained; greedy continuation of {prompt!r}: {generate(prompt)!r}"
    )


if __name__ == "__main__":
    main()
