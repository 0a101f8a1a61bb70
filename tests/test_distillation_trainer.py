"""DistillationTrainer: on-policy distillation of a tiny student from a larger tiny teacher (same tokenizer)."""

import shutil
import warnings

import pytest
import torch

from trl import DistillationConfig, DistillationTrainer, GKDTrainer
from trl.losses import distillation_loss
from trl.testing import get_tiny_model_path, load_test_dataset
from trl.trainer.distillation_core import DistillationMixin
from trl.trainer.rollout_utils import policy_inputs

from .testing_utils import snapshot


STUDENT = get_tiny_model_path("qwen2")
TEACHER = get_tiny_model_path("qwen2", size="small")


def make_config(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", max_steps=3, per_device_train_batch_size=2, max_length=64,
        max_completion_length=6, logging_steps=1, save_strategy="no", learning_rate=1e-2, seed=0,
        gradient_checkpointing=False,
    )  # fmt: skip
    return DistillationConfig(**{**defaults, **overrides})


def make_trainer(tmp_path, dataset="conversational_prompt_only", teacher=TEACHER, **overrides):
    return DistillationTrainer(
        STUDENT, teacher, args=make_config(tmp_path, **overrides), train_dataset=load_test_dataset(dataset)
    )


def test_config_defaults_follow_the_reference():
    args = DistillationConfig(output_dir="unused", report_to="none")
    assert (args.temperature, args.lmbda, args.beta, args.loss_top_k, args.loss_add_tail) == (1.0, 1.0, 1.0, 1, True)
    assert (args.max_completion_length, args.max_prompt_length, args.top_p, args.top_k) == (512, 512, 0.95, 0)
    assert (args.learning_rate, args.reverse_kl_top_1_mode, args.num_generations) == (1e-6, "sampled", 1)
    assert (args.vllm_server_host, args.vllm_server_port, args.use_teacher_server) == ("127.0.0.1", 8001, False)


def test_one_implementation_serves_both_trainers():
    assert issubclass(DistillationTrainer, DistillationMixin) and issubclass(GKDTrainer, DistillationMixin)
    assert DistillationTrainer.compute_loss is GKDTrainer.compute_loss is DistillationMixin.compute_loss


def test_trains_every_student_parameter_on_prompts(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, loss_top_k=0, beta=0.5)
    before, teacher_before = snapshot(trainer.model), snapshot(trainer.teacher_model)
    trainer.train()
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"
    for name, param in trainer.teacher_model.named_parameters():
        assert torch.equal(param, teacher_before[name])
    rows = [row for row in trainer.state.log_history if "loss" in row]
    assert all(row["completions/mean_length"] > 0 for row in rows)


