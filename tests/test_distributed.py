"""Two-process runs on CPU (gloo) through `accelerate launch`, as users run them."""

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from trl.testing import get_dataset_path, get_tiny_model_path

from .testing_utils import free_port, run_accelerate


SCRIPT = str(Path(__file__).parent / "scripts" / "train_and_hash.py")
pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("distributed")]


def read_rank_files(output_dir: Path, world_size: int) -> list[list[str]]:
    rows = [(output_dir / f"rank-{rank}.txt").read_text().split() for rank in range(world_size)]
    assert all(row[0] == str(world_size) for row in rows), "the processes did not form one process group"
    return rows


@pytest.mark.parametrize(
    "method",
    [
        "sft",
        "prm",
        "grpo",
        "rloo",
        "cpo",
        "orpo",
        "kto",
        "bco",
        "gkd",
        "distillation",
        "ppo",
        "online_dpo",
        "nash_md",
        "xpo",
    ],
)
def test_two_processes_train_and_agree_on_weights(tmp_path, method):
    run_accelerate([SCRIPT, method, str(tmp_path)], num_processes=2)
    (_, before0, after0), (_, before1, after1) = read_rank_files(tmp_path, 2)
    assert before0 == before1
    assert after0 != before0, "training did not change the weights"
    assert after0 == after1, "the two ranks ended with different weights"


def test_trl_sft_cli_with_two_processes(tmp_path):
    config = {
        "model_name_or_path": get_tiny_model_path("qwen2"),
        "dataset_name": get_dataset_path(),
        "dataset_config": "standard_language_modeling",
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "num_processes": 2,
        "cpu": True,
        "main_process_port": free_port(),
    }
    config_path = tmp_path / "sft.yaml"
    config_path.write_text(yaml.safe_dump(config))
    trl = os.path.join(os.path.dirname(os.sys.executable), "trl")
    result = subprocess.run(
        [trl, "sft", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.model_type == "qwen2"
    logged = [line for line in result.stdout.splitlines() if "'loss'" in line]
    assert len(logged) == 2, result.stdout[-3000:]
    assert "'num_tokens'" in logged[-1]
    # The start-of-training table (printed by rank 0) shows the two processes.
    assert re.search(r"processes\s*\S\s*2\b", result.stdout), result.stdout[-3000:]
