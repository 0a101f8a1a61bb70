import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl.testing import get_tiny_model_path, load_test_dataset
from trl.trainer.collators import DataCollatorForPreference
from trl.trainer.orpo_config import ORPOConfig
from trl.trainer.orpo_trainer import ORPOTrainer
from trl.trainer.utils import compute_accuracy

from .testing_utils import snapshot


MODEL = get_tiny_model_path("qwen2")
# Hand-built pairs (token ids) of different lengths: the rows carry padding.
EXAMPLES = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12, 13]},
    {"prompt_ids": [14], "chosen_ids": [15, 16, 17], "rejected_ids": [18]},
    {"prompt_ids": [19, 20], "chosen_ids": [21], "rejected_ids": [22, 23]},
]


def make_config(tmp_path, **kwargs) -> ORPOConfig:
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, per_device_eval_batch_size=4,
        max_steps=2, learning_rate=1e-2, beta=0.5, logging_steps=1, save_strategy="no", gradient_checkpointing=False,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    defaults.update(kwargs)
    return ORPOConfig(**defaults)


def changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, param in model.named_parameters() if not torch.equal(param, before[name])]


@pytest.fixture(scope="module")
def tokenized_train(tmp_path_factory):
    """The standard preference data tokenised once (trainers skip tokenisation of pre-tokenised data)."""
    args = ORPOConfig(output_dir=str(tmp_path_factory.mktemp("tokenize")), report_to="none")
    return ORPOTrainer(MODEL, args=args, train_dataset=load_test_dataset("standard_preference")).train_dataset


def test_config_defaults_follow_the_reference():
    args = ORPOConfig(output_dir="out")
    expected = {
        "learning_rate": 1e-6, "logging_steps": 10, "gradient_checkpointing": True, "max_length": 1024,
        "max_completion_length": None, "beta": 0.1, "disable_dropout": True, "padding_value": None,
        "generate_during_eval": False, "is_encoder_decoder": None, "model_init_kwargs": None,
        "trust_remote_code": False, "dataset_num_proc": None, "max_prompt_length": None, "label_pad_token_id": -100,
        "truncation_mode": "keep_end",
    }  # fmt: skip
    assert {name: getattr(args, name) for name in expected} == expected
    with pytest.warns(UserWarning, match="label_pad_token_id"):
        ORPOConfig(output_dir="out", label_pad_token_id=0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        ORPOConfig(output_dir="out", beta=-0.1)


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
    trainer = ORPOTrainer(MODEL, args=make_config(tmp_path), train_dataset=load_test_dataset(config_name))
    before = snapshot(trainer.model)
    trainer.train()
    unchanged = set(before) - set(changed(trainer.model, before))
    assert not unchanged, sorted(unchanged)[:5]
    first = trainer.state.log_history[0]
    metrics = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected", "logits/chosen", "logits/rejected", "nll_loss", "log_odds_ratio",
               "log_odds_chosen"}  # fmt: skip
    assert metrics <= set(first)
    # Length-normalised log-probs: the rewards are beta times them, and they average to about -NLL.
    assert first["rewards/chosen"] == pytest.approx(0.5 * first["logps/chosen"], rel=1e-5)
    assert math.isfinite(first["loss"]) and first["loss"] > first["nll_loss"]


def test_loss_on_a_hand_built_batch_matches_the_formula(tmp_path, tokenized_train):
    """L = NLL(chosen) − β·mean logσ(log_odds), log_odds = (ℓ_c − ℓ_r) − (log(1 − e^ℓ_c) − log(1 − e^ℓ_r)) with ℓ
    the per-token mean log-prob, all recomputed here from an independent full forward pass (in float64)."""
    trainer = ORPOTrainer(MODEL, args=make_config(tmp_path, beta=0.3), train_dataset=tokenized_train.select(range(4)))
    trainer.model.eval()
    batch = DataCollatorForPreference(pad_token_id=trainer.pad_token_id)(EXAMPLES)
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)

    logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = logits.double().log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].bool()
    mean = (logps * mask).sum(-1) / mask.sum(-1)
    chosen, rejected = mean[:3], mean[3:]
    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    nll = -(logps[:3] * mask[:3]).sum() / mask[:3].sum()
    expected = nll - 0.3 * F.logsigmoid(log_odds).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs["chosen_rewards"].double(), 0.3 * chosen, rtol=1e-5, atol=1e-6)
    logged = {name: values[-1] for name, values in trainer._metrics["eval"].items()}
    assert logged["log_odds_chosen"] == pytest.approx(log_odds.mean().item(), rel=1e-4)
    assert logged["log_odds_ratio"] == pytest.approx(F.logsigmoid(log_odds).mean().item(), rel=1e-4)
    assert logged["nll_loss"] == pytest.approx(nll.item(), rel=1e-5)
    assert logged["logps/rejected"] == pytest.approx(rejected.mean().item(), rel=1e-5)


