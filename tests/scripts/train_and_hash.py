"""Train a few steps with a trl trainer under `accelerate launch`, then write each rank's parameter hash.

Usage: `accelerate launch ... tests/scripts/train_and_hash.py <method> <output_dir>`; the test compares the files
`<output_dir>/rank-<i>.txt` written by every process.
"""

from __future__ import annotations

import faulthandler
import hashlib
import os
import sys

import torch


def parameter_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def build_sft(output_dir: str):
    from trl import SFTConfig, SFTTrainer
    from trl.testing import get_tiny_model_path, load_test_dataset

    args = SFTConfig(
        output_dir=output_dir, report_to="none", max_steps=3, per_device_train_batch_size=2, save_strategy="no",
        learning_rate=1e-2, max_length=64, seed=0,
    )  # fmt: skip
    return SFTTrainer(
        get_tiny_model_path("qwen2"), args=args, train_dataset=load_test_dataset("standard_prompt_completion")
    )


def build_prm(output_dir: str):
    from trl.testing import get_tiny_model_path, load_test_dataset
    from trl.trainer.prm_config import PRMConfig
    from trl.trainer.prm_trainer import PRMTrainer

    args = PRMConfig(
        output_dir=output_dir, report_to="none", max_steps=3, per_device_train_batch_size=2, save_strategy="no",
        learning_rate=1e-2, max_length=64, seed=0,
    )  # fmt: skip
    dataset = load_test_dataset("standard_stepwise_supervision")
    return PRMTrainer(get_tiny_model_path("qwen2-token-cls"), args=args, train_dataset=dataset)


def even_tokens(completion_ids, **kwargs):
    return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]


def build_online(method: str, output_dir: str):
    from trl.testing import get_tiny_model_path, load_test_dataset
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.rloo_config import RLOOConfig
    from trl.trainer.rloo_trainer import RLOOTrainer

    config_class, trainer_class = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[method]
    # One group of 4 completions split over the two processes: rewards are gathered before the advantages.
    args = config_class(
        output_dir=output_dir, report_to="none", max_steps=2, per_device_train_batch_size=2, num_generations=4,
        max_completion_length=8, save_strategy="no", learning_rate=1e-2, seed=0, beta=0.05,
    )  # fmt: skip
    dataset = load_test_dataset("conversational_prompt_only")
    return trainer_class(get_tiny_model_path("qwen2"), reward_funcs=even_tokens, args=args, train_dataset=dataset)


def build_grpo(output_dir: str):
    return build_online("grpo", output_dir)


def build_rloo(output_dir: str):
    return build_online("rloo", output_dir)


def build_reference_free(method: str, output_dir: str):
    from trl.testing import get_tiny_model_path, load_test_dataset
    from trl.trainer.cpo_config import CPOConfig
    from trl.trainer.cpo_trainer import CPOTrainer
    from trl.trainer.orpo_config import ORPOConfig
    from trl.trainer.orpo_trainer import ORPOTrainer

    config_class, trainer_class = {"cpo": (CPOConfig, CPOTrainer), "orpo": (ORPOConfig, ORPOTrainer)}[method]
    args = config_class(
        output_dir=output_dir, report_to="none", max_steps=3, per_device_train_batch_size=2, save_strategy="no",
        learning_rate=1e-2, max_length=64, seed=0,
    )  # fmt: skip
    dataset = load_test_dataset("conversational_preference")
    return trainer_class(get_tiny_model_path("qwen2"), args=args, train_dataset=dataset)


def build_cpo(output_dir: str):
    return build_reference_free("cpo", output_dir)


def build_orpo(output_dir: str):
    return build_reference_free("orpo", output_dir)


def build_unpaired(method: str, output_dir: str):
    from trl.testing import get_tiny_model_path, load_test_dataset
    from trl.trainer.bco_config import BCOConfig
    from trl.trainer.bco_trainer import BCOTrainer
    from trl.trainer.kto_config import KTOConfig
    from trl.trainer.kto_trainer import KTOTrainer

    config_class, trainer_class = {"kto": (KTOConfig, KTOTrainer), "bco": (BCOConfig, BCOTrainer)}[method]
    # KTO's KL reference point and BCO's running mean δ are gathered over both processes.
    args = config_class(
        output_dir=output_dir, report_to="none", max_steps=3, per_device_train_batch_size=2, save_strategy="no",
        learning_rate=1e-2, max_length=64, seed=0,
    )  # fmt: skip
    dataset = load_test_dataset("conversational_unpaired_preference")
    return trainer_class(get_tiny_model_path("qwen2"), args=args, train_dataset=dataset)


def build_kto(output_dir: str):
    return build_unpaired("kto", output_dir)


def build_bco(output_dir: str):
    return build_unpaired("bco", output_dir)


