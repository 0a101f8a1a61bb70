import math
import os

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from trl.losses import token_classification_loss
from trl.testing import get_dataset_path, get_tiny_model_path, get_tiny_tokenizer_path, load_test_dataset
from trl.trainer.prm_config import PRMConfig
from trl.trainer.prm_trainer import PRMTrainer

from .testing_utils import snapshot


MODEL = "qwen2-token-cls"


def make_config(tmp_path, **kwargs) -> PRMConfig:
    defaults = dict(
        output_dir=str(tmp_path),
        report_to="none",
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        max_length=128,
        seed=0,
    )
    defaults.update(kwargs)
    return PRMConfig(**defaults)


class CharTokenizer:
    """One id per character (its code point), so expected ids can be written by hand."""

    def __init__(self, bos_token_id=None):
        self.bos_token_id = bos_token_id

    def __call__(self, text, add_special_tokens=False):
        if isinstance(text, list):
            return {"input_ids": [self.encode(item) for item in text]}
        return {"input_ids": self.encode(text)}

    def encode(self, text, add_special_tokens=False):
        return [ord(char) for char in text]


# a=97 b=98 c=99 d=100 e=101 "\n"=10 "|"=124
EXAMPLE = {"prompt": "ab", "completions": ["c", "de"], "labels": [True, False]}
X = -100


def tokenize(example=EXAMPLE, bos=None, separator="\n", last_only=False, is_eval=False, **limits):
    limits = {"max_length": None, "max_prompt_length": None, "max_completion_length": None, **limits}
    return PRMTrainer.tokenize_row(
        example, CharTokenizer(bos), separator, train_on_last_step_only=last_only, is_eval=is_eval, **limits
    )


# ------------------------------------------------------------------------------------------------- loss formula
def test_token_classification_loss_matches_hand_computed_cross_entropy():
    """Two labelled positions: logits (2, 0) with label 0 and (1, 3) with label 0; the rest is ignored.

    −log softmax = log(1 + e^(z_other − z_label)): log(1 + e^-2) and log(1 + e^2); mean over the 2 positions.
    """
    logits = torch.tensor(
        [[[2.0, 0.0], [float("-inf"), 5.0], [1.0, 3.0]], [[0.0, 9.0], [4.0, 4.0], [7.0, 7.0]]], dtype=torch.float64
    )
    labels = torch.tensor([[0, X, 0], [X, X, X]])
    loss, metrics = token_classification_loss(logits, labels)
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["num_labelled"].item() == 2
    assert metrics["num_correct"].item() == 1  # (2, 0) → class 0 is right, (1, 3) → class 1 is wrong
    assert metrics["accuracy"].item() == 0.5
    # A global normaliser (accumulated batch of 8 labelled positions) replaces the local count.
    loss_8, _ = token_classification_loss(logits, labels, num_items_in_batch=8)
    assert loss_8.item() == pytest.approx(expected * 2 / 8, rel=1e-12)


def test_token_classification_loss_gradient_and_empty_batch():
    logits = torch.tensor([[[0.0, 0.0], [1.0, -1.0]]], requires_grad=True)
    loss, _ = token_classification_loss(logits, torch.tensor([[1, X]]))
    loss.backward()
    # d/dz of −log softmax(z)[1] at z = (0, 0) is softmax − onehot = (0.5, −0.5); the ignored row gets nothing.
    torch.testing.assert_close(logits.grad, torch.tensor([[[0.5, -0.5], [0.0, 0.0]]]))

    empty, metrics = token_classification_loss(logits, torch.tensor([[X, X]]))
    assert empty.item() == 0.0 and empty.requires_grad
    assert metrics["num_labelled"].item() == 0 and math.isnan(metrics["accuracy"].item())
    with pytest.raises(ValueError, match="trailing class dimension"):
        token_classification_loss(logits, torch.tensor([1, 0]))


# ------------------------------------------------------------------------------------------------- tokenisation
def test_tokenize_row_labels_the_separator_after_each_step():
    assert tokenize() == {
        "input_ids": [97, 98, 99, 10, 100, 101, 10],
        "labels": [X, X, X, 1, X, X, 0],
    }


