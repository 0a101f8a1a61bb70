"""RLOOConfig / RLOOTrainer: configuration contract, leave-one-out advantages with the KL in the reward, training."""

import dataclasses
import shutil

import pytest
import torch

from trl.testing import get_dataset_path, get_tiny_model_path, load_test_dataset
from trl.trainer.rloo_config import RLOOConfig
from trl.trainer.rloo_trainer import RLOOTrainer
from trl.trainer.rollout_engine import RolloutBatch


RLOO_DEFAULTS = {
    "model_init_kwargs": None, "trust_remote_code": False, "router_aux_loss_coef": None, "disable_dropout": False,
    "num_generations": 2, "num_generations_eval": None, "max_completion_length": 512,
    "ds3_gather_for_generation": True, "shuffle_dataset": True, "pad_to_multiple_of": "auto",
    "generation_batch_size": None, "steps_per_generation": None, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
    "min_p": None, "generation_kwargs": None, "chat_template_kwargs": None, "repetition_penalty": 1.0,
    "cache_implementation": None, "use_vllm": False, "vllm_mode": "colocate", "vllm_model_impl": "vllm",
    "vllm_enable_sleep_mode": False, "vllm_structured_outputs_regex": None, "vllm_server_base_url": None,
    "vllm_server_host": "0.0.0.0", "vllm_server_port": 8000, "vllm_server_timeout": 240.0, "vllm_group_port": 51216,
    "vllm_gpu_memory_utilization": 0.3, "vllm_max_model_length": None, "vllm_tensor_parallel_size": 1,
    "beta": 0.05, "num_iterations": 1, "epsilon": 0.2, "epsilon_high": None, "reward_weights": None,
    "normalize_advantages": False, "reward_clip_range": None, "mask_truncated_completions": False,
    "sync_ref_model": False, "ref_model_mixup_alpha": 0.6, "ref_model_sync_steps": 512, "log_completions": False,
    "log_multimodal": True, "num_completions_to_print": None, "log_unique_prompts": False,
    "use_transformers_continuous_batching": False, "transformers_continuous_batching_config": None,
    "use_transformers_paged": False,
}  # fmt: skip


def even_tokens(completion_ids, **kwargs):
    return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]


def make_trainer(tmp_path, reward_funcs=even_tokens, dataset="standard_prompt_only", **overrides) -> RLOOTrainer:
    kwargs = {key: overrides.pop(key) for key in ("peft_config", "eval_dataset") if key in overrides}
    values = dict(
        output_dir=str(tmp_path / "out"), report_to="none", max_steps=1, per_device_train_batch_size=4,
        num_generations=4, max_completion_length=8, logging_steps=1, save_strategy="no", learning_rate=1e-2,
        seed=0, gradient_checkpointing=False,
    )  # fmt: skip
    values.update(overrides)
    return RLOOTrainer(
        get_tiny_model_path("qwen2"), reward_funcs, RLOOConfig(**values), load_test_dataset(dataset), **kwargs
    )


def logged(trainer, key):
    return [row[key] for row in trainer.state.log_history if key in row]


# ------------------------------------------------------------------------------------------------------ config
def test_every_field_has_the_reference_default():
    defaults = {f.name: f.default for f in dataclasses.fields(RLOOConfig)}
    assert {name: defaults[name] for name in RLOO_DEFAULTS} == RLOO_DEFAULTS
    config = RLOOConfig(output_dir="out")
    assert config.learning_rate == 1e-6 and config.remove_unused_columns is False and config.num_generations_eval == 2


def test_legacy_names_map_onto_the_new_fields():
    with pytest.warns(FutureWarning, match="rloo_k"):
        config = RLOOConfig(output_dir="out", rloo_k=4, kl_coef=0.1, cliprange=0.3, num_ppo_epochs=2)
    assert (config.num_generations, config.beta, config.epsilon, config.num_iterations) == (4, 0.1, 0.3, 2)
    with pytest.warns(FutureWarning, match="total_episodes"):
        assert RLOOConfig(output_dir="out", total_episodes=100, gradient_accumulation_steps=4).max_steps == 25
    with pytest.raises(ValueError, match="missing_eos_penalty.*reward function"):
        RLOOConfig(output_dir="out", missing_eos_penalty=1.0)
    with pytest.raises(ValueError, match="low < high"):
        RLOOConfig(output_dir="out", reward_clip_range=(1.0, -1.0))


