"""PPOConfig / PPOTrainer: configuration contract, training on the tiny model (policy + value), PEFT, evaluation,
saving and exact resume, bad inputs, and a learning test."""

import dataclasses
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from trl.testing import get_tiny_model_path, load_test_dataset
from trl.trainer.ppo_config import PPOConfig
from trl.trainer.ppo_trainer import PPOTrainer

from .testing_utils import snapshot


PPO_DEFAULTS = {
    "dataset_num_proc": None, "num_mini_batches": 1, "total_episodes": None, "local_rollout_forward_batch_size": 64,
    "num_sample_generations": 10, "response_length": 53, "stop_token": None, "stop_token_id": None,
    "temperature": 0.7, "missing_eos_penalty": None, "sft_model_path": "EleutherAI/pythia-160m", "world_size": None,
    "num_total_batches": None, "micro_batch_size": None, "local_batch_size": None, "batch_size": None,
    "local_mini_batch_size": None, "mini_batch_size": None, "reward_model_path": "EleutherAI/pythia-160m",
    "model_adapter_name": None, "ref_adapter_name": None, "num_ppo_epochs": 4, "whiten_rewards": False,
    "kl_coef": 0.05, "kl_estimator": "k1", "cliprange": 0.2, "vf_coef": 0.1, "cliprange_value": 0.2, "gamma": 1.0,
    "lam": 0.95, "ds3_gather_for_generation": True, "exp_name": "ppo_config", "learning_rate": 3e-6,
    "logging_steps": 10, "gradient_checkpointing": True, "bf16": None,
}  # fmt: skip
SEQ_CLS = "qwen2-seq-cls"
SPEC_METRICS = (
    "eps", "episode", "lr", "objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
    "objective/scores", "policy/approxkl_avg", "policy/clipfrac_avg", "policy/entropy_avg", "loss/policy_avg",
    "loss/value_avg", "val/clipfrac_avg", "val/ratio", "val/ratio_var", "val/num_eos_tokens",
)  # fmt: skip


def even_tokens(completion_ids, **kwargs):
    """Fraction of even token ids: a rule the tiny random policy can learn in a few steps."""
    return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]


def make_config(tmp_path, **overrides) -> PPOConfig:
    values = dict(
        output_dir=str(tmp_path / "out"), report_to="none", max_steps=2, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, num_ppo_epochs=2, response_length=6, logging_steps=1, save_strategy="no",
        learning_rate=1e-2, seed=0, gradient_checkpointing=False, num_sample_generations=0,
    )  # fmt: skip
    values.update(overrides)
    return PPOConfig(**values)


def make_trainer(tmp_path, reward_model=None, ref_model=None, peft_config=None, eval_dataset=None, **overrides):
    reward_model = reward_model or get_tiny_model_path(SEQ_CLS)
    return PPOTrainer(
        args=make_config(tmp_path, **overrides),
        processing_class=None,
        model=get_tiny_model_path("qwen2"),
        ref_model=ref_model,
        reward_model=reward_model,
        train_dataset=load_test_dataset("standard_prompt_only"),
        value_model=get_tiny_model_path(SEQ_CLS),
        eval_dataset=eval_dataset,
        peft_config=peft_config,
    )


def logged(trainer, key):
    return [row[key] for row in trainer.state.log_history if key in row]


# ------------------------------------------------------------------------------------------------------ config
def test_every_field_has_the_reference_default(tmp_path):
    defaults = {f.name: f.default for f in dataclasses.fields(PPOConfig)}
    assert {name: defaults[name] for name in PPO_DEFAULTS} == PPO_DEFAULTS


