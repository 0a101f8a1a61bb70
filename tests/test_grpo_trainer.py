"""GRPOConfig / GRPOTrainer: configuration contract, rollout behaviour and training on the tiny model."""

import dataclasses
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerState

from trl.testing import get_dataset_path, get_tiny_model_path, load_test_dataset
from trl.trainer import completions_callback
from trl.trainer.callbacks import LogCompletionsCallback
from trl.trainer.grpo_config import GRPOConfig
from trl.trainer.grpo_trainer import GRPOTrainer

from .testing_utils import cpu_generation_server


GRPO_DEFAULTS = {
    "model_init_kwargs": None, "trust_remote_code": False, "router_aux_loss_coef": None, "disable_dropout": False,
    "cast_lm_head_to_fp32": False, "num_generations": 8, "num_generations_eval": None, "max_completion_length": 512,
    "ds3_gather_for_generation": True, "shuffle_dataset": True, "pad_to_multiple_of": "auto",
    "generation_batch_size": None, "steps_per_generation": None, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
    "min_p": None, "generation_kwargs": None, "chat_template_kwargs": None, "repetition_penalty": 1.0,
    "cache_implementation": None, "use_vllm": False, "vllm_mode": "colocate", "vllm_model_impl": "vllm",
    "vllm_enable_sleep_mode": False, "vllm_structured_outputs_regex": None, "vllm_server_base_url": None,
    "vllm_server_host": "0.0.0.0", "vllm_server_port": 8000, "vllm_server_timeout": 240.0, "vllm_group_port": 51216,
    "vllm_gpu_memory_utilization": 0.3, "vllm_max_model_length": None, "vllm_tensor_parallel_size": 1, "beta": 0.0,
    "num_iterations": 1, "epsilon": 0.2, "delta": None, "epsilon_high": None, "sapo_temperature_neg": 1.05,
    "sapo_temperature_pos": 1.0, "vespo_k_pos": 2.0, "vespo_lambda_pos": 3.0, "vespo_k_neg": 3.0,
    "vespo_lambda_neg": 2.0, "importance_sampling_level": "token", "reward_weights": None,
    "multi_objective_aggregation": "sum_then_normalize", "scale_rewards": "group", "loss_type": "dapo",
    "mask_truncated_completions": False, "sync_ref_model": False, "ref_model_mixup_alpha": 0.6,
    "ref_model_sync_steps": 512, "top_entropy_quantile": 1.0, "entropy_coef": 0.0, "use_adaptive_entropy": False,
    "entropy_coef_min": 0.0, "entropy_coef_max": 1.0, "entropy_coef_delta": 0.005, "entropy_target": 0.2,
    "max_tool_calling_iterations": None, "vllm_importance_sampling_correction": True,
    "vllm_importance_sampling_mode": "sequence_mask", "vllm_importance_sampling_clip_max": 3.0,
    "vllm_importance_sampling_clip_min": None, "off_policy_mask_threshold": None, "use_bias_correction_kl": True,
    "log_completions": False, "log_multimodal": True, "num_completions_to_print": None, "log_unique_prompts": False,
    "log_completions_hub_repo": None, "use_transformers_continuous_batching": False,
    "transformers_continuous_batching_config": None, "use_transformers_paged": False,
    "vllm_importance_sampling_cap": None,
}  # fmt: skip


def even_tokens(completion_ids, **kwargs):
    """Fraction of even token ids: a per-token rule a tiny random model can learn in a few steps."""
    return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]


def make_config(tmp_path, **overrides) -> GRPOConfig:
    values = dict(
        output_dir=str(tmp_path / "out"), report_to="none", max_steps=1, per_device_train_batch_size=4,
        num_generations=4, max_completion_length=8, logging_steps=1, save_strategy="no", learning_rate=1e-2,
        seed=0, gradient_checkpointing=False,
    )  # fmt: skip
    values.update(overrides)
    return GRPOConfig(**values)


def make_trainer(tmp_path, reward_funcs=even_tokens, dataset="standard_prompt_only", **overrides) -> GRPOTrainer:
    kwargs = {key: overrides.pop(key) for key in ("peft_config", "eval_dataset") if key in overrides}
    train_dataset = load_test_dataset(dataset) if isinstance(dataset, str) else dataset
    args = make_config(tmp_path, **overrides)
    return GRPOTrainer(
        get_tiny_model_path("qwen2"), reward_funcs=reward_funcs, args=args, train_dataset=train_dataset, **kwargs
    )


