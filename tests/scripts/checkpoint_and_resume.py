"""Two-process GRPO run that checkpoints at every step, then a resume from its checkpoint-1.

Usage: `accelerate launch ... tests/scripts/checkpoint_and_resume.py <output_dir> <phase>` with phase `full` (train
2 steps, saving checkpoint-1 and checkpoint-2) or `resume` (continue from checkpoint-1 in `<output_dir>/resumed`).
Each process writes `<output_dir>/<phase>-rank-<i>.txt`: its loss at step 2 and the number of processes.
"""

from __future__ import annotations

import os
import shutil
import sys


def even_tokens(completion_ids, **kwargs):
    return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]


def build(output_dir: str):
    from trl.testing import get_tiny_model_path, load_test_dataset
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    # One generation batch feeds two steps (num_iterations=2): checkpoint-1 holds a half-used buffer per process.
    args = GRPOConfig(
        output_dir=output_dir, report_to="none", max_steps=2, per_device_train_batch_size=2, num_generations=4,
        max_completion_length=8, save_strategy="steps", save_steps=1, learning_rate=1e-2, seed=0, beta=0.05,
        num_iterations=2, logging_steps=1, gradient_checkpointing=False,
    )  # fmt: skip
    dataset = load_test_dataset("conversational_prompt_only")
    return GRPOTrainer(get_tiny_model_path("qwen2"), reward_funcs=even_tokens, args=args, train_dataset=dataset)


def main(output_dir: str, phase: str) -> None:
    os.environ.setdefault("TRL_QUIET", "1")
    run_dir = os.path.join(output_dir, phase)
    if phase == "resume" and int(os.environ.get("RANK", "0")) == 0:
        shutil.copytree(os.path.join(output_dir, "full", "checkpoint-1"), os.path.join(run_dir, "checkpoint-1"))
    trainer = build(run_dir)
    trainer.accelerator.wait_for_everyone()
    trainer.train(resume_from_checkpoint=phase == "resume" or None)
    loss = [row["loss"] for row in trainer.state.log_history if row.get("step") == 2 and "loss" in row]
    rank = trainer.accelerator.process_index
    with open(os.path.join(output_dir, f"{phase}-rank-{rank}.txt"), "w") as file:
        file.write(f"{trainer.accelerator.num_processes} {loss[0]!r}\n")
    # Tear the process group down before the interpreter exits (as train_and_hash.py does): left to interpreter
    # shutdown, gloo's threads were destroyed while still joinable ("terminate called without an active exception").
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
