import dataclasses
import math
import warnings

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl.testing import get_tiny_model_path, get_tiny_tokenizer_path, load_test_dataset
from trl.trainer.collators import DataCollatorForUnpairedPreference
from trl.trainer.kto_config import KTOConfig
from trl.trainer.kto_trainer import KTOTrainer, warn_if_unbalanced
from trl.trainer.preference_data import truncate_prompt_completions
from trl.trainer.unpaired_data import (
    kl_pairs_dataset,
    prepare_unpaired_dataset,
    tokenize_unpaired_example,
)

from .testing_utils import StopAt, perturbed_model, snapshot


MODEL = get_tiny_model_path("qwen2")


def make_config(tmp_path, **kwargs) -> KTOConfig:
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, per_device_eval_batch_size=4,
        max_steps=2, learning_rate=1e-2, beta=0.5, logging_steps=1, save_strategy="no", gradient_checkpointing=False,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    defaults.update(kwargs)
    return KTOConfig(**defaults)


def changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, param in model.named_parameters() if not torch.equal(param, before[name])]


def sequence_logps(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Independent sequence log-probs `[B]` from the full logits (sum over completion tokens)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    logps = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logps * completion_mask[:, 1:]).sum(-1)


@pytest.fixture(scope="module")
def tokenized_train():
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    dataset = load_test_dataset("standard_unpaired_preference")
    return prepare_unpaired_dataset(dataset, tokenizer, trainer_name="KTOTrainer", eos_token=tokenizer.eos_token)


# ------------------------------------------------------------------------------------------------- config
def test_config_defaults_follow_the_reference():
    args = KTOConfig(output_dir="out")
    expected = {
        "learning_rate": 1e-6, "logging_steps": 10, "gradient_checkpointing": True, "bf16": False,
        "train_sampling_strategy": "sequential", "model_init_kwargs": None, "trust_remote_code": False,
        "router_aux_loss_coef": None, "disable_dropout": True, "dataset_num_proc": None, "max_length": 1024,
        "pad_to_multiple_of": None, "precompute_ref_log_probs": False, "precompute_ref_batch_size": None,
        "loss_type": "kto", "beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0,
        "activation_offloading": False, "sync_ref_model": False, "ref_model_mixup_alpha": 0.6,
        "ref_model_sync_steps": 512,
        # seed-era fields
        "max_prompt_length": None, "max_completion_length": None, "label_pad_token_id": -100, "padding_value": None,
        "truncation_mode": "keep_end", "generate_during_eval": False, "is_encoder_decoder": None,
        "ref_model_init_kwargs": None, "use_liger_loss": False, "base_model_attribute_name": "model",
    }  # fmt: skip
    assert {name: getattr(args, name) for name in expected} == expected
    assert KTOConfig(output_dir="out", model_init_kwargs='{"dtype": "float32"}').model_init_kwargs == {
        "dtype": "float32"
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss_type": "sigmoid"}, "Unknown loss_type"),
        ({"beta": 0.0}, "beta"),
        ({"per_device_train_batch_size": 1}, "per_device_train_batch_size >= 2"),
        ({"precompute_ref_log_probs": True, "train_sampling_strategy": "random"}, "sequential"),
        ({"truncation_mode": "middle"}, "truncation_mode"),
        ({"max_prompt_length": 0}, "max_prompt_length"),
        ({"desirable_weight": -1.0}, "desirable_weight"),
    ],
)
def test_invalid_config_raises_before_loading(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KTOConfig(output_dir="out", **kwargs)


def test_batch_size_one_is_fine_without_the_kl_term():
    assert KTOConfig(output_dir="out", loss_type="apo_zero_unpaired", per_device_train_batch_size=1).beta == 0.1


# --------------------------------------------------------------------------------------------------- data
def test_unpaired_example_tokenises_like_the_whole_text():
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("chatml"))
    example = {"prompt": "What is 2 plus 2?", "completion": " The answer is 4.", "label": True}
    ids = tokenize_unpaired_example(example, tokenizer, eos_token=tokenizer.eos_token)
    whole = tokenizer(example["prompt"] + example["completion"] + tokenizer.eos_token)["input_ids"]
    assert ids["prompt_ids"] + ids["completion_ids"] == whole
    assert ids["completion_ids"][-1] == tokenizer.eos_token_id