def logged(trainer, key):
    return [row[key] for row in trainer.state.log_history if key in row]


# ------------------------------------------------------------------------------------------------------ config
def test_every_field_has_the_reference_default():
    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    assert {name: defaults[name] for name in GRPO_DEFAULTS} == GRPO_DEFAULTS
    config = GRPOConfig(output_dir="out", report_to="none")
    assert config.learning_rate == 1e-6 and config.remove_unused_columns is False
    assert config.logging_steps == 10 and config.gradient_checkpointing is True
    # One generation per optimizer step by default: steps_per_generation = gradient_accumulation_steps.
    assert config.steps_per_generation == 1 and config.generation_batch_size == 8 and config.num_generations_eval == 8


def test_generation_batch_resolution_and_validation():
    config = GRPOConfig(
        output_dir="out", per_device_train_batch_size=2, gradient_accumulation_steps=4, num_generations=4
    )
    assert (config.steps_per_generation, config.generation_batch_size) == (4, 8)
    config = GRPOConfig(output_dir="out", per_device_train_batch_size=2, generation_batch_size=12, num_generations=3)
    assert config.steps_per_generation == 6
    with pytest.raises(ValueError, match="set only one"):
        GRPOConfig(output_dir="out", generation_batch_size=16, steps_per_generation=2)
    with pytest.raises(ValueError, match="multiple of num_generations"):
        GRPOConfig(output_dir="out", per_device_train_batch_size=3, num_generations=2)
    with pytest.raises(ValueError, match="multiple of the global batch"):
        GRPOConfig(output_dir="out", per_device_train_batch_size=4, generation_batch_size=10, num_generations=2)
    with pytest.raises(ValueError, match="at least 2"):
        GRPOConfig(output_dir="out", num_generations=1, per_device_train_batch_size=1)


def test_config_validation_and_aliases():
    assert GRPOConfig(output_dir="out", scale_rewards=True).scale_rewards == "group"
    assert GRPOConfig(output_dir="out", scale_rewards="false").scale_rewards == "none"
    with pytest.raises(ValueError, match="importance_sampling_level='token'"):
        GRPOConfig(output_dir="out", loss_type="vespo", importance_sampling_level="sequence")
    with pytest.raises(ValueError, match="Unknown loss_type"):
        GRPOConfig(output_dir="out", loss_type="ppo")
    with pytest.raises(ValueError, match="must be below"):
        GRPOConfig(output_dir="out", vllm_importance_sampling_clip_min=2.0, vllm_importance_sampling_clip_max=1.0)
    with pytest.raises(ValueError, match="truncates the ratio"):
        GRPOConfig(
            output_dir="out", vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_max=None
        )
    with pytest.raises(ValueError, match="beta=0 uses none"):
        GRPOConfig(output_dir="out", sync_ref_model=True)
    with pytest.raises(ValueError, match="set use_vllm=True"):
        GRPOConfig(output_dir="out", vllm_structured_outputs_regex="a+")
    with pytest.raises(ValueError, match="auto_find_batch_size"):
        GRPOConfig(output_dir="out", auto_find_batch_size=True)
    with pytest.warns(FutureWarning, match="vllm_importance_sampling_cap"):
        assert GRPOConfig(output_dir="out", vllm_importance_sampling_cap=2.0).vllm_importance_sampling_clip_max == 2.0
    with pytest.warns(FutureWarning, match="vllm_guided_decoding_regex"):
        config = GRPOConfig(output_dir="out", vllm_guided_decoding_regex="a+", use_vllm=True)
    assert config.vllm_structured_outputs_regex == "a+"
    with pytest.warns(UserWarning, match="GSPO uses loss_type='grpo'"):
        GRPOConfig(output_dir="out", importance_sampling_level="sequence")


# ------------------------------------------------------------------------------------------------- reference
def test_beta_zero_loads_no_reference_model(tmp_path):
    trainer = make_trainer(tmp_path)
    assert trainer.ref_model is None
    trainer.train()
    assert "kl" not in trainer.state.log_history[0]


