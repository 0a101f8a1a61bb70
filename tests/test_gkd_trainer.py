"""GKDTrainer: an SFT subclass distilling a tiny student from a larger tiny teacher (same tokenizer)."""

import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl import GKDConfig, GKDTrainer
from trl.losses import generalized_jsd_loss
from trl.testing import get_tiny_model_path, load_test_dataset
from trl.trainer.rollout_utils import policy_inputs

from .testing_utils import snapshot


STUDENT = get_tiny_model_path("qwen2")
TEACHER = get_tiny_model_path("qwen2", size="small")


def make_config(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", max_steps=3, per_device_train_batch_size=2, max_new_tokens=6,
        max_length=64, logging_steps=1, save_strategy="no", learning_rate=1e-2, seed=0, gradient_checkpointing=False,
    )  # fmt: skip
    return GKDConfig(**{**defaults, **overrides})


def make_trainer(tmp_path, dataset="conversational_prompt_completion", teacher=TEACHER, **overrides):
    return GKDTrainer(
        STUDENT, teacher, args=make_config(tmp_path, **overrides), train_dataset=load_test_dataset(dataset)
    )


def count_sources(trainer):
    """Wrap the coin to record the completion source of every micro-step."""
    sources = []
    coin = trainer._completion_source

    def recorded():
        sources.append(coin())
        return sources[-1]

    trainer._completion_source = recorded
    return sources


def test_config_defaults_follow_the_reference():
    args = GKDConfig(output_dir="unused", report_to="none")
    assert (args.temperature, args.lmbda, args.beta, args.max_new_tokens) == (0.9, 0.5, 0.5, 128)
    assert (args.teacher_model_name_or_path, args.teacher_model_init_kwargs, args.seq_kd) == (None, None, False)
    assert args.disable_dropout is True and args.learning_rate == 2e-5 and args.max_length == 1024


def test_trains_every_student_parameter_and_never_the_teacher(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4)
    student_before, teacher_before = snapshot(trainer.model), snapshot(trainer.teacher_model)
    trainer.train()
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, student_before[name]), f"{name} did not change"
    for name, param in trainer.teacher_model.named_parameters():
        assert torch.equal(param, teacher_before[name]) and not param.requires_grad
    assert not trainer.teacher_model.training
    assert trainer.model.dtype == torch.float32
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert all(row["loss"] > 0 and "divergence" in row for row in logged)