def test_conversational_example_is_rendered_with_the_chat_template():
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("llama3"))
    example = load_test_dataset("conversational_unpaired_preference")[0]
    ids = tokenize_unpaired_example(example, tokenizer)
    whole = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True, return_dict=True)
    assert ids["prompt_ids"] + ids["completion_ids"] == list(whole["input_ids"])


def test_truncation_keeps_the_chosen_end_of_the_prompt():
    example = {"prompt_ids": [1, 2, 3, 4, 5], "completion_ids": [6, 7, 8]}
    assert truncate_prompt_completions(example, ("completion",), 2, 2) == {
        "prompt_ids": [4, 5],
        "completion_ids": [6, 7],
    }
    assert truncate_prompt_completions(example, ("completion",), 2, None, "keep_start") == {
        "prompt_ids": [1, 2],
        "completion_ids": [6, 7, 8],
    }


def test_paired_data_is_unpaired_text_or_tokenised():
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    paired = load_test_dataset("standard_preference").select(range(3))
    unpaired = prepare_unpaired_dataset(paired, tokenizer, trainer_name="KTOTrainer")
    assert unpaired["label"] == [True] * 3 + [False] * 3
    assert tokenizer.decode(unpaired[0]["completion_ids"]) == paired[0]["chosen"]
    assert tokenizer.decode(unpaired[3]["completion_ids"]) == paired[0]["rejected"]
    tokenised = Dataset.from_dict({"prompt_ids": [[1, 2]], "chosen_ids": [[3]], "rejected_ids": [[4, 5]]})
    assert prepare_unpaired_dataset(tokenised, tokenizer, trainer_name="KTOTrainer").to_dict() == {
        "prompt_ids": [[1, 2], [1, 2]], "completion_ids": [[3], [4, 5]], "label": [True, False],
    }  # fmt: skip
    implicit = load_test_dataset("standard_implicit_prompt_preference").select(range(1))
    row = prepare_unpaired_dataset(implicit, tokenizer, trainer_name="KTOTrainer")[0]
    assert tokenizer.decode(row["prompt_ids"] + row["completion_ids"]) == implicit[0]["chosen"]


def test_kl_pairs_are_the_pairs_the_collator_builds():
    dataset = Dataset.from_dict(
        {"prompt_ids": [[i] for i in range(7)], "completion_ids": [[10 + i] for i in range(7)], "label": [True] * 7}
    )
    pairs = kl_pairs_dataset(dataset, batch_size=3)
    assert pairs["completion_ids"] == [[11], [12], [10], [14], [15], [13], [16]]
    collator = DataCollatorForUnpairedPreference(pad_token_id=0)
    for start in (0, 3, 6):
        batch = collator([dataset[i] for i in range(start, min(start + 3, 7))])
        expected = [p + c for p, c in zip(pairs["prompt_ids"][start : start + 3], pairs["completion_ids"][start:])]
        assert batch["kl_input_ids"].tolist() == expected


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    "config_name",
    [
        "standard_unpaired_preference",
        "conversational_unpaired_preference",
        "standard_preference",
        "conversational_implicit_prompt_preference",
    ],
)
def test_each_dataset_format_trains_and_changes_weights(tmp_path, config_name):
    trainer = KTOTrainer(MODEL, args=make_config(tmp_path), train_dataset=load_test_dataset(config_name))
    before = snapshot(trainer.model)
    trainer.train()
    unchanged = [name for name, param in trainer.model.named_parameters() if torch.equal(param, before[name])]
    assert not unchanged, unchanged[:5]
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(0.5, abs=1e-6)  # policy == reference copy: 1 − σ(0) for every example
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert first["count/chosen"] + first["count/rejected"] == 4 and "kl" in first


def test_apo_zero_unpaired_trains_without_kl_rows(tmp_path, tokenized_train):
    trainer = KTOTrainer(
        MODEL, args=make_config(tmp_path, loss_type="apo_zero_unpaired"), train_dataset=tokenized_train
    )
    assert not trainer.data_collator.calculate_kl
    before = snapshot(trainer.model)
    trainer.train()
    assert len(changed(trainer.model, before)) == len(before)
    first = trainer.state.log_history[0]
    # At the first step r = 0: desirable 1 − σ(0) = 0.5, undesirable σ(0) = 0.5.
    assert first["loss"] == pytest.approx(0.5, abs=1e-6) and "kl" not in first