def test_batch_arithmetic(tmp_path):
    config = make_config(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=4, num_mini_batches=2)
    assert (config.world_size, config.local_batch_size, config.batch_size) == (1, 16, 16)
    assert (config.micro_batch_size, config.mini_batch_size, config.local_mini_batch_size) == (4, 8, 8)
    assert config.run_name.startswith("ppo_config__0__")
    config = make_config(tmp_path, max_steps=-1, total_episodes=50, per_device_train_batch_size=8)
    assert config.num_total_batches == 7  # ceil(50 / 8)
    # A config rebuilt from its own fields (computed sizes included) is accepted.
    PPOConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"stop_token": "eos", "stop_token_id": 3}, "set only one"),
        ({"stop_token": "</s>"}, "stop_token must be 'eos'"),
        ({"kl_estimator": "k2"}, "kl_estimator"),
        ({"whiten_rewards": True}, "local_mini_batch_size >= 8"),
        ({"gradient_accumulation_steps": 3, "num_mini_batches": 2}, "must divide gradient_accumulation_steps"),
        ({"total_episodes": 10}, "total_episodes and max_steps"),
        ({"batch_size": 99}, "leave it unset"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"num_ppo_epochs": 0}, "num_ppo_epochs must be at least 1"),
    ],
)
def test_bad_config_values_raise_naming_the_fix(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **overrides)


def test_bad_trainer_inputs_raise(tmp_path):
    policy = AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2"))
    common = dict(args=make_config(tmp_path), processing_class=None, reward_model=get_tiny_model_path(SEQ_CLS),
                  value_model=get_tiny_model_path(SEQ_CLS), train_dataset=load_test_dataset("standard_prompt_only"))  # fmt: skip
    with pytest.raises(ValueError, match="ref_model is the policy itself"):
        PPOTrainer(model=policy, ref_model=policy, **common)
    with pytest.raises(ValueError, match="no data_collator"):
        PPOTrainer(model=policy, ref_model=None, data_collator=lambda rows: rows, **common)
    with pytest.raises(ValueError, match="'prompt' column"):
        PPOTrainer(
            model=policy,
            ref_model=None,
            **{**common, "train_dataset": load_test_dataset("standard_language_modeling")},
        )
    with pytest.raises(ValueError, match="reward_model and a value_model"):
        PPOTrainer(model=policy, ref_model=None, **{**common, "value_model": None})
    with pytest.raises(ValueError, match="use a PEFT policy"):
        PPOTrainer(model=policy, ref_model=None, **{**common, "args": make_config(tmp_path, ref_adapter_name="ref")})


# ---------------------------------------------------------------------------------------------------- training
def test_training_changes_every_policy_and_value_parameter_and_logs_the_spec_metrics(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    assert trainer.ref_model is not None and not trainer.ref_model.training
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())
    before = snapshot(trainer.model)
    trainer.train()
    unchanged = [name for name, param in trainer.model.named_parameters() if torch.equal(param, before[name])]
    assert unchanged == []
    assert any(name.startswith("value_model.") for name in before)
    history = {key for row in trainer.state.log_history for key in row}
    assert set(SPEC_METRICS) <= history, set(SPEC_METRICS) - history
    # Step 1: policy == reference, so the KL is 0; both rollout steps log the episode count.
    assert logged(trainer, "objective/kl")[0] == pytest.approx(0.0, abs=1e-5)
    assert logged(trainer, "episode") == [4.0]
    assert logged(trainer, "val/ratio")[0] == pytest.approx(1.0, abs=1e-5)  # first pass over a rollout is on-policy


def test_missing_eos_penalty_and_k3(tmp_path):
    # 6-token completions of the random tiny policy almost never end with EOS: each loses the full penalty.
    trainer = make_trainer(tmp_path, reward_model=even_tokens, max_steps=1, missing_eos_penalty=1.0, kl_estimator="k3")
    trainer.train()
    row = trainer.state.log_history[0]
    eos = row["val/num_eos_tokens"]
    assert row["objective/scores"] == pytest.approx(row["rewards/even_tokens/mean"] - (4 - eos) / 4, abs=1e-6)
    assert row["objective/kl"] >= 0.0


def test_peft_trains_only_the_adapters_and_the_value_model(tmp_path):
    from peft import LoraConfig

    trainer = make_trainer(tmp_path, peft_config=LoraConfig(r=4, target_modules="all-linear"), max_steps=2)
    assert trainer.ref_model is None  # the reference is the base model with adapters disabled
    before = snapshot(trainer.model)
    trainer.train()
    for name, param in trainer.model.named_parameters():
        changed = not torch.equal(param, before[name])
        if name.startswith("policy."):
            assert changed == ("lora_" in name), name
        else:
            assert changed, name
    assert logged(trainer, "objective/kl")[0] == pytest.approx(0.0, abs=1e-5)