def test_reward_clip_range_from_the_command_line():
    from trl.scripts.rloo import make_parser
    from trl.scripts.utils import parse_script_args

    for value in ("-1,1", "[-1, 1]"):
        _, config, _, _ = parse_script_args(make_parser(), ["--output_dir", "out", f"--reward_clip_range={value}"])
        assert config.reward_clip_range == (-1.0, 1.0)


# -------------------------------------------------------------------------------------------------- advantages
def rollout_batch(trainer, rewards, old=None, ref=None):
    """A hand-made rollout of `len(rewards)` one-token completions (one group of 4) and its rewards `[B, 1]`."""
    size = len(rewards)
    tensors = {"completion_mask": torch.ones(size, 1, dtype=torch.long)}
    if old is not None:
        tensors["old_logps"], tensors["ref_logps"] = torch.tensor(old).view(-1, 1), torch.tensor(ref).view(-1, 1)
    rewards_B_F = torch.tensor(rewards, dtype=torch.float32).view(-1, 1)
    return RolloutBatch(tensors, rewards_B_F, 4, [""] * size, [""] * size, [False] * size), rewards_B_F


def test_leave_one_out_advantages_with_the_kl_in_the_reward(tmp_path):
    trainer = make_trainer(tmp_path, beta=0.0)
    batch, rewards = rollout_batch(trainer, [1.0, 0.0, 0.0, 0.0])
    advantages = trainer._compute_advantages(rewards, batch, "train")
    torch.testing.assert_close(advantages, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    assert "advantages" not in batch.tensors  # returned, never written into the batch
    # β = 0.5 and a sequence KL of [1, 0, 0, 0]: rewards [−0.5, 0, 0, 0], so A = [−0.5, 1/6, 1/6, 1/6].
    trainer.args.beta = 0.5
    batch, rewards = rollout_batch(trainer, [0.0] * 4, old=[-1.0, -2.0, -2.0, -2.0], ref=[-2.0, -2.0, -2.0, -2.0])
    advantages = trainer._compute_advantages(rewards, batch, "train")
    torch.testing.assert_close(advantages, torch.tensor([-0.5, 1 / 6, 1 / 6, 1 / 6]))
    assert trainer._metrics["train"]["kl"][-1] == pytest.approx(0.25)


def test_clipped_and_normalized_rewards(tmp_path):
    trainer = make_trainer(tmp_path, beta=0.0, reward_clip_range=(-1.0, 1.0), normalize_advantages=True)
    batch, rewards = rollout_batch(trainer, [5.0, -1.0, float("nan"), -1.0])
    advantages = trainer._compute_advantages(rewards, batch, "train")
    # Clipped to [1, −1, nan, −1]; baselines over the scorable siblings: A = [2, −1, 0, −1], then normalised over
    # the three scored rows (mean 0, std √3).
    expected = torch.tensor([2.0, -1.0, 0.0, -1.0]) / (3**0.5 + 1e-4)
    expected[2] = 0.0
    torch.testing.assert_close(advantages, expected)
    assert trainer._metrics["train"]["reward"][-1] == pytest.approx(-1 / 3)


def test_on_policy_loss_is_reinforce_with_the_sequence_log_prob(tmp_path):
    trainer = make_trainer(tmp_path, beta=0.0)
    trainer.model.train()
    tokenizer = trainer.processing_class
    prompt = tokenizer(["What is 2 plus 2?"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    inputs = {
        "prompt_ids": prompt.repeat(2, 1), "prompt_mask": torch.ones(2, prompt.shape[1], dtype=torch.long),
        "completion_ids": torch.tensor([[11, 12, 13], [21, 22, 0]]), "completion_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "advantages": torch.tensor([1.0, -0.5]), "num_items_in_batch": 5.0,
    }  # fmt: skip
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(trainer.model, inputs)
    # ρ = 1 exactly: the loss is mean_i(−A_i) = −0.25, with the gradient of −mean_i(A_i · Σ_t log π(y_it)).
    assert loss.item() == pytest.approx(-0.25)
    loss.backward()
    grads = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.model.zero_grad()
    logps, _, _ = trainer._completion_logps(trainer.model, inputs)
    (-(inputs["advantages"] * logps.sum(dim=1)).mean()).backward()
    for grad, param in zip(grads, trainer.model.parameters()):
        torch.testing.assert_close(grad, param.grad, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- training
def test_default_beta_loads_a_reference_and_logs_kl(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    assert trainer.ref_model is not None
    trainer.train()
    kl = logged(trainer, "kl")
    # k1 sequence KL: 0 while the policy is the reference, then non-zero (of either sign).
    assert kl[0] == pytest.approx(0.0, abs=1e-5) and kl[1] != 0
    for key in ("reward", "reward_std", "frac_reward_zero_std", "entropy", "clip_ratio/region_mean", "timing/train"):
        assert key in trainer.state.log_history[0], key


def test_beta_zero_has_no_reference_and_no_old_logprob_pass(tmp_path):
    trainer = make_trainer(tmp_path, beta=0.0)
    assert trainer.ref_model is None
    trainer.train()
    assert all("old_logps" not in part and "ref_logps" not in part for part in trainer._buffer.slices)


def test_mean_reward_rises_on_a_rule_reward(tmp_path):
    # 20 steps: at 12 the outcome depended on the sampled completions (some seeds had not started to climb).
    trainer = make_trainer(tmp_path, beta=0.0, max_steps=20, per_device_train_batch_size=8, learning_rate=0.1)
    trainer.train()
    rewards = logged(trainer, "reward")
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards


def test_peft_with_kl_uses_the_base_model(tmp_path):
    from peft import LoraConfig

    trainer = make_trainer(tmp_path, max_steps=2, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert trainer.ref_model is None
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert logged(trainer, "kl")[1] != 0
    for name, param in trainer.model.named_parameters():
        assert torch.equal(before[name], param) != ("lora_" in name), name


def test_evaluation_and_resume(tmp_path):
    eval_dataset = load_test_dataset("standard_prompt_only", split="test")
    common = dict(
        max_steps=3, save_strategy="steps", save_steps=1, num_iterations=2, num_generations=2,
        eval_dataset=eval_dataset, eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=4,
    )  # fmt: skip
    full = make_trainer(tmp_path / "full", **dict(common))
    full.train()
    assert "eval_loss" in full.state.log_history[-2] and "eval_kl" in full.state.log_history[-2]
    shutil.copytree(tmp_path / "full" / "out" / "checkpoint-1", tmp_path / "resumed" / "out" / "checkpoint-1")
    resumed = make_trainer(tmp_path / "resumed", **dict(common))
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "out" / "checkpoint-1"))
    losses = [row["loss"] for row in full.state.log_history if "loss" in row and row["step"] > 1]
    assert [row["loss"] for row in resumed.state.log_history if "loss" in row and row["step"] > 1] == losses


def test_deprecated_trainer_arguments(tmp_path):
    args = RLOOConfig(output_dir=str(tmp_path), report_to="none", max_steps=1, per_device_train_batch_size=2)
    with pytest.warns(FutureWarning, match="`policy` is deprecated"):
        trainer = RLOOTrainer(
            policy=get_tiny_model_path("qwen2"), reward_model=even_tokens, config=args,
            train_dataset=load_test_dataset("standard_prompt_only"),
        )  # fmt: skip
    assert trainer.reward_scorer.names == ["even_tokens"]
    with pytest.raises(ValueError, match="pass only `model`"):
        RLOOTrainer(get_tiny_model_path("qwen2"), even_tokens, args, policy=get_tiny_model_path("qwen2"))
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['reward_fn'\]"):
        RLOOTrainer(get_tiny_model_path("qwen2"), args=args, reward_fn=even_tokens)


def test_grpo_and_rloo_share_one_init():
    from trl import GRPOTrainer
    from trl.trainer.rollout import OnlineTrainer

    assert "__init__" not in vars(RLOOTrainer) and "__init__" not in vars(GRPOTrainer)
    assert RLOOTrainer.__init__ is GRPOTrainer.__init__ is OnlineTrainer.__init__
    # Only RLOO takes the trl <= 0.21 names.
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['policy'\]"):
        GRPOTrainer(get_tiny_model_path("qwen2"), even_tokens, policy=get_tiny_model_path("qwen2"))


def test_cli_script(tmp_path):
    from trl.scripts.rloo import main, make_parser
    from trl.scripts.utils import parse_script_args

    argv = [
        "--model_name_or_path", get_tiny_model_path("qwen2"), "--dataset_name", get_dataset_path(),
        "--dataset_config", "conversational_prompt_only", "--reward_funcs", "think_format_reward",
        "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "4",
        "--max_steps", "1", "--report_to", "none", "--save_strategy", "no", "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    main(*parse_script_args(make_parser(), argv))
    assert (tmp_path / "out" / "model.safetensors").exists()
