"""Helpers shared by the test files."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def cpu_generation_server(model_path: str, log_dir: Path) -> Iterator[int]:
    """Run `trl vllm-serve --backend transformers` on 127.0.0.1 for the block; yields its port.

    Its output goes to `log_dir/server.log`, a file rather than a pipe: an unread pipe could fill up and block it.
    """
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "trl.scripts.vllm_serve", "--backend", "transformers", "--model", model_path,
               "--host", "127.0.0.1", "--port", str(port), "--log_level", "warning"]  # fmt: skip
    with open(Path(log_dir) / "server.log", "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield port
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


def run_trl_with_yaml(command: str, config: dict, directory: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Write `config` to `<directory>/<command>.yaml` and run `trl <command> --config <it>`; asserts exit status 0."""
    import yaml

    path = Path(directory) / f"{command}.yaml"
    path.write_text(yaml.safe_dump(config))
    trl = os.path.join(os.path.dirname(sys.executable), "trl")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_QUIET": "1"}
    result = subprocess.run(
        [trl, command, "--config", str(path)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def run_accelerate(args: list[str], num_processes: int = 2, timeout: int = 300, cwd: str | None = None) -> str:
    """Run `accelerate launch --num_processes N` on CPU (gloo backend) and return its combined output.

    `accelerate launch --cpu` starts several processes only through mpirun, so the torchrun launcher
    (`--multi_gpu`) runs them, with `ACCELERATE_USE_CPU` keeping every process on the CPU.

    Args:
        args (`list[str]`):
            What follows the launcher flags: a script path (or `-m module`) and its arguments.
        num_processes (`int`, *optional*, defaults to `2`):
            Processes to start.
        timeout (`int`, *optional*, defaults to `300`):
            Seconds before the run is killed and the test fails.
        cwd (`str` or `None`, *optional*, defaults to `None`):
            Working directory.
    """
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--multi_gpu", "--main_process_port", str(free_port()),
        *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_QUIET": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["ACCELERATE_USE_CPU"] = "true"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as error:  # show what the processes printed (stacks of a hang) before the kill
        partial = "".join(
            part.decode() if isinstance(part, bytes) else part for part in (error.stdout, error.stderr) if part
        )
        raise AssertionError(f"accelerate launch timed out after {timeout} s:\n{partial[-12000:]}") from None
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"accelerate launch failed ({result.returncode}):\n{output[-6000:]}"
    return output


def assert_state_dicts_equal(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], msg=lambda m, k=key: f"{k}: {m}")


distributed = pytest.mark.distributed


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter, to check later which ones training changed."""
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def perturbed_model(path: str | None = None, seed: int = 1, scale: float = 0.05) -> torch.nn.Module:
    """The tiny causal LM with noise added to every weight: a reference model that differs from the policy."""
    from trl.testing import get_tiny_model_path

    model = AutoModelForCausalLM.from_pretrained(path or get_tiny_model_path("qwen2"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


class StopAt(TrainerCallback):
    """Interrupt training after `step` optimizer steps (the schedule still plans for `max_steps`)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step