def test_tokenize_row_last_step_only_applies_to_training_only():
    assert tokenize(last_only=True)["labels"] == [X, X, X, X, X, X, 0]
    assert tokenize(last_only=True, is_eval=True)["labels"] == [X, X, X, 1, X, X, 0]


def test_tokenize_row_bos_and_multi_token_separator():
    # The label sits on the last token of the separator "||".
    assert tokenize(bos=1, separator="||") == {
        "input_ids": [1, 97, 98, 99, 124, 124, 100, 101, 124, 124],
        "labels": [X, X, X, X, X, 1, X, X, X, 0],
    }


def test_tokenize_row_truncation():
    # The prompt keeps its end (BOS included in its length, so it is cut first, as in the reference).
    assert tokenize(bos=1, max_prompt_length=2) == {
        "input_ids": [97, 98, 99, 10, 100, 101, 10],
        "labels": [X, X, X, 1, X, X, 0],
    }
    # The completion keeps its start: the second step loses its separator and so its label.
    assert tokenize(max_completion_length=4) == {"input_ids": [97, 98, 99, 10, 100, 101], "labels": [X, X, X, 1, X, X]}
    # max_length cuts the whole sequence last.
    assert tokenize(max_prompt_length=1, max_completion_length=6, max_length=4) == {
        "input_ids": [98, 99, 10, 100],
        "labels": [X, X, 1, X],
    }


def test_tokenize_row_rejects_bad_examples():
    with pytest.raises(ValueError, match="2 steps in 'completions' but 1 'labels'"):
        tokenize({"prompt": "ab", "completions": ["c", "d"], "labels": [True]})
    with pytest.raises(ValueError, match="not a class"):
        tokenize({"prompt": "ab", "completions": ["c"], "labels": [0.7]})
    # 0/1 numbers are classes.
    assert tokenize({"prompt": "a", "completions": ["c"], "labels": [1.0]})["labels"] == [X, X, 1]


def test_dataset_preparation_matches_tokenize_row_with_a_real_tokenizer(tmp_path):
    """The batched dataset map gives what `tokenize_row` gives, and `train_on_last_step_only` skips eval data."""
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("llama3"))  # has a BOS, no pad token
    train = load_test_dataset("standard_stepwise_supervision")
    test = load_test_dataset("standard_stepwise_supervision", split="test")
    args = make_config(tmp_path, train_on_last_step_only=True, step_separator="\n\n", max_length=40)
    trainer = PRMTrainer(
        get_tiny_model_path(MODEL), args=args, processing_class=tokenizer, train_dataset=train, eval_dataset=test
    )
    for prepared, raw, is_eval in ((trainer.train_dataset, train, False), (trainer.eval_dataset, test, True)):
        for index in range(len(raw)):
            expected = PRMTrainer.tokenize_row(raw[index], tokenizer, "\n\n", 40, 512, None, True, is_eval)
            assert prepared[index] == expected
    first = trainer.train_dataset[0]
    assert first["input_ids"][0] == tokenizer.bos_token_id
    assert sum(label != X for label in first["labels"]) == 1  # last step only
    assert sum(label != X for label in trainer.eval_dataset[0]["labels"]) == len(test[0]["labels"])
    # Padding falls back on EOS through a copy: the tokenizer the user passed keeps no pad token.
    assert tokenizer.pad_token is None
    assert trainer.data_collator.tokenizer.pad_token == tokenizer.eos_token


# ------------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("data_format", ["standard", "pretokenized", "iterable"])
def test_each_format_trains_and_changes_weights(tmp_path, data_format):
    dataset = load_test_dataset("standard_stepwise_supervision")
    if data_format == "pretokenized":
        tokenizer = AutoTokenizer.from_pretrained(get_tiny_model_path(MODEL))
        rows = [PRMTrainer.tokenize_row(row, tokenizer, "\n", 128, 512, None, False, False) for row in dataset]
        dataset = Dataset.from_list(rows)
    elif data_format == "iterable":
        dataset = dataset.to_iterable_dataset()
    trainer = PRMTrainer(get_tiny_model_path(MODEL), args=make_config(tmp_path), train_dataset=dataset)
    before = snapshot(trainer.model)
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    unchanged = [name for name, param in trainer.model.named_parameters() if torch.equal(param, before[name])]
    assert not unchanged, f"parameters did not change: {unchanged[:5]}"
    assert 0.0 <= trainer.state.log_history[0]["accuracy"] <= 1.0