def test_loss_is_the_top_k_divergence_of_student_and_teacher(tmp_path):
    trainer = make_trainer(tmp_path, dataset="standard_prompt_completion", beta=0.5, loss_top_k=2, temperature=0.8)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    loss = trainer.compute_loss(trainer.model, batch)
    rows = policy_inputs(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    inputs = {k: rows[k] for k in ("input_ids", "attention_mask", "position_ids")}
    mask = rows["completion_mask"].bool()
    prompt_width = inputs["input_ids"].shape[1] - mask.shape[1]
    with torch.no_grad():
        # Position prompt_width - 1 + j predicts completion token j.
        predicting = slice(prompt_width - 1, prompt_width - 1 + mask.shape[1])
        student = trainer.model(**inputs).logits[:, predicting][mask]
        teacher = trainer.teacher_model(**inputs).logits[:, predicting][mask]
    expected, _ = distillation_loss(
        student, teacher, beta=0.5, temperature=0.8, top_k=2, sampled_ids_N=rows["completion_ids"][mask]
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_off_policy_slices_use_the_dataset_completions(tmp_path):
    trainer = make_trainer(tmp_path, dataset="standard_prompt_completion", lmbda=0.0)
    calls = []
    trainer.generation_backend.generate = lambda *args: calls.append(args)
    trainer.train()
    assert calls == []


def test_peft_trains_only_adapters(tmp_path):
    from peft import LoraConfig

    trainer = DistillationTrainer(
        STUDENT,
        TEACHER,
        args=make_config(tmp_path),
        train_dataset=load_test_dataset("standard_prompt_only"),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    before = snapshot(trainer.model)
    trainer.train()
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:
            assert not torch.equal(param, before[name]), f"{name} did not change"
        elif "lora_" not in name:
            assert torch.equal(param, before[name]), f"base weight {name} changed"


def test_eval_with_a_dataset_an_iterable_dataset_and_a_dict(tmp_path):
    prompts = load_test_dataset("standard_prompt_only", split="test")
    completions = load_test_dataset("standard_prompt_completion", split="test")
    cases = ((prompts, "eval"), (completions.to_iterable_dataset(), "eval"), ({"p": prompts, "c": completions}, None))
    for eval_dataset, prefix in cases:
        trainer = DistillationTrainer(
            STUDENT, TEACHER, args=make_config(tmp_path, per_device_eval_batch_size=4),
            train_dataset=load_test_dataset("standard_prompt_only"), eval_dataset=eval_dataset,
        )  # fmt: skip
        metrics = trainer.evaluate()
        for name in ("eval_p", "eval_c") if prefix is None else (prefix,):
            assert metrics[f"{name}_loss"] >= 0 and f"{name}_divergence" in metrics


def test_save_and_exact_resume(tmp_path):
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, lmbda=0.5, loss_top_k=0)
    full = make_trainer(tmp_path / "full", dataset="conversational_prompt_completion", **common)
    full.train()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = make_trainer(tmp_path / "resumed", dataset="conversational_prompt_completion", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    losses = {row["step"]: row["loss"] for row in full.state.log_history if "loss" in row}
    resumed_losses = {
        row["step"]: row["loss"] for row in resumed.state.log_history if "loss" in row and row["step"] > 2
    }
    assert resumed_losses == {3: losses[3], 4: losses[4]}
    for name, param in full.model.named_parameters():
        torch.testing.assert_close(resumed.model.state_dict()[name], param.detach())


def test_bad_inputs_are_clear_errors(tmp_path):
    prompts = load_test_dataset("standard_prompt_only")
    with pytest.raises(ValueError, match="prompt-only"):
        DistillationTrainer(STUDENT, TEACHER, args=make_config(tmp_path, lmbda=0.5), train_dataset=prompts)
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationTrainer(STUDENT, args=make_config(tmp_path), train_dataset=prompts)
    with pytest.raises(ValueError, match="tools=None"):
        DistillationTrainer(STUDENT, TEACHER, args=make_config(tmp_path), train_dataset=prompts, tools=[len])
    with pytest.raises(ValueError, match="'prompt' column"):
        DistillationTrainer(STUDENT, TEACHER, args=make_config(tmp_path),
                            train_dataset=load_test_dataset("standard_language_modeling"))  # fmt: skip
    with pytest.raises(ValueError, match="teacher_model_server_url must be set"):
        make_config(tmp_path, use_teacher_server=True)
    with pytest.raises(ValueError, match="num_generations"):
        make_config(tmp_path, num_generations=2)
    with pytest.raises(ValueError, match="max_completion_length"):
        make_config(tmp_path, max_completion_length=64)
    with pytest.raises(ValueError, match="beta must be in"):
        make_config(tmp_path, beta=-0.1)
    with pytest.raises(ValueError, match="lmbda=0.0 never samples"):
        make_config(tmp_path, lmbda=0.0, log_completions=True)
    with pytest.raises(ValueError, match="log_completions_steps"):
        make_config(tmp_path, log_completions=True, log_completions_steps=0)


def test_log_completions_prints_the_sampled_completions_every_log_completions_steps(tmp_path, monkeypatch, capsys):
    """log_completions=True adds the shared LogCompletionsCallback: every `log_completions_steps` steps the
    on-policy completions of that step are written (rich table on the console; W&B / Trackio with report_to)."""
    from trl import LogCompletionsCallback

    monkeypatch.delenv("TRL_QUIET", raising=False)
    trainer = make_trainer(
        tmp_path, max_steps=4, log_completions=True, log_completions_steps=2, num_completions_to_print=1,
        gradient_accumulation_steps=2,
    )  # fmt: skip
    assert sum(isinstance(cb, LogCompletionsCallback) for cb in trainer.callback_handler.callbacks) == 1
    sampled, generate = [], trainer.generation_backend.generate

    def recorded_generate(prompts, sampling):
        result = generate(prompts, sampling)
        sampled.append(result.completion_ids)
        return result

    trainer.generation_backend.generate = recorded_generate
    written = []
    import trl.trainer.completions_callback as module

    write = module.write_completions_table
    monkeypatch.setattr(module, "write_completions_table", lambda table, *a: (written.append(table), write(table, *a)))
    trainer.train()
    assert [table["step"] for table in written] == [[2] * 4, [4] * 4]  # 2 micro-batches of 2 per step
    assert all(table["source"] == ["student"] * 4 for table in written)
    tokenizer = trainer.processing_class
    step_4 = [tokenizer.decode(ids, skip_special_tokens=True) for batch in sampled[-2:] for ids in batch]
    assert written[-1]["completion"] == step_4
    printed = capsys.readouterr().out
    assert "Step 2" in printed and "Step 4" in printed and "Step 1" not in printed and "Step 3" not in printed


def test_experimental_import_path_is_the_same_class():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.distillation import DistillationTrainer as ExperimentalTrainer
    assert ExperimentalTrainer is DistillationTrainer


def test_learning_lowers_the_divergence_on_held_out_prompts(tmp_path):
    """Reverse-KL on-policy distillation (full vocabulary) lowers the divergence on the held-out prompts."""
    test = load_test_dataset("standard_prompt_completion", split="test")
    trainer = DistillationTrainer(
        STUDENT,
        TEACHER,
        args=make_config(tmp_path, max_steps=24, loss_top_k=0, learning_rate=3e-3, per_device_eval_batch_size=8),
        train_dataset=load_test_dataset("standard_prompt_only"),
        eval_dataset=test,
    )
    before = trainer.evaluate()["eval_divergence"]
    trainer.train()
    after = trainer.evaluate()["eval_divergence"]
    print(f"Distillation held-out reverse KL: {before:.5f} -> {after:.5f}")
    assert after < 0.8 * before


def test_cli_with_yaml_config(tmp_path):
    """`trl distillation --config <yaml>`: the student trains from the teacher named in the YAML and is saved."""
    from transformers import AutoModelForCausalLM as Loader

    from trl.testing import get_dataset_path

    from .testing_utils import run_trl_with_yaml

    config = {
        "model_name_or_path": STUDENT, "teacher_model_name_or_path": TEACHER, "dataset_name": get_dataset_path(),
        "dataset_config": "conversational_prompt_only", "output_dir": str(tmp_path / "out"), "max_steps": 2, "max_completion_length": 4, "max_length": 64,
        "per_device_train_batch_size": 2, "save_strategy": "no", "report_to": "none", "logging_steps": 1,
        "num_processes": 1,
    }  # fmt: skip
    result = run_trl_with_yaml("distillation", config, tmp_path)
    assert Loader.from_pretrained(tmp_path / "out").config.model_type == "qwen2"
    assert result.stdout.count("'loss'") == 2, result.stdout[-3000:]