def build_distillation_pair(method: str, output_dir: str):
    from trl import DistillationConfig, DistillationTrainer, GKDConfig, GKDTrainer
    from trl.testing import get_tiny_model_path, load_test_dataset

    # lmbda=0.5: both on-policy (generated per process) and dataset micro-batches; the coin agrees across ranks.
    common = dict(
        output_dir=output_dir, report_to="none", max_steps=3, per_device_train_batch_size=2, save_strategy="no",
        learning_rate=1e-2, max_length=64, seed=0, lmbda=0.5,
    )  # fmt: skip
    if method == "gkd":
        args, trainer_class = GKDConfig(**common, max_new_tokens=6), GKDTrainer
    else:
        args, trainer_class = DistillationConfig(**common, max_completion_length=6), DistillationTrainer
    student, teacher = get_tiny_model_path("qwen2"), get_tiny_model_path("qwen2", size="small")
    dataset = load_test_dataset("conversational_prompt_completion")
    return trainer_class(student, teacher, args=args, train_dataset=dataset)


def build_gkd(output_dir: str):
    return build_distillation_pair("gkd", output_dir)


def build_distillation(output_dir: str):
    return build_distillation_pair("distillation", output_dir)


def build_ppo(output_dir: str):
    from trl.testing import get_tiny_model_path, load_test_dataset
    from trl.trainer.ppo_config import PPOConfig
    from trl.trainer.ppo_trainer import PPOTrainer

    # 2 prompts per process, one rollout batch of 4 over the two processes; scores come from a tiny reward model.
    args = PPOConfig(
        output_dir=output_dir, report_to="none", max_steps=2, per_device_train_batch_size=2, num_ppo_epochs=1,
        response_length=6, save_strategy="no", learning_rate=1e-2, seed=0, gradient_checkpointing=False,
        num_sample_generations=0,
    )  # fmt: skip
    return PPOTrainer(
        args=args,
        processing_class=None,
        model=get_tiny_model_path("qwen2"),
        ref_model=None,
        reward_model=get_tiny_model_path("qwen2-seq-cls"),
        train_dataset=load_test_dataset("standard_prompt_only"),
        value_model=get_tiny_model_path("qwen2-seq-cls"),
    )


class _PreferShorter:
    """A pairwise judge preferring the shorter completion (ties: the first)."""

    def judge(self, prompts, completions, shuffle_order=True, return_scores=False):
        if return_scores:
            return [0.8 if len(a) <= len(b) else 0.2 for a, b in completions]
        return [0 if len(a) <= len(b) else 1 for a, b in completions]


def build_online_preference(method: str, output_dir: str):
    from trl import NashMDConfig, NashMDTrainer, OnlineDPOConfig, OnlineDPOTrainer, XPOConfig, XPOTrainer
    from trl.testing import get_tiny_model_path, load_test_dataset

    config_class, trainer_class = {"online_dpo": (OnlineDPOConfig, OnlineDPOTrainer),
                                   "nash_md": (NashMDConfig, NashMDTrainer), "xpo": (XPOConfig, XPOTrainer)}[method]  # fmt: skip
    # One prompt (one pair) per process per step; each method scores with a different kind of scorer.
    scoring = {"online_dpo": {"reward_funcs": even_tokens},
               "nash_md": {"reward_funcs": get_tiny_model_path("qwen2-seq-cls")},
               "xpo": {"judge": _PreferShorter()}}[method]  # fmt: skip
    args = config_class(
        output_dir=output_dir, report_to="none", max_steps=2, per_device_train_batch_size=1, max_new_tokens=6,
        save_strategy="no", learning_rate=1e-2, seed=0, gradient_checkpointing=False,
    )  # fmt: skip
    dataset = load_test_dataset("conversational_prompt_only")
    return trainer_class(get_tiny_model_path("qwen2"), args=args, train_dataset=dataset, **scoring)


BUILDERS = {
    "online_dpo": lambda output_dir: build_online_preference("online_dpo", output_dir),
    "nash_md": lambda output_dir: build_online_preference("nash_md", output_dir),
    "xpo": lambda output_dir: build_online_preference("xpo", output_dir),
    "ppo": build_ppo,
    "gkd": build_gkd,
    "distillation": build_distillation,
    "sft": build_sft,
    "prm": build_prm,
    "grpo": build_grpo,
    "rloo": build_rloo,
    "cpo": build_cpo,
    "orpo": build_orpo,
    "kto": build_kto,
    "bco": build_bco,
}


def main() -> None:
    method, output_dir = sys.argv[1], sys.argv[2]
    # A run that hangs prints every thread's stack before the test's timeout kills it, so the failure shows where.
    faulthandler.dump_traceback_later(float(os.environ.get("TRL_TEST_HANG_DUMP_S", "240")), exit=True)
    trainer = BUILDERS[method](output_dir)
    before = parameter_digest(trainer.model)
    trainer.train()
    after = parameter_digest(trainer.accelerator.unwrap_model(trainer.model))
    rank = trainer.accelerator.process_index
    world = trainer.accelerator.num_processes
    with open(os.path.join(output_dir, f"rank-{rank}.txt"), "w") as file:
        file.write(f"{world} {before} {after}\n")
    # Tear the process group down before the interpreter exits: left to interpreter shutdown, gloo's threads were
    # once destroyed while still joinable ("terminate called without an active exception", SIGABRT on rank 0).
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    # Exit without running the destructors of the trainer's objects: in CI a finished run (results written, group
    # destroyed) hung while freeing `main`'s locals (faulthandler showed no Python frame below `main()`), 1 run in 3.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