def test_trainer_loss_is_cross_entropy_on_separator_labels(tmp_path):
    dataset = load_test_dataset("standard_stepwise_supervision").select(range(4))
    trainer = PRMTrainer(get_tiny_model_path(MODEL), args=make_config(tmp_path), train_dataset=dataset)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["labels"] != X
    expected = torch.nn.functional.cross_entropy(logits[mask], batch["labels"][mask])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert mask.sum() == sum(len(row["labels"]) for row in dataset)  # one label per step


def test_gradient_accumulation_matches_large_batch(tmp_path):
    """The loss is normalised by the labelled positions of the whole accumulated batch: with 1, 2, 3 and 3 steps per
    example, any split into two micro-batches has unequal label counts, so per-micro-batch means would differ."""
    rows = load_test_dataset("standard_stepwise_supervision").select(range(4)).to_list()
    for row, steps in zip(rows, (1, 2, 3, 3)):
        row["completions"], row["labels"] = row["completions"][:steps], row["labels"][:steps]
    dataset = Dataset.from_list(rows)
    weights = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        args = make_config(
            tmp_path / str(batch_size), max_steps=1, per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, gradient_checkpointing=False, optim="sgd", learning_rate=0.5,
        )  # fmt: skip
        trainer = PRMTrainer(get_tiny_model_path(MODEL), args=args, train_dataset=dataset)
        trainer.train()
        weights.append(snapshot(trainer.model))
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-5, atol=1e-6)


def test_peft_lora_trains_only_adapters_and_head(tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = PRMTrainer(
        get_tiny_model_path(MODEL),
        args=make_config(tmp_path),
        train_dataset=load_test_dataset("standard_stepwise_supervision"),
        peft_config=lora,
    )
    assert lora.task_type is None and lora.modules_to_save is None  # the user's config is left untouched
    before = snapshot(trainer.model)
    trainer.train()
    changed = {name for name, param in trainer.model.named_parameters() if not torch.equal(param, before[name])}
    assert any("lora_B" in name for name in changed)
    assert any("score.modules_to_save" in name for name in changed), "the classification head was not trained"
    frozen = [name for name in changed if "lora_" not in name and "modules_to_save" not in name]
    assert not frozen, f"base weights changed: {frozen[:5]}"


def test_peft_with_causal_lm_task_type_warns_and_uses_token_cls(tmp_path):
    from peft import LoraConfig

    with pytest.warns(UserWarning, match="TOKEN_CLS"):
        trainer = PRMTrainer(
            get_tiny_model_path(MODEL),
            args=make_config(tmp_path),
            train_dataset=load_test_dataset("standard_stepwise_supervision"),
            peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"),
        )
    assert type(trainer.model).__name__ == "PeftModelForTokenClassification"


def test_eval_reports_token_accuracy(tmp_path):
    test = load_test_dataset("standard_stepwise_supervision", split="test")
    args = make_config(tmp_path, eval_strategy="steps", eval_steps=2, max_steps=2, train_on_last_step_only=True)
    trainer = PRMTrainer(
        get_tiny_model_path(MODEL),
        args=args,
        train_dataset=load_test_dataset("standard_stepwise_supervision"),
        eval_dataset={"math": test},
    )
    trainer.train()
    metrics = trainer.evaluate()
    # The accuracy over every labelled step of the eval set, recomputed by hand.
    correct = total = 0
    with torch.no_grad():
        for row in trainer.eval_dataset["math"]:
            logits = trainer.model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            labels = torch.tensor(row["labels"])
            correct += (logits.argmax(-1)[labels != X] == labels[labels != X]).sum().item()
            total += (labels != X).sum().item()
    assert total == sum(len(labels) for labels in test["labels"])  # every step, despite train_on_last_step_only
    assert metrics["eval_math_accuracy"] == pytest.approx(correct / total)
    assert "eval_math_loss" in metrics


def test_save_reload_and_resume(tmp_path):
    dataset = load_test_dataset("standard_stepwise_supervision")
    args = make_config(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer = PRMTrainer(get_tiny_model_path(MODEL), args=args, train_dataset=dataset)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "final")
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(reloaded.state_dict()[name], param.detach())
    card = (tmp_path / "final" / "README.md").read_text()
    assert "PRM" in card and "2211.14275" in card
    assert os.path.isdir(tmp_path / "checkpoint-2")

    resumed = PRMTrainer(get_tiny_model_path(MODEL), args=args, train_dataset=dataset)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.state.global_step == 4
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(resumed.model.state_dict()[name], param.detach())


def test_model_init_and_default_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = get_tiny_model_path(MODEL)
    trainer = PRMTrainer(
        model_init=lambda: AutoModelForTokenClassification.from_pretrained(path),
        processing_class=AutoTokenizer.from_pretrained(path),
        train_dataset=load_test_dataset("standard_stepwise_supervision"),
    )
    assert trainer.args.output_dir == "model-PRM" and trainer.args.learning_rate == 1e-5
    assert all(module.p == 0 for module in trainer.model.modules() if isinstance(module, torch.nn.Dropout))


# ---------------------------------------------------------------------------------------------------- bad inputs
def test_wrong_dataset_formats_raise(tmp_path):
    model = get_tiny_model_path(MODEL)
    with pytest.raises(ValueError, match=r"'completions'.*preference dataset"):
        PRMTrainer(model, args=make_config(tmp_path), train_dataset=load_test_dataset("standard_preference"))
    conversational = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": "1+1?"}]], "completions": [["2"]], "labels": [[True]]}
    )
    with pytest.raises(ValueError, match="only the standard stepwise format"):
        PRMTrainer(model, args=make_config(tmp_path), train_dataset=conversational)
    mismatch = Dataset.from_dict({"prompt": ["1+1?"], "completions": [["1+1", "=2"]], "labels": [[True]]})
    with pytest.raises(ValueError, match="every step needs exactly one label"):
        PRMTrainer(model, args=make_config(tmp_path), train_dataset=mismatch)
    with pytest.raises(ValueError, match="no 'labels'"):
        PRMTrainer(model, args=make_config(tmp_path), train_dataset=Dataset.from_dict({"input_ids": [[1, 2]]}))