def test_beta_loads_a_frozen_reference_and_logs_kl(tmp_path):
    trainer = make_trainer(tmp_path, beta=0.1, max_steps=2)
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    before = {n: p.clone() for n, p in trainer.ref_model.named_parameters()}
    trainer.train()
    kl = logged(trainer, "kl")
    assert kl[0] == pytest.approx(0.0, abs=1e-6), "the policy equals the reference at the first step"
    assert kl[1] > 0
    assert all(torch.equal(before[n], p) for n, p in trainer.ref_model.named_parameters())


def test_reference_stays_in_eval_mode_with_dropout_off_while_the_policy_trains(tmp_path):
    trainer = make_trainer(tmp_path, beta=0.1, max_steps=1)
    trainer.train()
    assert trainer.model.training is not trainer.ref_model.training
    assert not any(module.training for module in trainer.ref_model.modules())
    assert all(module.p == 0.0 for module in trainer.ref_model.modules() if isinstance(module, torch.nn.Dropout))


def test_sync_ref_model_mixes_the_policy_into_the_reference(tmp_path):
    trainer = make_trainer(tmp_path, beta=0.1, sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=1.0)
    trainer.train()
    for policy, reference in zip(trainer.model.parameters(), trainer.ref_model.parameters()):
        assert torch.equal(policy, reference)


