import json
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl.testing import get_tiny_model_path, load_test_dataset
from trl.trainer.bco_config import BCOConfig
from trl.trainer.bco_trainer import BCOTrainer
from trl.trainer.unpaired_data import prepare_unpaired_dataset

from .testing_utils import StopAt, perturbed_model, snapshot


MODEL = get_tiny_model_path("qwen2")


def make_config(tmp_path, **kwargs) -> BCOConfig:
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, per_device_eval_batch_size=4,
        max_steps=2, learning_rate=1e-2, beta=0.5, logging_steps=1, save_strategy="no", gradient_checkpointing=False,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    defaults.update(kwargs)
    return BCOConfig(**defaults)


def sequence_logps(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (logps * batch["completion_mask"][:, 1:]).sum(-1)


@pytest.fixture(scope="module")
def tokenized_train():
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    dataset = load_test_dataset("standard_unpaired_preference")
    return prepare_unpaired_dataset(dataset, tokenizer, trainer_name="BCOTrainer", eos_token=tokenizer.eos_token)


# ------------------------------------------------------------------------------------------------- config
def test_config_defaults_follow_the_reference():
    args = BCOConfig(output_dir="out")
    expected = {
        "learning_rate": 5e-7, "logging_steps": 10, "gradient_checkpointing": True, "bf16": False,
        "max_length": 1024, "max_completion_length": None, "beta": 0.1, "disable_dropout": True,
        "generate_during_eval": False, "is_encoder_decoder": None, "precompute_ref_log_probs": False,
        "model_init_kwargs": None, "trust_remote_code": False, "dataset_num_proc": None, "prompt_sample_size": 1024,
        "min_density_ratio": 0.5, "max_density_ratio": 10.0,
        # seed-era fields
        "max_prompt_length": None, "label_pad_token_id": -100, "padding_value": None, "truncation_mode": "keep_end",
        "ref_model_init_kwargs": None,
    }  # fmt: skip
    assert {name: getattr(args, name) for name in expected} == expected
    with pytest.raises(ValueError, match="min_density_ratio"):
        BCOConfig(output_dir="out", min_density_ratio=2.0, max_density_ratio=1.0)
    with pytest.raises(ValueError, match="beta"):
        BCOConfig(output_dir="out", beta=-1.0)


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    "config_name", ["standard_unpaired_preference", "conversational_unpaired_preference", "standard_preference"]
)
def test_each_dataset_format_trains_and_changes_weights(tmp_path, config_name):
    trainer = BCOTrainer(MODEL, args=make_config(tmp_path), train_dataset=load_test_dataset(config_name))
    assert not trainer.data_collator.calculate_kl
    before = snapshot(trainer.model)
    trainer.train()
    unchanged = [name for name, param in trainer.model.named_parameters() if torch.equal(param, before[name])]
    assert not unchanged, unchanged[:5]
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(np.log(2), abs=1e-6)  # ρ = δ = 0 at the first step: −log σ(0)
    assert first["delta"] == 0.0 and trainer.running.count == pytest.approx(8)


def test_loss_on_a_hand_built_batch_matches_the_formula(tmp_path, tokenized_train):
    reference = perturbed_model()
    trainer = BCOTrainer(
        MODEL, ref_model=reference, args=make_config(tmp_path, beta=2.0), train_dataset=tokenized_train
    )
    trainer.running.mean, trainer.running.count = 0.3, 4.0
    batch = trainer._prepare_inputs(trainer.data_collator([tokenized_train[i] for i in range(5)]))
    labels = batch["labels"]
    model = trainer.model.train()
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        rewards = 2.0 * (sequence_logps(model, batch) - sequence_logps(reference, batch))
    delta = (0.3 * 4 + rewards.sum()) / (4 + 5)  # the running mean, updated with this batch first
    losses = torch.where(labels, -F.logsigmoid(rewards - delta), -F.logsigmoid(-(rewards - delta)))
    torch.testing.assert_close(loss, losses.mean(), rtol=1e-4, atol=1e-5)
    assert trainer.running.mean == pytest.approx(delta.item(), abs=1e-5) and trainer.running.count == 9
    model.eval()
    trainer.compute_loss(model, batch)
    assert trainer.running.count == 9  # evaluation leaves δ alone


def test_delta_is_the_mean_of_every_training_reward(tmp_path, tokenized_train):
    trainer = BCOTrainer(MODEL, args=make_config(tmp_path, max_steps=3), train_dataset=tokenized_train)
    trainer.train()
    steps = trainer.state.log_history[:-1]
    total = sum(step["rewards/chosen_sum"] + step["rewards/rejected_sum"] for step in steps)
    count = sum(step["count/chosen"] + step["count/rejected"] for step in steps)
    assert count == 12 and trainer.running.count == pytest.approx(12)
    assert trainer.running.mean == pytest.approx(total / count, abs=1e-5)
    assert steps[-1]["delta"] == pytest.approx(trainer.running.mean)