def test_wrong_models_and_configs_raise(tmp_path):
    dataset = load_test_dataset("standard_stepwise_supervision")
    causal_lm = AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2"))
    with pytest.raises(ValueError, match="token-classification model with 2 labels"):
        PRMTrainer(causal_lm, args=make_config(tmp_path), train_dataset=dataset)
    with pytest.raises(ValueError, match="num_labels"):
        PRMTrainer(
            get_tiny_model_path(MODEL),
            args=make_config(tmp_path, model_init_kwargs={"num_labels": 3}),
            train_dataset=dataset,
        )
    with pytest.raises(ValueError, match="max_prompt_length must be a positive"):
        make_config(tmp_path, max_prompt_length=0)
    with pytest.raises(ValueError, match="step_separator must be a non-empty"):
        make_config(tmp_path, step_separator="")


def test_truncated_away_labels_warn(tmp_path):
    with pytest.warns(UserWarning, match=r"48 of 48 examples of the train dataset have no labelled step"):
        PRMTrainer(
            get_tiny_model_path(MODEL),
            args=make_config(tmp_path, max_length=4),
            train_dataset=load_test_dataset("standard_stepwise_supervision"),
        )


# ----------------------------------------------------------------------------------------------------------- CLI
def test_prm_script_trains_and_saves_a_token_classifier(tmp_path):
    from trl.scripts.prm import main, make_parser
    from trl.scripts.utils import parse_script_args

    argv = [
        "--model_name_or_path", get_tiny_model_path(MODEL), "--dataset_name", get_dataset_path(),
        "--dataset_config", "standard_stepwise_supervision", "--output_dir", str(tmp_path / "out"),
        "--max_steps", "1", "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
        "--use_peft", "--lora_target_modules", "q_proj", "--lora_r", "4",
    ]  # fmt: skip
    script_args, training_args, model_args, dataset_args = parse_script_args(make_parser(), argv)
    assert model_args.lora_task_type == "TOKEN_CLS"
    main(script_args, training_args, model_args, dataset_args)
    saved = (tmp_path / "out" / "adapter_config.json").read_text()
    assert '"TOKEN_CLS"' in saved and '"score"' in saved
