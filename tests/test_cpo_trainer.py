import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl.testing import get_tiny_model_path, get_tiny_tokenizer_path, load_test_dataset
from trl.trainer.collators import DataCollatorForPreference
from trl.trainer.cpo_config import CPO_LOSS_TYPES, CPOConfig
from trl.trainer.cpo_trainer import CPOTrainer
from trl.trainer.utils import compute_accuracy

from .testing_utils import snapshot


MODEL = get_tiny_model_path("qwen2")
# Hand-built pairs (token ids) of different lengths: the rows carry padding.
EXAMPLES = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12, 13]},
    {"prompt_ids": [14], "chosen_ids": [15, 16, 17], "rejected_ids": [18]},
    {"prompt_ids": [19, 20], "chosen_ids": [21], "rejected_ids": [22, 23]},
]


def make_config(tmp_path, **kwargs) -> CPOConfig:
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, per_device_eval_batch_size=4,
        max_steps=2, learning_rate=1e-2, beta=0.5, logging_steps=1, save_strategy="no", gradient_checkpointing=False,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    defaults.update(kwargs)
    return CPOConfig(**defaults)


def changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, param in model.named_parameters() if not torch.equal(param, before[name])]


def full_forward_token_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent per-token log-probs `[R, T-1]` from the full logits, and the mask of completion targets."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return logps, batch["completion_mask"][:, 1:].bool()


@pytest.fixture(scope="module")
def tokenized_train(tmp_path_factory):
    """The standard preference data tokenised once (trainers skip tokenisation of pre-tokenised data)."""
    args = CPOConfig(output_dir=str(tmp_path_factory.mktemp("tokenize")), report_to="none")
    return CPOTrainer(MODEL, args=args, train_dataset=load_test_dataset("standard_preference")).train_dataset


# ------------------------------------------------------------------------------------------------- config
def test_config_defaults_follow_the_reference():
    args = CPOConfig(output_dir="out")
    expected = {
        "learning_rate": 1e-6, "logging_steps": 10, "gradient_checkpointing": True, "max_length": 1024,
        "max_completion_length": None, "beta": 0.1, "label_smoothing": 0.0, "loss_type": "sigmoid",
        "disable_dropout": True, "cpo_alpha": 1.0, "simpo_gamma": 0.5, "alpha": 0.0, "generate_during_eval": False,
        "is_encoder_decoder": None, "model_init_kwargs": None, "trust_remote_code": False, "dataset_num_proc": None,
        "max_prompt_length": None, "label_pad_token_id": -100, "padding_value": None, "truncation_mode": "keep_end",
    }  # fmt: skip
    assert {name: getattr(args, name) for name in expected} == expected


def test_alphapo_is_simpo_without_the_nll_term():
    args = CPOConfig(output_dir="out", loss_type="alphapo", alpha=0.25, simpo_gamma=0.3)
    assert (args.loss_type, args.cpo_alpha, args.alpha, args.simpo_gamma) == ("simpo", 0.0, 0.25, 0.3)
    with pytest.warns(UserWarning, match="plain SimPO"):
        CPOConfig(output_dir="out", loss_type="alphapo")
    with pytest.raises(ValueError, match="loss_type='simpo' with that cpo_alpha"):
        CPOConfig(output_dir="out", loss_type="alphapo", alpha=0.25, cpo_alpha=0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": "kto"}, "Unknown loss_type"),
        ({"label_smoothing": 0.7}, r"\[0, 0.5\]"),
        ({"cpo_alpha": -1.0}, "cpo_alpha must be >= 0"),
        ({"beta": 0.0}, "beta must be > 0"),
        ({"max_length": 0}, "max_length must be a positive"),
        ({"truncation_mode": "middle"}, "truncation_mode"),
    ],
)
def test_invalid_config_raises_before_loading(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CPOConfig(output_dir="out", **kwargs)


def test_label_smoothing_without_a_smoothed_loss_warns():
    with pytest.warns(UserWarning, match="no effect with loss_type='hinge'"):
        CPOConfig(output_dir="out", loss_type="hinge", label_smoothing=0.1)


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    "config_name",
    [
        "standard_preference",
        "conversational_preference",
        "standard_implicit_prompt_preference",
        "conversational_implicit_prompt_preference",
    ],
)
def test_each_dataset_format_trains_and_changes_weights(tmp_path, config_name):
    trainer = CPOTrainer(MODEL, args=make_config(tmp_path), train_dataset=load_test_dataset(config_name))
    before = snapshot(trainer.model)
    trainer.train()
    unchanged = set(before) - set(changed(trainer.model, before))
    assert not unchanged, sorted(unchanged)[:5]
    first = trainer.state.log_history[0]
    metrics = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected", "logits/chosen", "logits/rejected", "nll_loss"}  # fmt: skip
    assert metrics <= set(first)
    # Summed log-probs (sigmoid) and rewards = beta * score.
    assert first["rewards/chosen"] == pytest.approx(0.5 * first["logps/chosen"], rel=1e-5)