def test_running_mean_is_saved_and_restored_on_resume(tmp_path, tokenized_train):
    straight = BCOTrainer(MODEL, args=make_config(tmp_path / "a", max_steps=3), train_dataset=tokenized_train)
    straight.train()
    args = make_config(tmp_path / "b", max_steps=3, save_strategy="steps", save_steps=2)
    interrupted = BCOTrainer(MODEL, args=args, train_dataset=tokenized_train, callbacks=[StopAt(2)])
    interrupted.train()
    saved = json.loads((tmp_path / "b" / "checkpoint-2" / "extra_state.json").read_text())["state"]["running"]
    assert saved["mean"] == pytest.approx(interrupted.running.mean) and saved["count"] == pytest.approx(8)
    resumed = BCOTrainer(MODEL, args=args, train_dataset=tokenized_train)
    resumed.train(resume_from_checkpoint=True)  # the latest checkpoint of output_dir
    assert resumed.state.global_step == 3 and resumed.running.count == pytest.approx(12)
    assert resumed.running.mean == pytest.approx(straight.running.mean, abs=1e-6)
    for (name, param), other in zip(straight.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(param, other, msg=name)


def test_precomputed_reference_log_probs_equal_the_live_reference(tmp_path, tokenized_train):
    reference = perturbed_model()
    args = make_config(tmp_path, precompute_ref_log_probs=True, max_steps=1)
    trainer = BCOTrainer(MODEL, ref_model=reference, args=args, train_dataset=tokenized_train.select(range(6)))
    trainer.train()
    assert trainer.train_dataset.column_names.count("ref_logps") == 1
    assert "ref_kl_logps" not in trainer.train_dataset.column_names
    batch = trainer.data_collator([tokenized_train[i] for i in range(6)])
    with torch.no_grad():
        expected = sequence_logps(reference, batch)
    assert trainer.train_dataset["ref_logps"] == pytest.approx(expected.tolist(), abs=1e-4)


def test_peft_reference_is_the_base_model(tmp_path, tokenized_train):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = BCOTrainer(MODEL, args=make_config(tmp_path), train_dataset=tokenized_train, peft_config=peft_config)
    assert trainer.ref_model is None
    before = snapshot(trainer.model)
    trainer.train()
    moved = [name for name, param in trainer.model.named_parameters() if not torch.equal(param, before[name])]
    assert any("lora_B" in name for name in moved) and all("lora_" in name for name in moved)


def test_eval_metrics_and_compute_metrics(tmp_path, tokenized_train):
    seen = {}

    def compute_metrics(prediction):
        seen["labels"] = prediction.label_ids
        return {"positive_rewards": float((prediction.predictions > 0).mean())}

    trainer = BCOTrainer(
        MODEL, ref_model=perturbed_model(), args=make_config(tmp_path), train_dataset=tokenized_train,
        eval_dataset=load_test_dataset("conversational_unpaired_preference", split="test"),
        compute_metrics=compute_metrics,
    )  # fmt: skip
    metrics = trainer.evaluate()
    for key in ("loss", "delta", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                "logits/rejected", "count/chosen", "positive_rewards"):  # fmt: skip
        assert f"eval_{key}" in metrics, key
    assert metrics["eval_delta"] == 0.0 and trainer.running.count < 1  # no update outside training
    assert sorted(seen["labels"].tolist()) == [0] * 4 + [1] * 4


# ------------------------------------------------------------------------ underlying distribution matching
class _FakeLogisticRegression:
    """Stands in for scikit-learn's: P(desirable) = σ(|x − c_0|² − |x − c_1|²) with the class centroids c_k."""

    instances = []

    def __init__(self, class_weight=None):
        self.class_weight = class_weight
        _FakeLogisticRegression.instances.append(self)

    def fit(self, x, y):
        y = np.asarray(y)
        self.fit_shape, self.fit_labels = x.shape, y
        self.centroids = {label: x[y == label].mean(axis=0) for label in (0, 1)}
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, x):
        score = ((x - self.centroids[0]) ** 2).sum(1) - ((x - self.centroids[1]) ** 2).sum(1)
        desirable = 1 / (1 + np.exp(-score))
        return np.stack([1 - desirable, desirable], axis=1)


def embed(input_ids, attention_mask):
    """Two features per prompt: its mean token id and its length."""
    mask = attention_mask.float()
    return torch.stack([(input_ids * mask).sum(1) / mask.sum(1) / 100, mask.sum(1) / 10], dim=1)