def test_peft_reference_is_the_base_model(tmp_path):
    from peft import LoraConfig

    trainer = make_trainer(
        tmp_path, beta=0.1, max_steps=2, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    assert trainer.ref_model is None
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert logged(trainer, "kl")[1] > 0
    for name, param in trainer.model.named_parameters():
        assert torch.equal(before[name], param) != ("lora_" in name), name


# ---------------------------------------------------------------------------------------------------- training
def test_mean_reward_rises_on_a_rule_reward(tmp_path):
    # 20 steps: at 10 the outcome depended on the sampled completions (some seeds had not started to climb).
    trainer = make_trainer(tmp_path, max_steps=20, per_device_train_batch_size=8, learning_rate=0.1)
    trainer.train()
    rewards = logged(trainer, "reward")
    assert len(rewards) == 20
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2, rewards
    assert logged(trainer, "entropy")[-1] < logged(trainer, "entropy")[0]


@pytest.mark.parametrize(
    "loss_type, extra",
    [
        ("grpo", {}),
        ("bnpo", {}),
        ("dr_grpo", {}),
        ("dapo", {"epsilon_high": 0.28, "delta": 1.5}),
        ("cispo", {"epsilon_high": 5.0}),
        ("sapo", {}),
        ("luspo", {"importance_sampling_level": "sequence"}),
        ("vespo", {}),
        ("grpo", {"importance_sampling_level": "sequence", "top_entropy_quantile": 0.5, "entropy_coef": 0.01}),
    ],
)
def test_every_loss_type_trains(tmp_path, loss_type, extra):
    trainer = make_trainer(tmp_path, loss_type=loss_type, **extra)
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    row = trainer.state.log_history[0]
    assert torch.isfinite(torch.tensor(row["loss"]))
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    for key in ("reward", "reward_std", "frac_reward_zero_std", "entropy", "num_tokens", "completions/mean_length"):
        assert key in row, key


def test_metrics_and_timings_are_logged(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.train()
    row = trainer.state.log_history[0]
    expected = [
        "num_tokens", "completions/mean_length", "completions/min_length", "completions/max_length",
        "completions/mean_terminated_length", "completions/min_terminated_length",
        "completions/max_terminated_length", "completions/clipped_ratio", "rewards/even_tokens/mean",
        "rewards/even_tokens/std", "reward", "reward_std", "frac_reward_zero_std", "entropy", "clip_ratio/low_mean",
        "clip_ratio/low_min", "clip_ratio/high_mean", "clip_ratio/high_max", "clip_ratio/region_mean",
        "timing/generate", "timing/score", "timing/reference", "timing/train", "timing/weight_sync",
    ]  # fmt: skip
    assert [key for key in expected if key not in row] == []
    assert row["timing/generate"] > 0 and row["timing/train"] > 0
    # 4 prompts of the same group: prompt tokens + completion tokens.
    assert row["num_tokens"] > 4 * row["completions/mean_length"]
    assert row["reward"] == pytest.approx(row["rewards/even_tokens/mean"])


def test_gradient_accumulation_equals_a_large_batch(tmp_path):
    """Per-device 4 × accumulation 2 gives the same update as per-device 8 (dapo normalises by the step's tokens)."""
    common = dict(max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=0.0)
    large = make_trainer(tmp_path / "large", per_device_train_batch_size=8, **common)
    split = make_trainer(tmp_path / "split", per_device_train_batch_size=4, gradient_accumulation_steps=2, **common)
    before = {n: p.clone() for n, p in large.model.named_parameters()}
    large.train()
    split.train()
    changed = 0
    for (name, a), b in zip(large.model.named_parameters(), split.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
        changed += not torch.equal(a, before[name])
    assert changed > 0


def test_num_iterations_reuses_the_stored_old_logps(tmp_path, monkeypatch):
    import trl.trainer.grpo_trainer as module

    calls = []

    def spy(logps, old_logps, *args, **kwargs):
        calls.append((logps.detach().clone(), old_logps))
        return real(logps, old_logps, *args, **kwargs)

    real = module.policy_loss_from_options
    monkeypatch.setattr(module, "policy_loss_from_options", spy)
    trainer = make_trainer(tmp_path, num_iterations=2, max_steps=2, learning_rate=0.05)
    assert not trainer._on_policy
    trainer.train()
    (first, old_first), (second, old_second) = calls
    assert old_first is old_second, "both passes must use the log-probs stored at generation time"
    torch.testing.assert_close(old_first, first, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(second, old_second, atol=1e-4), "the second pass sees the updated policy"


def test_on_policy_training_runs_no_old_logprob_pass(tmp_path, monkeypatch):
    import trl.trainer.grpo_trainer as module

    olds = []
    real = module.policy_loss_from_options
    monkeypatch.setattr(
        module, "policy_loss_from_options", lambda logps, old, *a, **k: olds.append(old) or real(logps, old, *a, **k)
    )
    trainer = make_trainer(tmp_path, steps_per_generation=2, gradient_accumulation_steps=2, max_steps=1)
    assert trainer._on_policy
    trainer.train()
    assert olds == [None, None]
    assert all("old_logps" not in part for part in trainer._buffer.slices)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    # A generation batch feeds 3 steps: the checkpoint at step 2 holds a half-used buffer.
    common = dict(num_iterations=3, max_steps=5, save_strategy="steps", save_steps=2, num_generations=2, seed=7)
    full = make_trainer(tmp_path / "full", **common)
    full.train()
    resumed_dir = tmp_path / "resumed" / "out"
    shutil.copytree(tmp_path / "full" / "out" / "checkpoint-2", resumed_dir / "checkpoint-2")
    resumed = make_trainer(tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(resumed_dir / "checkpoint-2"))
    losses = {row["step"]: row["loss"] for row in full.state.log_history if "loss" in row}
    resumed_losses = {
        row["step"]: row["loss"] for row in resumed.state.log_history if "loss" in row and row["step"] > 2
    }
    assert resumed_losses == {step: losses[step] for step in (3, 4, 5)}
    assert len(set(losses.values())) > 1


# ----------------------------------------------------------------------------------------------------- rewards
def test_weighted_reward_functions_with_none(tmp_path):
    def always_one(completions, **kwargs):
        return [1.0] * len(completions)

    async def every_other(completions, **kwargs):
        return [2.0 if i % 2 == 0 else None for i in range(len(completions))]

    trainer = make_trainer(tmp_path, reward_funcs=[always_one, every_other], reward_weights=[1.0, 0.5])
    trainer.train()
    row = trainer.state.log_history[0]
    # Rows: 1 + 0.5·2 = 2 and 1 (None ignored), alternately.
    assert row["reward"] == pytest.approx(1.5)
    assert row["rewards/every_other/mean"] == pytest.approx(2.0) and row["rewards/every_other/std"] == 0.0
    assert row["rewards/always_one/mean"] == 1.0


def test_all_none_rewards_warn_and_give_zero_advantages(tmp_path):
    trainer = make_trainer(tmp_path, reward_funcs=lambda completions, **kw: [None] * len(completions))
    with pytest.warns(UserWarning, match="All reward functions returned None"):
        trainer.train()
    assert trainer.state.log_history[0]["loss"] == 0.0


def test_reward_functions_receive_columns_and_trainer_state(tmp_path):
    seen = []

    def check(prompts, completions, completion_ids, trainer_state, answer, log_extra, **kwargs):
        seen.append((len(prompts), answer, trainer_state, sorted(kwargs)))
        log_extra("answer_seen", answer)
        return [float(a == 2) for a in answer]

    dataset = load_test_dataset("conversational_prompt_only").map(lambda _, i: {"answer": i % 3}, with_indices=True)
    trainer = make_trainer(tmp_path, reward_funcs=check, dataset=dataset, log_completions=True)
    trainer.train()
    count, answers, state, others = seen[0]
    assert count == 4 and len(set(answers)) == 1, "the 4 completions of one prompt share its column value"
    assert isinstance(state, TrainerState)
    assert "log_metric" in others and "prompt" not in others


def test_log_completions_prints_a_table(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRL_QUIET", raising=False)
    trainer = make_trainer(tmp_path, log_completions=True, num_completions_to_print=2)
    trainer.train()
    output = capsys.readouterr().out
    assert "Step 1" in output and "even_tokens" in output and "advantage" in output


def test_log_completions_callback_writes_the_recorded_rollout(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRL_QUIET", raising=False)
    written = []
    monkeypatch.setattr(completions_callback, "write_completions_table", lambda table, *a: written.append(table))
    # log_completions=False, but the user adds the public callback: the trainer records for it.
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.add_callback(LogCompletionsCallback(trainer))
    trainer.train()
    assert [type(cb) for cb in trainer.callback_handler.callbacks].count(LogCompletionsCallback) == 1
    assert [table["step"][0] for table in written] == [0, 1]
    table = written[-1]
    assert list(table)[:5] == ["step", "prompt", "completion", "even_tokens", "advantage"]
    assert len(table["prompt"]) == 4 and len(set(table["prompt"])) == 1
    assert all(0.0 <= reward <= 1.0 for reward in table["even_tokens"])
    assert sum(table["even_tokens"]) / 4 == pytest.approx(logged(trainer, "reward")[-1])
    assert sum(table["advantage"]) == pytest.approx(0.0, abs=1e-5)  # group-normalised
    assert trainer.recorded_completions == {}  # cleared once logged


def test_reward_model_given_by_path(tmp_path):
    path = get_tiny_model_path("qwen2-seq-cls")
    trainer = make_trainer(tmp_path, reward_funcs=[path, even_tokens], dataset="conversational_prompt_only")
    trainer.train()
    name = path.rstrip("/").split("/")[-1]
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0][f"rewards/{name}/mean"]))


def test_mask_truncated_completions(tmp_path):
    eos = AutoTokenizer.from_pretrained(get_tiny_model_path("qwen2")).eos_token_id
    trainer = make_trainer(
        tmp_path,
        mask_truncated_completions=True,
        max_completion_length=4,
        generation_kwargs={"suppress_tokens": [eos]},
    )
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    row = trainer.state.log_history[0]
    assert row["completions/clipped_ratio"] == 1.0 and row["completions/mean_length"] == 4
    assert row["loss"] == 0.0, "every completion is truncated, so none is trained on"
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


# ------------------------------------------------------------------------------------------ eval, errors, CLI
def test_evaluation_generates_and_logs_the_loss(tmp_path):
    eval_dataset = load_test_dataset("standard_prompt_only", split="test")
    trainer = make_trainer(
        tmp_path, eval_dataset=eval_dataset, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=4,
        num_generations_eval=2,
    )  # fmt: skip
    trainer.train()
    row = next(row for row in trainer.state.log_history if "eval_loss" in row)
    assert "eval_reward" in row and "eval_completions/mean_length" in row and "eval_entropy" in row
    assert "eval_num_tokens" not in row


def test_unsupported_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="'prompt' column"):
        make_trainer(tmp_path, dataset="standard_language_modeling")
    with pytest.raises(ValueError, match="cannot be described to the model"):  # agent training: tests/test_agent.py
        GRPOTrainer(get_tiny_model_path("qwen2"), even_tokens, make_config(tmp_path), tools=[print])
    with pytest.raises(ValueError, match="needs reward_funcs"):
        GRPOTrainer(get_tiny_model_path("qwen2"), None, make_config(tmp_path))
    with pytest.raises(ValueError, match="set max_steps"):  # streaming sets train with max_steps
        make_trainer(tmp_path, dataset=load_test_dataset("standard_prompt_only").to_iterable_dataset(), max_steps=-1)


def test_cli_script_trains_with_named_and_model_rewards(tmp_path):
    from trl.scripts.grpo import main, make_parser, resolve_reward_func
    from trl.scripts.utils import parse_script_args

    assert resolve_reward_func("tests.test_grpo_trainer.even_tokens") is even_tokens
    with pytest.raises(ValueError, match="Unknown reward function"):
        resolve_reward_func("no_such_reward")
    argv = [
        "--model_name_or_path", get_tiny_model_path("qwen2"), "--dataset_name", get_dataset_path(),
        "--dataset_config", "standard_prompt_only", "--reward_funcs", "think_format_reward",
        "tests.test_grpo_trainer.even_tokens", "--reward_model_name_or_path", get_tiny_model_path("qwen2-seq-cls"),
        "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "4",
        "--max_steps", "1", "--report_to", "none", "--save_strategy", "no", "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    main(*parse_script_args(make_parser(), argv))
    assert (tmp_path / "out" / "model.safetensors").exists()


# ----------------------------------------------------------------------------------------- client / server
def test_an_explicit_reference_model_is_used_and_needs_beta(tmp_path):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2"))
    args = make_config(tmp_path, beta=0.1)
    trainer = GRPOTrainer(get_tiny_model_path("qwen2"), even_tokens, args, load_test_dataset("standard_prompt_only"),
                          ref_model=reference)  # fmt: skip
    assert trainer.ref_model is reference and not any(p.requires_grad for p in reference.parameters())
    with pytest.raises(ValueError, match="beta=0.0 uses no reference"):
        GRPOTrainer(get_tiny_model_path("qwen2"), even_tokens, make_config(tmp_path), ref_model=reference)


def test_generation_kwargs_select_the_decode_loop(tmp_path):
    # No config field names the transformers backend's decode loop: "auto" takes the lean loop for a supported model
    # unless `generation_kwargs` holds a key beyond `seed` / `cache_implementation`, which needs `model.generate`.
    lean = make_trainer(tmp_path / "lean", generation_kwargs={"seed": 3})
    lean.train()
    assert lean.generation_backend.last_decode_loop == "lean"
    generate = make_trainer(tmp_path / "generate", generation_kwargs={"use_cache": True})
    generate.train()
    assert generate.generation_backend.last_decode_loop == "generate"


def test_server_generation_with_weight_sync(tmp_path):
    """Generation on a `trl vllm-serve --backend transformers` server; the trained weights reach the server."""
    from trl.generation.vllm_client import VLLMClient

    with cpu_generation_server(get_tiny_model_path("qwen2"), tmp_path) as port:
        trainer = make_trainer(
            tmp_path, use_vllm=True, vllm_mode="server", vllm_server_host="127.0.0.1", vllm_server_port=port,
            vllm_server_timeout=60, max_steps=2, learning_rate=0.1,
        )  # fmt: skip
        trainer.train()
        row = trainer.state.log_history[1]
        assert "sampling/importance_sampling_ratio/mean" in row and row["timing/weight_sync"] > 0
        trainer.generation_backend.sync_weights(trainer.model)
        sequence = [[10, 20, 30, 40, 50]]
        client = VLLMClient(host="127.0.0.1", server_port=port)
        served = torch.tensor(client.get_sequence_logprobs(sequence, [2], top_logprobs=1)["actual_logprobs"])
        with torch.no_grad():
            logits = trainer.model(torch.tensor(sequence)).logits.float()
        local = torch.log_softmax(logits, -1)[0, 1:-1].gather(-1, torch.tensor([[30], [40], [50]]))
        torch.testing.assert_close(served.reshape(-1), local.reshape(-1), atol=1e-4, rtol=1e-4)
        initial = AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2"))
        with torch.no_grad():
            initial_logps = torch.log_softmax(initial(torch.tensor(sequence)).logits, -1)[0, 1:-1]
        assert not torch.allclose(initial_logps.gather(-1, torch.tensor([[30], [40], [50]])), local, atol=1e-3)
        trainer.generation_backend.close()