@pytest.mark.parametrize("loss_type", [*CPO_LOSS_TYPES, "alphapo"])
def test_every_loss_type_trains_and_changes_weights(tmp_path, tokenized_train, loss_type):
    extra = {"alpha": 0.25} if loss_type == "alphapo" else {}
    args = make_config(tmp_path, loss_type=loss_type, per_device_train_batch_size=2, **extra)
    trainer = CPOTrainer(MODEL, args=args, train_dataset=tokenized_train.select(range(4)))
    before = snapshot(trainer.model)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    names = changed(trainer.model, before)
    assert "lm_head.weight" in names and len(names) > len(before) // 2


# ------------------------------------------------------------------------------------------ loss formulas
def expected_cpo_loss(model, batch, loss_type, beta, label_smoothing, simpo_gamma, alpha, cpo_alpha):
    """The CPO objective written out from independently computed log-probs."""
    logps, mask = full_forward_token_logps(model, batch)
    half = mask.shape[0] // 2
    score = (logps * mask).sum(-1)
    if loss_type in ("ipo", "simpo"):
        score = score / mask.sum(-1)
    if alpha:
        score = (1 - torch.exp(-alpha * score)) / alpha
    delta = score[:half] - score[half:]
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        z = beta * delta - simpo_gamma
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    nll = -(logps[:half] * mask[:half]).sum() / mask[:half].sum()
    return losses.mean() + cpo_alpha * nll, beta * score[:half], beta * score[half:]


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing", "alpha", "cpo_alpha"),
    [
        ("sigmoid", 0.0, 0.0, 1.0),
        ("sigmoid", 0.1, 0.05, 0.5),
        ("hinge", 0.0, 0.0, 1.0),
        ("ipo", 0.0, 0.0, 1.0),
        ("simpo", 0.2, 0.0, 0.0),
        ("simpo", 0.0, 0.25, 0.0),  # AlphaPO
        ("simpo", 0.0, 0.0, 0.7),  # CPO-SimPO
    ],
)
def test_loss_on_a_hand_built_batch_matches_the_formula(tmp_path, tokenized_train, loss_type, label_smoothing, alpha,
                                                         cpo_alpha):  # fmt: skip
    args = make_config(tmp_path, loss_type=loss_type, label_smoothing=label_smoothing, alpha=alpha,
                       cpo_alpha=cpo_alpha, simpo_gamma=0.3, beta=0.2)  # fmt: skip
    trainer = CPOTrainer(MODEL, args=args, train_dataset=tokenized_train.select(range(4)))
    trainer.model.eval()
    batch = DataCollatorForPreference(pad_token_id=trainer.pad_token_id)(EXAMPLES)
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    expected, chosen_rewards, rejected_rewards = expected_cpo_loss(
        trainer.model, batch, loss_type, 0.2, label_smoothing, 0.3, alpha, cpo_alpha
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs["chosen_rewards"], chosen_rewards, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs["rejected_rewards"], rejected_rewards, rtol=1e-5, atol=1e-6)
    logged = {name: values[-1] for name, values in trainer._metrics["eval"].items()}
    assert logged["rewards/margins"] == pytest.approx((chosen_rewards - rejected_rewards).mean().item(), rel=1e-5)
    assert logged["rewards/accuracies"] == pytest.approx((chosen_rewards > rejected_rewards).float().mean().item())