def test_loss_on_a_hand_built_batch_matches_the_formula(tmp_path, tokenized_train):
    args = make_config(tmp_path, beta=2.0, desirable_weight=2.0, undesirable_weight=0.5)
    reference = perturbed_model()
    with pytest.warns(UserWarning, match="outside the range"):  # 2·24 : 0.5·24 is unbalanced on purpose
        trainer = KTOTrainer(MODEL, ref_model=reference, args=args, train_dataset=tokenized_train)
    rows = [i for i, label in enumerate(tokenized_train["label"]) if label][:2]
    rows += [i for i, label in enumerate(tokenized_train["label"]) if not label][:3]
    batch = trainer._prepare_inputs(trainer.data_collator([tokenized_train[i] for i in rows]))
    model = trainer.model.eval()
    loss = trainer.compute_loss(model, batch)

    with torch.no_grad():
        policy = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        ref = sequence_logps(reference, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        kl_rows = batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_completion_mask"]
        kl = (sequence_logps(model, *kl_rows) - sequence_logps(reference, *kl_rows)).mean().clamp(min=0)
    r = policy - ref
    expected = torch.cat(
        [2.0 * (1 - torch.sigmoid(2.0 * (r[:2] - kl))), 0.5 * (1 - torch.sigmoid(2.0 * (kl - r[2:])))]
    )
    assert kl > 0  # the perturbed reference makes the reference point matter
    torch.testing.assert_close(loss, expected.mean(), rtol=1e-5, atol=1e-6)
    assert trainer._metrics["eval"]["kl"] == [pytest.approx(kl.item(), abs=1e-4)]
    loss.backward()  # differentiable through the completion rows
    assert any(param.grad is not None for param in model.parameters())


def test_kl_estimate_is_averaged_over_processes_before_the_clamp(tmp_path, tokenized_train, monkeypatch):
    trainer = KTOTrainer(MODEL, ref_model=perturbed_model(), args=make_config(tmp_path), train_dataset=tokenized_train)
    batch = trainer._prepare_inputs(trainer.data_collator([tokenized_train[i] for i in range(4)]))
    model = trainer.model.eval()
    trainer.compute_loss(model, batch)
    (local,) = trainer._metrics["eval"].pop("kl")
    # A second process whose estimate is -3·local: the global mean is -local, clamped to 0; alone it is local > 0.
    monkeypatch.setattr(trainer.accelerator, "gather", lambda t: torch.cat([t, -3 * t]) if t.numel() == 1 else t)
    trainer.compute_loss(model, batch)
    assert local > 0 and trainer._metrics["eval"]["kl"] == [0.0]


def test_precomputed_reference_matches_the_batches_it_is_used_in(tmp_path, tokenized_train):
    args = make_config(tmp_path, precompute_ref_log_probs=True, precompute_ref_batch_size=3)
    reference = perturbed_model()
    trainer = KTOTrainer(MODEL, ref_model=reference, args=args, train_dataset=tokenized_train.select(range(10)))
    dataset = trainer._with_ref_log_probs(trainer.train_dataset, 4, "train")
    live = KTOTrainer(MODEL, ref_model=reference, args=make_config(tmp_path), train_dataset=tokenized_train)
    for start in (0, 4, 8):  # the training batches: consecutive blocks of 4 (the last one shorter)
        rows = [dataset[i] for i in range(start, min(start + 4, 10))]
        ref_logps, ref_kl_logps = live.compute_ref_log_probs(live.data_collator(rows))
        assert [row["ref_logps"] for row in rows] == pytest.approx(ref_logps.tolist(), abs=1e-4)
        assert [row["ref_kl_logps"] for row in rows] == pytest.approx(ref_kl_logps.tolist(), abs=1e-4)
    loader = trainer.get_train_dataloader()
    first = next(iter(loader))
    assert (
        first["input_ids"].tolist()
        == trainer.data_collator([trainer.train_dataset[i] for i in range(4)])["input_ids"].tolist()
    )  # sequential reading


def test_sequential_sampling_reads_batches_in_dataset_order(tmp_path, tokenized_train):
    raw = load_test_dataset("standard_unpaired_preference")
    trainer = KTOTrainer(MODEL, args=make_config(tmp_path), train_dataset=raw)
    # Preparation tokenises in place: no row moves (the reference keeps the order too).
    assert trainer.train_dataset["completion_ids"] == tokenized_train["completion_ids"]
    assert trainer.train_dataset["label"] == raw["label"]
    for index, batch in zip(range(3), trainer.get_train_dataloader()):
        rows = [tokenized_train[i] for i in range(4 * index, 4 * index + 4)]
        assert batch["labels"].tolist() == raw["label"][4 * index : 4 * index + 4]
        expected = [row["prompt_ids"] + row["completion_ids"] for row in rows]
        assert [
            ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
        ] == expected
        # The KL pairs mismatch prompt i with completion i + 1 of the same batch (cyclically).
        kl = [row["prompt_ids"] + rows[(i + 1) % 4]["completion_ids"] for i, row in enumerate(rows)]
        kl_ids = zip(batch["kl_input_ids"], batch["kl_attention_mask"])
        assert [ids[mask.bool()].tolist() for ids, mask in kl_ids] == kl


def test_peft_reference_disables_adapters_without_a_copy(tmp_path, tokenized_train, monkeypatch):
    from peft import LoraConfig

    import trl.trainer.reference as reference_module

    def no_copy(*args, **kwargs):
        raise AssertionError("a reference copy was made")

    monkeypatch.setattr(reference_module, "create_reference_model", no_copy)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = KTOTrainer(MODEL, args=make_config(tmp_path), train_dataset=tokenized_train, peft_config=peft_config)
    assert trainer.ref_model is None
    before = snapshot(trainer.model)
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # lora_B starts at 0
    moved = changed(trainer.model, before)
    assert any("lora_B" in name for name in moved) and all("lora_" in name for name in moved)
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert "2402.01306" in (tmp_path / "adapter" / "README.md").read_text()  # the model card cites KTO


# -------------------------------------------------------------------------------------------- evaluation
def test_eval_metrics_and_compute_metrics(tmp_path, tokenized_train):
    seen = {}

    def compute_metrics(prediction):
        seen["predictions"], seen["labels"] = prediction.predictions, prediction.label_ids
        return {"reward_auc_proxy": float((prediction.predictions > 0).mean())}

    evals = {
        "std": load_test_dataset("standard_unpaired_preference", split="test"),
        "conv": load_test_dataset("conversational_unpaired_preference", split="test"),
    }
    trainer = KTOTrainer(
        MODEL, ref_model=perturbed_model(), args=make_config(tmp_path), train_dataset=tokenized_train,
        eval_dataset=evals, compute_metrics=compute_metrics,
    )  # fmt: skip
    metrics = trainer.evaluate()
    for name in evals:
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                    "logps/rejected", "logits/chosen", "logits/rejected", "rewards/chosen_sum", "count/chosen",
                    "count/rejected", "reward_auc_proxy"):  # fmt: skip
            assert f"eval_{name}_{key}" in metrics, key
        prefix = f"eval_{name}_"
        assert metrics[prefix + "count/chosen"] + metrics[prefix + "count/rejected"] == 8
        mean = metrics[prefix + "rewards/chosen_sum"] / metrics[prefix + "count/chosen"]
        assert metrics[prefix + "rewards/chosen"] == pytest.approx(mean)
        margin = metrics[prefix + "rewards/chosen"] - metrics[prefix + "rewards/rejected"]
        assert metrics[prefix + "rewards/margins"] == pytest.approx(margin)
    assert seen["predictions"].shape == (8,) and sorted(seen["labels"].tolist()) == [0] * 4 + [1] * 4