def test_logs_the_sft_token_metrics_from_the_student_forward(tmp_path):
    """`num_tokens` (running total of the [prompt | completion] tokens), `mean_token_accuracy` and `entropy` of the
    student on the completion tokens, as SFT logs them."""
    trainer = make_trainer(tmp_path, max_steps=3, lmbda=0.5)
    seen, log_student = [], trainer._log_student_metrics

    def counted(batch, student, mode):
        seen.append(int(batch["attention_mask"].sum()))
        return log_student(batch, student, mode)

    trainer._log_student_metrics = counted
    trainer.train()
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert [row["num_tokens"] for row in logged] == [sum(seen[: i + 1]) for i in range(len(seen))]
    assert all(0.0 <= row["mean_token_accuracy"] <= 1.0 and row["entropy"] > 0 for row in logged)

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)
    rows = policy_inputs(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    with torch.no_grad():
        logits = trainer.model(**{k: rows[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
    width = rows["completion_mask"].shape[1]
    logits_N = logits[:, -width - 1 : -1][rows["completion_mask"].bool()]
    targets_N = rows["input_ids"][:, -width:][rows["completion_mask"].bool()]
    entropy = -(logits_N.log_softmax(-1).exp() * logits_N.log_softmax(-1)).sum(-1).mean()
    metrics = trainer._metrics["train"]
    assert metrics["mean_token_accuracy"][-1] == pytest.approx(
        (logits_N.argmax(-1) == targets_N).float().mean().item()
    )
    assert metrics["entropy"][-1] == pytest.approx(entropy.item(), rel=1e-4)


def test_no_teacher_means_the_model_itself_scored_live_without_grad(tmp_path):
    """`teacher_model_name_or_path=None` and no `teacher_model`: the teacher is the live student, scored in eval mode
    under no_grad; without dropout the two distributions coincide and the loss is zero (with a warning)."""
    dataset = load_test_dataset("standard_prompt_completion")
    with pytest.warns(UserWarning, match="teacher is the model itself"):
        trainer = GKDTrainer(STUDENT, args=make_config(tmp_path, max_steps=2), train_dataset=dataset)
    assert trainer.teacher_model is trainer.model
    assert all(param.requires_grad for param in trainer.model.parameters())
    calls = []
    trainer.model.register_forward_hook(lambda module, *_: calls.append((torch.is_grad_enabled(), module.training)))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    assert calls == [(True, True), (False, False)] and trainer.model.training  # student, then teacher
    assert abs(loss.item()) < 1e-6

    # With dropout on, the dropout-free predictions are distilled into the training-mode ones: a non-zero loss.
    student = AutoModelForCausalLM.from_pretrained(STUDENT, attention_dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zero-loss warning with dropout on
        trainer = GKDTrainer(student, args=make_config(tmp_path, max_steps=2, disable_dropout=False),
                             train_dataset=dataset)  # fmt: skip
    before = snapshot(trainer.model)
    trainer.train()
    assert all(row["loss"] > 0 for row in trainer.state.log_history if "loss" in row)
    assert any(not torch.equal(param, before[name]) for name, param in trainer.model.named_parameters())


def test_a_log_completions_callback_shows_the_sampled_completions(tmp_path, monkeypatch, capsys):
    """GKDConfig has no log_completions field; a LogCompletionsCallback added by the user prints the completions
    sampled on-policy or from the teacher (source column) at each log."""
    from trl import LogCompletionsCallback

    monkeypatch.delenv("TRL_QUIET", raising=False)
    trainer = make_trainer(tmp_path, max_steps=2, lmbda=0.0, seq_kd=True)
    trainer.add_callback(LogCompletionsCallback(trainer))
    written = []
    log = trainer.log

    def recorded_log(logs, start_time=None):
        written.append(dict(trainer.recorded_completions))
        return log(logs, start_time)

    trainer.log = recorded_log
    trainer.train()
    tables = [table for table in written if table]
    assert [table["step"][0] for table in tables] == [1, 2]
    assert all(table["source"] == ["teacher"] * 2 and len(table["completion"]) == 2 for table in tables)
    printed = capsys.readouterr().out
    assert "Step 1" in printed and "Step 2" in printed and "teacher" in printed


@pytest.mark.parametrize(
    ("lmbda", "seq_kd", "expected"),
    [(1.0, False, {"student"}), (0.0, False, {"dataset"}), (0.0, True, {"teacher"}), (0.5, False, None)],
)
def test_completion_source_follows_lmbda_and_seq_kd(tmp_path, lmbda, seq_kd, expected):
    trainer = make_trainer(tmp_path, lmbda=lmbda, seq_kd=seq_kd, max_steps=6)
    sources = count_sources(trainer)
    calls = {"student": 0, "teacher": 0}
    for name, backend in (("student", trainer.generation_backend), ("teacher", trainer.teacher_generation_backend)):
        generate = backend.generate

        def counted(prompts, sampling, name=name, generate=generate):
            calls[name] += 1
            assert sampling.max_tokens == 6 and sampling.temperature == pytest.approx(0.9)
            return generate(prompts, sampling)

        backend.generate = counted
    trainer.train()
    assert len(sources) == 6
    if expected is None:
        assert set(sources) == {"student", "dataset"}  # seed 0 gives both within 6 draws
    else:
        assert set(sources) == expected
    assert calls["student"] == sources.count("student") and calls["teacher"] == sources.count("teacher")


def test_loss_is_the_generalized_jsd_of_student_and_teacher(tmp_path):
    """The loss recomputed from the two models' full logits on the same [prompt | completion] rows."""
    trainer = make_trainer(tmp_path, beta=0.3, temperature=0.7)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    loss = trainer.compute_loss(trainer.model, batch)
    rows = policy_inputs(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    inputs = {k: rows[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        student_logits = trainer.model(**inputs).logits[:, :-1]
        teacher_logits = trainer.teacher_model(**inputs).logits[:, :-1]
    # Token t is predicted at t - 1: the labels are the next tokens where they are completion tokens.
    width = rows["completion_mask"].shape[1]
    completion_B_L = F.pad(rows["completion_mask"], (inputs["input_ids"].shape[1] - width, 0)).bool()
    labels = inputs["input_ids"].masked_fill(~completion_B_L, -100)[:, 1:]
    expected = generalized_jsd_loss(student_logits, teacher_logits, labels, beta=0.3, temperature=0.7)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_peft_trains_only_adapters(tmp_path):
    from peft import LoraConfig

    trainer = GKDTrainer(
        STUDENT,
        TEACHER,
        args=make_config(tmp_path),
        train_dataset=load_test_dataset("standard_prompt_completion"),
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
    test = load_test_dataset("standard_prompt_completion", split="test")
    for eval_dataset, prefix in ((test, "eval"), (test.to_iterable_dataset(), "eval"), ({"a": test}, "eval_a")):
        trainer = GKDTrainer(
            STUDENT,
            TEACHER,
            args=make_config(tmp_path, per_device_eval_batch_size=4),
            train_dataset=load_test_dataset("standard_prompt_completion"),
            eval_dataset=eval_dataset,
        )
        metrics = trainer.evaluate()
        assert metrics[f"{prefix}_loss"] > 0
        assert metrics[f"{prefix}_divergence"] == pytest.approx(metrics[f"{prefix}_loss"], rel=1e-5)


def test_messages_are_split_into_prompt_and_last_turn(tmp_path):
    trainer = make_trainer(tmp_path, dataset="conversational_language_modeling", max_steps=1)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    tokenizer = AutoTokenizer.from_pretrained(STUDENT)
    completion = tokenizer.decode(batch["completion_ids"][0][batch["completion_mask"][0].bool()])
    last_turn = load_test_dataset("conversational_language_modeling")[0]["messages"][-1]["content"]
    assert last_turn in completion
    assert last_turn not in tokenizer.decode(batch["prompt_ids"][0][batch["prompt_mask"][0].bool()])
    trainer.train()


def test_save_and_exact_resume_with_coin_flips(tmp_path):
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, lmbda=0.5)
    full = make_trainer(tmp_path / "full", **common)
    sources = count_sources(full)
    full.train()
    assert set(sources) == {"student", "dataset"}
    full.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    for name, param in full.model.named_parameters():
        torch.testing.assert_close(reloaded.state_dict()[name], param.detach())
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = make_trainer(tmp_path / "resumed", **common)
    resumed_sources = count_sources(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    assert resumed_sources == sources[2:]
    losses = {row["step"]: row["loss"] for row in full.state.log_history if "loss" in row}
    resumed_losses = {
        row["step"]: row["loss"] for row in resumed.state.log_history if "loss" in row and row["step"] > 2
    }
    assert resumed_losses == {3: losses[3], 4: losses[4]}


def test_teacher_from_a_path_uses_teacher_model_init_kwargs(tmp_path):
    args = make_config(
        tmp_path, teacher_model_name_or_path=TEACHER, teacher_model_init_kwargs={"dtype": "bfloat16"}, max_steps=1
    )
    trainer = GKDTrainer(STUDENT, args=args, train_dataset=load_test_dataset("standard_prompt_completion"))
    assert trainer.teacher_model.dtype == torch.bfloat16
    assert trainer.model.dtype == torch.float32
    trainer.train()


def _different_tokenizer_teacher(path):
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    tokenizer.add_tokens(["<teacher-only>"])
    model = AutoModelForCausalLM.from_pretrained(TEACHER)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_bad_inputs_are_clear_errors(tmp_path):
    dataset = load_test_dataset("standard_prompt_completion")
    with pytest.raises(ValueError, match="teacher_model_init_kwargs.*no teacher was given"):
        GKDTrainer(STUDENT, args=make_config(tmp_path, teacher_model_init_kwargs={"dtype": "float32"}),
                   train_dataset=dataset)  # fmt: skip
    with pytest.raises(ValueError, match="teacher_model_init_kwargs"):
        teacher = AutoModelForCausalLM.from_pretrained(TEACHER)
        GKDTrainer(STUDENT, teacher, args=make_config(tmp_path, teacher_model_init_kwargs={"dtype": "float32"}),
                   train_dataset=dataset)  # fmt: skip
    with pytest.raises(ValueError, match="keep only one"):
        GKDTrainer(STUDENT, TEACHER, args=make_config(tmp_path, teacher_model_name_or_path=STUDENT),
                   train_dataset=dataset)  # fmt: skip
    with pytest.raises(ValueError, match="different tokenizers"):
        GKDTrainer(STUDENT, _different_tokenizer_teacher(tmp_path / "other"), args=make_config(tmp_path),
                   train_dataset=dataset)  # fmt: skip
    with pytest.raises(ValueError, match="prompt-completion data"):
        GKDTrainer(STUDENT, TEACHER, args=make_config(tmp_path),
                   train_dataset=load_test_dataset("standard_language_modeling"))  # fmt: skip
    with pytest.raises(ValueError, match="formatting_func"):
        GKDTrainer(STUDENT, TEACHER, args=make_config(tmp_path), train_dataset=dataset,
                   formatting_func=lambda example: example["prompt"])  # fmt: skip
    with pytest.raises(ValueError, match="packing=False"):
        GKDTrainer(STUDENT, TEACHER, args=make_config(tmp_path, packing=True), train_dataset=dataset)
    with pytest.raises(ValueError, match="lmbda must be in"):
        make_config(tmp_path, lmbda=1.5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        make_config(tmp_path, temperature=0.0)


def test_experimental_import_path_is_the_same_class():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDConfig as ExperimentalConfig
        from trl.experimental.gkd import GKDTrainer as ExperimentalTrainer
    assert ExperimentalTrainer is GKDTrainer and ExperimentalConfig is GKDConfig


def test_learning_lowers_the_divergence_on_held_out_prompts(tmp_path):
    """On-policy GKD for 24 steps lowers the student-teacher JSD on the held-out test split."""
    test = load_test_dataset("standard_prompt_completion", split="test")
    trainer = GKDTrainer(
        STUDENT,
        TEACHER,
        args=make_config(tmp_path, max_steps=24, lmbda=1.0, learning_rate=3e-3, per_device_eval_batch_size=8),
        train_dataset=load_test_dataset("standard_prompt_completion"),
        eval_dataset=test,
    )
    before = trainer.evaluate()["eval_divergence"]
    trainer.train()
    after = trainer.evaluate()["eval_divergence"]
    print(f"GKD held-out JSD: {before:.5f} -> {after:.5f}")
    assert after < 0.8 * before


def test_cli_with_yaml_config(tmp_path):
    """`trl gkd --config <yaml>`: the student trains from the teacher named in the YAML and is saved."""
    from transformers import AutoModelForCausalLM as Loader

    from trl.testing import get_dataset_path

    from .testing_utils import run_trl_with_yaml

    config = {
        "model_name_or_path": STUDENT, "teacher_model_name_or_path": TEACHER, "dataset_name": get_dataset_path(),
        "dataset_config": "conversational_prompt_completion", "output_dir": str(tmp_path / "out"), "max_steps": 2, "max_new_tokens": 4,
        "per_device_train_batch_size": 2, "save_strategy": "no", "report_to": "none", "logging_steps": 1,
        "num_processes": 1,
    }  # fmt: skip
    result = run_trl_with_yaml("gkd", config, tmp_path)
    assert Loader.from_pretrained(tmp_path / "out").config.model_type == "qwen2"
    assert result.stdout.count("'loss'") == 2, result.stdout[-3000:]