@pytest.fixture
def fake_sklearn(monkeypatch):
    sklearn = types.ModuleType("sklearn")
    linear_model = types.ModuleType("sklearn.linear_model")
    linear_model.LogisticRegression = _FakeLogisticRegression
    sklearn.linear_model = linear_model
    monkeypatch.setitem(sys.modules, "sklearn", sklearn)
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", linear_model)
    monkeypatch.setattr("trl.trainer.bco_trainer.is_sklearn_available", lambda: True)
    _FakeLogisticRegression.instances.clear()


def test_udm_weights_undesirable_losses_by_the_clamped_density_ratio(tmp_path, tokenized_train, fake_sklearn):
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    args = make_config(tmp_path, prompt_sample_size=5, min_density_ratio=0.8, max_density_ratio=1.5)
    trainer = BCOTrainer(
        MODEL, args=args, train_dataset=tokenized_train, embedding_func=embed, embedding_tokenizer=tokenizer
    )
    (classifier,) = _FakeLogisticRegression.instances
    assert classifier.class_weight == "balanced" and classifier.fit_shape == (10, 2)
    assert classifier.fit_labels.tolist() == [1] * 5 + [0] * 5
    dataset = trainer.train_dataset
    undesirable = [i for i, label in enumerate(dataset["label"]) if not label]
    texts = tokenizer.batch_decode(list(dataset.select(undesirable)["prompt_ids"]), skip_special_tokens=True)
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    p = classifier.predict_proba(embed(encoded["input_ids"], encoded["attention_mask"]).numpy())[:, 1]
    expected = np.clip(p / (1 - p + 1e-8), 0.8, 1.5)
    assert [dataset["udm_weight"][i] for i in undesirable] == pytest.approx(expected.tolist(), rel=1e-5)
    assert all(dataset["udm_weight"][i] == 1.0 for i, label in enumerate(dataset["label"]) if label)
    assert len(set(np.round(expected, 6))) > 1  # the weights differ between prompts

    batch = trainer._prepare_inputs(trainer.data_collator([dataset[i] for i in range(6)]))
    weights, labels = batch["udm_weights"], batch["labels"]
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, batch)
    plain = trainer.compute_loss(trainer.model, {k: v for k, v in batch.items() if k != "udm_weights"})
    # At the start ρ = δ = 0, so every example's loss is log 2, weighted by its UDM weight.
    torch.testing.assert_close(loss, (np.log(2) * weights).mean().float(), rtol=1e-5, atol=1e-6)
    assert plain.item() == pytest.approx(np.log(2), abs=1e-6) and labels.any() and (~labels).any()
    trainer.train()  # the weight column reaches the training batches
    assert trainer.state.global_step == 2


def test_udm_needs_scikit_learn_and_both_embedding_arguments(tmp_path, tokenized_train, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    monkeypatch.setattr("trl.trainer.bco_trainer.is_sklearn_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install trl\[scikit\]"):
        BCOTrainer(MODEL, args=make_config(tmp_path), train_dataset=tokenized_train, embedding_func=embed,
                   embedding_tokenizer=tokenizer)  # fmt: skip
    with pytest.raises(ValueError, match="both embedding_func and embedding_tokenizer"):
        BCOTrainer(MODEL, args=make_config(tmp_path), train_dataset=tokenized_train, embedding_func=embed)


def test_bad_inputs_raise_clear_errors(tmp_path, tokenized_train):
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    with pytest.raises(ValueError, match="needs a model"):
        BCOTrainer(args=make_config(tmp_path), train_dataset=tokenized_train)
    with pytest.raises(ValueError, match="same object"):
        BCOTrainer(model, ref_model=model, args=make_config(tmp_path), train_dataset=tokenized_train)
    with pytest.raises(ValueError, match="encoder-decoder"):
        BCOTrainer(MODEL, args=make_config(tmp_path, is_encoder_decoder=True), train_dataset=tokenized_train)
    with pytest.raises(ValueError, match="stepwise supervision"):
        BCOTrainer(MODEL, args=make_config(tmp_path), train_dataset=load_test_dataset("standard_stepwise_supervision"))


def test_bco_script_trains_from_the_command_line_arguments(tmp_path):
    from trl.scripts import bco
    from trl.scripts.utils import parse_script_args
    from trl.testing import get_dataset_path

    args = parse_script_args(
        bco.make_parser(),
        ["--model_name_or_path", MODEL, "--dataset_name", get_dataset_path(), "--dataset_config",
         "standard_unpaired_preference", "--output_dir", str(tmp_path), "--max_steps", "1", "--report_to", "none",
         "--save_strategy", "no", "--per_device_train_batch_size", "2", "--gradient_checkpointing", "false"],
    )  # fmt: skip
    bco.main(*args)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.model_type == "qwen2"