def test_evaluation_generates_and_logs_the_loss(tmp_path):
    eval_dataset = load_test_dataset("standard_prompt_only", split="test")
    trainer = make_trainer(tmp_path, eval_dataset=eval_dataset, per_device_eval_batch_size=4)
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_objective/scores" in metrics and "eval_loss/value_avg" in metrics


def test_save_model_writes_only_the_policy_and_checkpoints_resume_exactly(tmp_path):
    common = dict(max_steps=4, save_strategy="steps", save_steps=1, seed=3, num_ppo_epochs=2)
    full = make_trainer(tmp_path / "full", **common)
    full.train()
    checkpoint = tmp_path / "full" / "out" / "checkpoint-1"  # mid rollout batch: one PPO epoch still to run
    assert os.path.isfile(checkpoint / "value_model" / "model.safetensors")
    full.save_model(str(tmp_path / "final"))
    assert not os.path.exists(tmp_path / "final" / "value_model")
    policy = AutoModelForCausalLM.from_pretrained(str(tmp_path / "final"))
    torch.testing.assert_close(policy.state_dict()["lm_head.weight"], full.model.policy.state_dict()["lm_head.weight"])
    resumed_dir = tmp_path / "resumed" / "out"
    shutil.copytree(checkpoint, resumed_dir / "checkpoint-1")
    resumed = make_trainer(tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(resumed_dir / "checkpoint-1"))
    losses = {row["step"]: row["loss"] for row in full.state.log_history if "loss" in row}
    resumed_losses = {
        row["step"]: row["loss"] for row in resumed.state.log_history if "loss" in row and row["step"] > 1
    }
    assert resumed_losses == {step: losses[step] for step in (2, 3, 4)}
    assert logged(resumed, "episode")[-1] == logged(full, "episode")[-1] == 8.0


def test_total_episodes_sets_the_number_of_optimizer_steps(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=-1, total_episodes=8, num_ppo_epochs=1)
    assert trainer.args.num_total_batches == 2 and trainer.args.max_steps == 2
    trainer.train()
    assert trainer.state.global_step == 2


# ---------------------------------------------------------------------------------------------------- learning
def test_ppo_raises_a_rule_based_score(tmp_path):
    """The score is a rule (fraction of even token ids), given as a reward function: the reference's PPO takes a
    reward model; this trainer also accepts a callable through the shared reward scorer."""
    trainer = make_trainer(
        tmp_path, reward_model=even_tokens, max_steps=36, per_device_train_batch_size=8, num_ppo_epochs=2,
        learning_rate=3e-2, response_length=8, kl_coef=0.01,
    )  # fmt: skip
    trainer.train()
    scores = logged(trainer, "objective/scores")
    assert len(scores) == 18
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    print(f"PPO learning test: objective/scores {first:.3f} (first 3 rollouts) -> {last:.3f} (last 3)")
    assert last > first + 0.2, scores


# --------------------------------------------------------------------------------------------------------- CLI
def test_trl_ppo_cli_trains_from_a_yaml_config(tmp_path):
    import subprocess
    import sys

    from trl.testing import get_dataset_path

    config = tmp_path / "ppo.yaml"
    config.write_text(
        f"model_name_or_path: {get_tiny_model_path('qwen2')}\nreward_model_path: {get_tiny_model_path(SEQ_CLS)}\n"
        f"dataset_name: {get_dataset_path()}\ndataset_config: standard_prompt_only\noutput_dir: {tmp_path / 'out'}\n"
        "max_steps: 1\nper_device_train_batch_size: 2\nnum_ppo_epochs: 1\nresponse_length: 3\nreport_to: none\n"
        "num_sample_generations: 0\ngradient_checkpointing: false\nsave_strategy: 'no'\n"
    )
    env = {**os.environ, "TRL_QUIET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "trl.cli", "ppo", "--config", str(config), "--kl_estimator", "k3"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out" / "value_model").exists()