def test_moe_router_aux_loss_is_added_and_logged(tmp_path, tokenized_train):
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=1024, hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
        router_aux_loss_coef=0.1, max_position_embeddings=512, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("chatml"))
    trainer = CPOTrainer(MixtralForCausalLM(config), args=make_config(tmp_path), train_dataset=tokenized_train,
                         processing_class=tokenizer)  # fmt: skip
    trainer.model.eval()
    batch = DataCollatorForPreference(pad_token_id=0)(EXAMPLES)
    with_aux = trainer.compute_loss(trainer.model, batch)
    aux = trainer._metrics["eval"]["aux_loss"][-1]
    trainer.model.config.output_router_logits = False
    without_aux = trainer.compute_loss(trainer.model, batch)
    assert aux > 0
    assert with_aux.item() == pytest.approx(without_aux.item() + 0.1 * aux, rel=1e-5)


# ------------------------------------------------------------------------------------------ data handling
def test_prompt_truncation_follows_truncation_mode_and_rows_lose_their_completion_end(tmp_path):
    data = Dataset.from_dict({"prompt_ids": [list(range(1, 11))], "chosen_ids": [[11, 12, 13]],
                              "rejected_ids": [[14, 15, 16, 17, 18]]})  # fmt: skip
    keep_end = CPOTrainer(MODEL, args=make_config(tmp_path, max_prompt_length=4, max_length=6), train_dataset=data)
    assert keep_end.train_dataset[0]["prompt_ids"] == [7, 8, 9, 10]
    args = make_config(tmp_path, max_prompt_length=4, max_length=6, truncation_mode="keep_start")
    keep_start = CPOTrainer(MODEL, args=args, train_dataset=data)
    assert keep_start.train_dataset[0]["prompt_ids"] == [1, 2, 3, 4]
    batch = keep_end.data_collator([keep_end.train_dataset[0]])
    assert batch["input_ids"].tolist() == [[7, 8, 9, 10, 11, 12], [7, 8, 9, 10, 14, 15]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 0, 1, 1]] * 2
    with pytest.warns(UserWarning, match="1 pair"):
        CPOTrainer(MODEL, args=make_config(tmp_path, max_prompt_length=None, max_length=6), train_dataset=data)


def test_encoder_decoder_model_trains(tmp_path):
    trainer = CPOTrainer(get_tiny_model_path("t5"), args=make_config(tmp_path),
                         train_dataset=load_test_dataset("standard_preference"))  # fmt: skip
    assert trainer.is_encoder_decoder
    before = snapshot(trainer.model)
    trainer.train()
    names = changed(trainer.model, before)
    assert "shared.weight" in names  # the embeddings, tied to the LM head
    assert any(name.startswith("encoder.") for name in names) and any(name.startswith("decoder.") for name in names)


# --------------------------------------------------------------------------------- PEFT, evaluation, saving
def test_peft_trains_only_the_adapters(tmp_path, tokenized_train):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = CPOTrainer(MODEL, args=make_config(tmp_path), train_dataset=tokenized_train, peft_config=peft_config)
    before = snapshot(trainer.model)
    trainer.train()
    names = set(changed(trainer.model, before))
    assert names and all("lora_" in name for name in names)
    assert any("lora_B" in name for name in names)


def test_eval_metrics_and_compute_metrics(tmp_path, tokenized_train):
    evals = {
        "std": load_test_dataset("standard_preference", split="test"),
        "conv": load_test_dataset("conversational_preference", split="test"),
    }
    trainer = CPOTrainer(MODEL, args=make_config(tmp_path), train_dataset=tokenized_train, eval_dataset=evals,
                         compute_metrics=compute_accuracy)  # fmt: skip
    metrics = trainer.evaluate()
    for name in evals:
        for key in ("loss", "rewards/chosen", "rewards/margins", "logps/rejected", "logits/chosen", "nll_loss"):
            assert f"eval_{name}_{key}" in metrics, key
        # compute_metrics sees the (chosen, rejected) rewards: its accuracy is the rewards accuracy.
        assert metrics[f"eval_{name}_accuracy"] == pytest.approx(metrics[f"eval_{name}_rewards/accuracies"])