def test_save_and_resume_continue_the_same_run(tmp_path, tokenized_train):
    straight = KTOTrainer(MODEL, args=make_config(tmp_path / "a", max_steps=3), train_dataset=tokenized_train)
    straight.train()
    args = make_config(tmp_path / "b", max_steps=3, save_strategy="steps", save_steps=2)
    interrupted = KTOTrainer(MODEL, args=args, train_dataset=tokenized_train, callbacks=[StopAt(2)])
    interrupted.train()
    checkpoint = tmp_path / "b" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").exists()
    resumed = KTOTrainer(MODEL, args=args, train_dataset=tokenized_train)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 3
    for (name, param), other in zip(straight.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(param, other, msg=name)


# ------------------------------------------------------------------------------------------------ warnings
def test_unbalanced_classes_warn_with_weights_that_fix_them(tmp_path):
    data = Dataset.from_dict({"label": [True] * 8 + [False] * 2})
    with pytest.warns(UserWarning, match=r"= 4, outside the range \[1, 4/3\].*undesirable_weight=3"):
        warn_if_unbalanced(data, 1.0, 1.0)
    with pytest.warns(UserWarning, match="desirable_weight=4"):
        warn_if_unbalanced(Dataset.from_dict({"label": [True] * 2 + [False] * 8}), 1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_unbalanced(data, 1.0, 3.0)  # 8 : 6 = 4/3 is inside the range
        warn_if_unbalanced(Dataset.from_dict({"label": [True] * 4}), 1.0, 1.0)  # one kind only: allowed
    data = load_test_dataset("standard_unpaired_preference")
    unbalanced = data.select([i for i, label in enumerate(data["label"]) if label] + [1, 3, 5])
    with pytest.warns(UserWarning, match="desirable_weight"):
        KTOTrainer(MODEL, args=make_config(tmp_path), train_dataset=unbalanced)


def test_bad_inputs_raise_clear_errors(tmp_path, tokenized_train):
    from peft import LoraConfig

    args = make_config(tmp_path)
    with pytest.raises(ValueError, match="language modeling"):
        KTOTrainer(MODEL, args=args, train_dataset=load_test_dataset("standard_language_modeling"))
    with pytest.raises(ValueError, match="'label' column"):
        KTOTrainer(MODEL, args=args, train_dataset=load_test_dataset("standard_prompt_completion"))
    with pytest.raises(ValueError, match="boolean 'label'"):
        KTOTrainer(
            MODEL, args=args, train_dataset=Dataset.from_dict({"prompt": ["a"], "completion": ["b"], "label": ["yes"]})
        )
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    with pytest.raises(ValueError, match="same object"):
        KTOTrainer(model, ref_model=model, args=args, train_dataset=tokenized_train)
    with pytest.raises(ValueError, match="drop ref_model"):
        KTOTrainer(MODEL, ref_model=MODEL, args=args, train_dataset=tokenized_train, peft_config=LoraConfig(r=2))
    with pytest.raises(ValueError, match="model_init"):
        KTOTrainer(MODEL, args=args, train_dataset=tokenized_train, model_init=lambda: model)
    with pytest.raises(ValueError, match="encoder-decoder"):
        KTOTrainer(MODEL, args=make_config(tmp_path, is_encoder_decoder=True), train_dataset=tokenized_train)
    with pytest.raises(ValueError, match="train_dataset"):
        KTOTrainer(MODEL, args=args)
    with pytest.raises((ValueError, ImportError), match="liger"):
        KTOTrainer(MODEL, args=make_config(tmp_path, use_liger_loss=True), train_dataset=tokenized_train)
    with pytest.raises(ValueError, match="activation_offloading"):
        KTOTrainer(MODEL, args=make_config(tmp_path, activation_offloading=True), train_dataset=tokenized_train)


def test_plain_training_arguments_are_converted(tmp_path, tokenized_train):
    from transformers import TrainingArguments

    base = TrainingArguments(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2)
    trainer = KTOTrainer(MODEL, args=base, train_dataset=tokenized_train.select(range(4)))
    assert isinstance(trainer.args, KTOConfig) and trainer.args.per_device_train_batch_size == 2
    fields = {f.name for f in dataclasses.fields(KTOConfig)}
    assert {"desirable_weight", "undesirable_weight", "loss_type"} <= fields


def test_kto_script_trains_from_the_command_line_arguments(tmp_path):
    from trl.scripts import kto
    from trl.scripts.utils import parse_script_args
    from trl.testing import get_dataset_path

    args = parse_script_args(
        kto.make_parser(),
        ["--model_name_or_path", MODEL, "--dataset_name", get_dataset_path(), "--dataset_config",
         "conversational_preference", "--output_dir", str(tmp_path), "--max_steps", "1", "--report_to", "none",
         "--save_strategy", "no", "--per_device_train_batch_size", "2", "--desirable_weight", "1.2",
         "--gradient_checkpointing", "false"],
    )  # fmt: skip
    assert args[1].desirable_weight == 1.2 and math.isclose(args[1].learning_rate, 1e-6)
    kto.main(*args)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.model_type == "qwen2"