def test_encoder_decoder_model_trains(tmp_path):
    trainer = ORPOTrainer(get_tiny_model_path("t5"), args=make_config(tmp_path),
                          train_dataset=load_test_dataset("standard_implicit_prompt_preference"))  # fmt: skip
    before = snapshot(trainer.model)
    trainer.train()
    names = changed(trainer.model, before)
    assert any(name.startswith("encoder.") for name in names) and any(name.startswith("decoder.") for name in names)
    assert math.isfinite(trainer.state.log_history[0]["log_odds_ratio"])


def test_peft_trains_only_the_adapters(tmp_path, tokenized_train):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = ORPOTrainer(MODEL, args=make_config(tmp_path), train_dataset=tokenized_train, peft_config=peft_config)
    before = snapshot(trainer.model)
    trainer.train()
    names = set(changed(trainer.model, before))
    assert names and all("lora_" in name for name in names)
    assert any("lora_B" in name for name in names)


def test_eval_metrics_and_compute_metrics(tmp_path, tokenized_train):
    eval_dataset = load_test_dataset("conversational_implicit_prompt_preference", split="test")
    trainer = ORPOTrainer(MODEL, args=make_config(tmp_path), train_dataset=tokenized_train,
                          eval_dataset=eval_dataset, compute_metrics=compute_accuracy)  # fmt: skip
    metrics = trainer.evaluate()
    for key in ("loss", "rewards/chosen", "rewards/margins", "logps/chosen", "logits/rejected", "nll_loss",
                "log_odds_ratio", "log_odds_chosen"):  # fmt: skip
        assert f"eval_{key}" in metrics, key
    assert metrics["eval_accuracy"] == pytest.approx(metrics["eval_rewards/accuracies"])


def test_save_and_resume_reach_the_uninterrupted_weights(tmp_path, tokenized_train):
    data = tokenized_train.select(range(16))
    straight = ORPOTrainer(MODEL, args=make_config(tmp_path / "straight", max_steps=4), train_dataset=data)
    straight.train()
    args = make_config(tmp_path / "resumed", max_steps=4, save_strategy="steps", save_steps=2)
    ORPOTrainer(MODEL, args=args, train_dataset=data).train()
    card = (tmp_path / "resumed" / "README.md").read_text()
    assert "ORPO" in card and "2403.07691" in card
    resumed = ORPOTrainer(MODEL, args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, straight.model.get_parameter(name), msg=name)
    rows = resumed._derived_quantities()
    assert rows["loss"] == "NLL(chosen) + 0.5·odds-ratio (mean log-probs)" and rows["sequences per forward pass"] == 8


def test_bad_inputs_raise_clear_errors(tmp_path, tokenized_train):
    args = make_config(tmp_path)
    with pytest.raises(ValueError, match="'chosen' and 'rejected'"):
        ORPOTrainer(MODEL, args=args, train_dataset=Dataset.from_dict({"prompt": ["a"], "rejected": ["b"]}))
    with pytest.raises(ValueError, match="unpaired preference"):
        ORPOTrainer(MODEL, args=args, train_dataset=load_test_dataset("conversational_unpaired_preference"))
    with pytest.raises(ValueError, match="model_init"):
        ORPOTrainer(MODEL, args=args, train_dataset=tokenized_train, model_init=lambda: None)
    with pytest.raises(ValueError, match="is_encoder_decoder=False"):
        ORPOTrainer(get_tiny_model_path("t5"), args=make_config(tmp_path, is_encoder_decoder=False),
                    train_dataset=tokenized_train)  # fmt: skip


def test_iterable_dataset_trains_with_prompts_keeping_their_start(tmp_path):
    args = make_config(tmp_path, truncation_mode="keep_start", max_prompt_length=3)
    dataset = load_test_dataset("standard_preference")
    trainer = ORPOTrainer(MODEL, args=args, train_dataset=dataset.to_iterable_dataset())
    first = next(iter(trainer.train_dataset))
    tokenizer = trainer.processing_class
    assert first["prompt_ids"] == tokenizer(dataset[0]["prompt"])["input_ids"][:3]
    trainer.train()
    assert trainer.state.global_step == 2


def test_padding_value_pads_the_batches(tmp_path, tokenized_train):
    trainer = ORPOTrainer(MODEL, args=make_config(tmp_path, padding_value=3), train_dataset=tokenized_train)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert trainer.pad_token_id == 3
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 3).all()


def test_orpo_script_trains_from_the_command_line_arguments(tmp_path):
    from trl.scripts import orpo
    from trl.scripts.utils import parse_script_args
    from trl.testing import get_dataset_path

    args = parse_script_args(
        orpo.make_parser(),
        ["--model_name_or_path", MODEL, "--dataset_name", get_dataset_path(), "--dataset_config",
         "standard_implicit_prompt_preference", "--output_dir", str(tmp_path), "--max_steps", "1", "--report_to",
         "none", "--save_strategy", "no", "--beta", "0.2", "--gradient_checkpointing", "false"],
    )  # fmt: skip
    assert args[1].beta == 0.2
    orpo.main(*args)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.model_type == "qwen2"