def test_save_and_resume_reach_the_uninterrupted_weights(tmp_path, tokenized_train):
    data = tokenized_train.select(range(16))
    straight = CPOTrainer(MODEL, args=make_config(tmp_path / "straight", max_steps=4), train_dataset=data)
    straight.train()
    args = make_config(tmp_path / "resumed", max_steps=4, save_strategy="steps", save_steps=2)
    first = CPOTrainer(MODEL, args=args, train_dataset=data)
    first.train()
    card = (tmp_path / "resumed" / "README.md").read_text()
    assert "CPO" in card and "2401.08417" in card
    resumed = CPOTrainer(MODEL, args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, straight.model.get_parameter(name), msg=name)
    resumed.save_model(str(tmp_path / "final"))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "final").config.model_type == "qwen2"
    assert resumed._derived_quantities()["loss"] == "sigmoid (summed log-probs) + 1·NLL(chosen)"


# -------------------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors(tmp_path, tokenized_train):
    args = make_config(tmp_path)
    with pytest.raises(ValueError, match="'chosen' and 'rejected'"):
        CPOTrainer(MODEL, args=args, train_dataset=Dataset.from_dict({"prompt": ["a"], "chosen": ["b"]}))
    with pytest.raises(ValueError, match="unpaired preference"):
        CPOTrainer(MODEL, args=args, train_dataset=load_test_dataset("standard_unpaired_preference"))
    with pytest.raises(ValueError, match="train_dataset"):
        CPOTrainer(MODEL, args=args)
    with pytest.raises(ValueError, match="model_init"):
        CPOTrainer(args=args, train_dataset=tokenized_train, model_init=lambda: None)
    with pytest.raises(ValueError, match="is_encoder_decoder"):
        CPOTrainer(MODEL, args=make_config(tmp_path, is_encoder_decoder=True), train_dataset=tokenized_train)
    with pytest.raises(ValueError, match="model_init_kwargs"):
        CPOTrainer(AutoModelForCausalLM.from_pretrained(MODEL), train_dataset=tokenized_train,
                   args=make_config(tmp_path, model_init_kwargs={"dtype": "float32"}))  # fmt: skip


def test_generate_during_eval_logs_policy_completions(tmp_path, tokenized_train, monkeypatch):
    import importlib.machinery
    import sys
    import types

    logged = []
    wandb = types.ModuleType("wandb")
    wandb.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    wandb.run = object()
    wandb.Table = lambda columns, rows: {"columns": columns, "rows": rows}
    wandb.log = logged.append
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    args = make_config(tmp_path, generate_during_eval=True, max_completion_length=4, per_device_eval_batch_size=2)
    trainer = CPOTrainer(
        MODEL, args=args, train_dataset=tokenized_train, eval_dataset=tokenized_train.select(range(4))
    )
    trainer.evaluate()
    (entry,) = logged
    table = entry["game_log"]
    assert table["columns"] == ["Prompt", "Policy"] and len(table["rows"]) == 2
    assert all(row[0].startswith(("What", "How")) for row in table["rows"])


def test_cpo_script_trains_from_the_command_line_arguments(tmp_path):
    from trl.scripts import cpo
    from trl.scripts.utils import parse_script_args
    from trl.testing import get_dataset_path

    args = parse_script_args(
        cpo.make_parser(),
        ["--model_name_or_path", MODEL, "--dataset_name", get_dataset_path(), "--dataset_config",
         "conversational_preference", "--output_dir", str(tmp_path), "--max_steps", "1", "--report_to", "none",
         "--save_strategy", "no", "--loss_type", "alphapo", "--alpha", "0.25", "--gradient_checkpointing", "false"],
    )  # fmt: skip
    assert (args[1].loss_type, args[1].cpo_alpha) == ("simpo", 0.0)
    cpo.main(*args)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.model_type == "qwen2"
