import os

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from trl import SFTConfig, SFTTrainer
from trl.testing import get_tiny_model_path, get_tiny_tokenizer_path, load_test_dataset

from .testing_utils import snapshot


def make_config(tmp_path, **kwargs) -> SFTConfig:
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
    return SFTConfig(**defaults)


def assert_all_changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    unchanged = [
        name for name, param in model.named_parameters() if name in before and torch.equal(param, before[name])
    ]
    assert not unchanged, f"parameters did not change: {unchanged[:5]}"


@pytest.mark.parametrize(
    "config_name",
    [
        "standard_language_modeling",
        "conversational_language_modeling",
        "standard_prompt_completion",
        "conversational_prompt_completion",
    ],
)
def test_each_format_trains_and_changes_weights(tmp_path, config_name):
    dataset = load_test_dataset(config_name)
    trainer = SFTTrainer(get_tiny_model_path("qwen2"), args=make_config(tmp_path), train_dataset=dataset)
    before = snapshot(trainer.model)
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert_all_changed(trainer.model, before)
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"loss", "entropy", "num_tokens", "mean_token_accuracy"} <= logged


def test_loss_decreases_on_repeated_data(tmp_path):
    dataset = load_test_dataset("standard_language_modeling").select(range(8))
    args = make_config(tmp_path, max_steps=20, learning_rate=3e-3, per_device_train_batch_size=8)
    trainer = SFTTrainer(get_tiny_model_path("qwen2"), args=args, train_dataset=dataset)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.8 * losses[0]


def test_model_instance_and_training_arguments_are_accepted(tmp_path):
    path = get_tiny_model_path("llama")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", max_steps=2, per_device_train_batch_size=2)
    trainer = SFTTrainer(
        model, args=args, processing_class=tokenizer, train_dataset=load_test_dataset("standard_language_modeling")
    )
    assert isinstance(trainer.args, SFTConfig)
    # Llama 3 has no pad token: the EOS token pads.
    assert trainer.pad_token_id == tokenizer.eos_token_id
    trainer.train()


def test_num_tokens_counts_every_real_token(tmp_path):
    dataset = load_test_dataset("standard_language_modeling").select(range(8))
    args = make_config(tmp_path, max_steps=2, per_device_train_batch_size=4)
    trainer = SFTTrainer(get_tiny_model_path("qwen2"), args=args, train_dataset=dataset)
    trainer.train()
    expected = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    logged = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    assert logged[-1] == expected


def test_completion_only_mask_is_exactly_the_completion(tmp_path):
    dataset = load_test_dataset("standard_prompt_completion").select(range(4))
    trainer = SFTTrainer(get_tiny_model_path("qwen2"), args=make_config(tmp_path), train_dataset=dataset)
    tokenizer = trainer.processing_class
    example = dataset[0]
    prepared = trainer.train_dataset[0]
    prompt_ids = tokenizer(example["prompt"])["input_ids"]
    completion_ids = prepared["input_ids"][len(prompt_ids) :]
    assert prepared["completion_mask"] == [0] * len(prompt_ids) + [1] * len(completion_ids)
    assert tokenizer.decode(completion_ids) == example["completion"] + tokenizer.eos_token
    batch = trainer.data_collator([prepared])
    labels = batch["labels"][0]
    assert (labels[: len(prompt_ids)] == -100).all()
    assert labels[len(prompt_ids) :].tolist() == completion_ids


def test_assistant_only_mask_covers_assistant_turns_and_end_of_turn(tmp_path):
    dataset = load_test_dataset("conversational_language_modeling").select(range(4))
    model_path = get_tiny_model_path("qwen2", template="chatml_generation")
    args = make_config(tmp_path, assistant_only_loss=True)
    trainer = SFTTrainer(model_path, args=args, train_dataset=dataset)
    tokenizer = trainer.processing_class
    prepared = trainer.train_dataset[0]
    ids, mask = prepared["input_ids"], prepared["assistant_masks"]
    trained_text = tokenizer.decode([tok for tok, m in zip(ids, mask) if m])
    expected = "".join(m["content"] + "<|im_end|>" for m in dataset[0]["messages"] if m["role"] == "assistant")
    assert trained_text.replace("\n", "") == expected.replace("\n", "")
    trainer.train()


def test_assistant_only_loss_without_generation_markers_raises(tmp_path):
    dataset = load_test_dataset("conversational_language_modeling").select(range(4))
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("chatml"))
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match="generation"):
        SFTTrainer(
            get_tiny_model_path("qwen2"),
            args=make_config(tmp_path, assistant_only_loss=True),
            processing_class=tokenizer,
            train_dataset=dataset,
        )


def test_packing_bfd_keeps_every_token_and_separates_documents(tmp_path):
    dataset = load_test_dataset("standard_language_modeling")
    plain = SFTTrainer(get_tiny_model_path("qwen2"), args=make_config(tmp_path), train_dataset=dataset)
    packed = SFTTrainer(get_tiny_model_path("qwen2"), args=make_config(tmp_path, packing=True), train_dataset=dataset)
    # sdpa: packed rows stay rows (attention per row); only FlashAttention flattens the batch.
    assert not packed.padding_free
    plain_tokens = sorted(tok for row in plain.train_dataset["input_ids"] for tok in row)
    packed_tokens = sorted(tok for row in packed.train_dataset["input_ids"] for tok in row)
    assert plain_tokens == packed_tokens
    assert len(packed.train_dataset) < len(plain.train_dataset)
    row = packed.train_dataset[0]
    assert sum(row["seq_lengths"]) == len(row["input_ids"]) <= 128
    batch = packed.data_collator([row, packed.train_dataset[len(packed.train_dataset) - 1]])
    starts = torch.cumsum(torch.tensor([0] + row["seq_lengths"][:-1]), 0)
    assert "attention_mask" not in batch  # transformers then derives a block-diagonal mask from position_ids
    assert batch["input_ids"].shape[0] == 2
    assert (batch["position_ids"][0, starts] == 0).all()
    # No token is predicted across a document boundary.
    assert (batch["labels"][0, starts] == -100).all()
    packed.train()


def test_packed_padding_free_and_padded_losses_agree(tmp_path):
    dataset = load_test_dataset("standard_language_modeling").select(range(6))
    model = AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2"))
    losses = {}
    for name, kwargs in {"padded": {}, "padding_free": {"padding_free": True}, "packed": {"packing": True}}.items():
        trainer = SFTTrainer(model, args=make_config(tmp_path, max_length=1024, **kwargs), train_dataset=dataset)
        rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
        batch = trainer._prepare_inputs(trainer.data_collator(rows))
        model.eval()
        with torch.no_grad():
            losses[name] = trainer.compute_loss(model, batch).item()
    assert losses["padded"] == pytest.approx(losses["padding_free"], rel=1e-5)
    assert losses["padded"] == pytest.approx(losses["packed"], rel=1e-5)


def test_padding_free_follows_the_attention_implementation(tmp_path):
    dataset = load_test_dataset("standard_language_modeling").select(range(4))
    model = AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2"))
    with pytest.warns(UserWarning, match="FlashAttention"):
        trainer = SFTTrainer(model, args=make_config(tmp_path, padding_free=True), train_dataset=dataset)
    assert trainer.padding_free
    model.config._attn_implementation = "flash_attention_2"  # only read, never run, here
    packed = SFTTrainer(model, args=make_config(tmp_path, packing=True), train_dataset=dataset)
    assert packed.padding_free


def test_gradient_accumulation_matches_large_batch(tmp_path):
    dataset = load_test_dataset("standard_prompt_completion").select(range(8))
    weights = {}
    for name, (batch, accumulation) in {"large": (8, 1), "accumulated": (2, 4)}.items():
        args = make_config(
            tmp_path / name,
            max_steps=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=1.0,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
        )
        trainer = SFTTrainer(get_tiny_model_path("qwen2"), args=args, train_dataset=dataset)
        trainer.train()
        weights[name] = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    for key, value in weights["large"].items():
        torch.testing.assert_close(value, weights["accumulated"][key], rtol=1e-4, atol=1e-5)


def test_dft_loss_is_nll_scaled_by_probability(tmp_path):
    dataset = load_test_dataset("standard_language_modeling").select(range(4))
    model = AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2"))
    model.eval()
    nll = SFTTrainer(model, args=make_config(tmp_path), train_dataset=dataset)
    dft = SFTTrainer(model, args=make_config(tmp_path, loss_type="dft"), train_dataset=dataset)
    batch = nll._prepare_inputs(nll.data_collator([nll.train_dataset[i] for i in range(4)]))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        logps = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        expected_nll = -(logps * mask).sum() / mask.sum()
        expected_dft = -(logps.exp() * logps * mask).sum() / mask.sum()
        assert nll.compute_loss(model, batch).item() == pytest.approx(expected_nll.item(), rel=1e-5)
        assert dft.compute_loss(model, batch).item() == pytest.approx(expected_dft.item(), rel=1e-5)


def test_peft_lora_trains_only_adapters(tmp_path):
    from peft import LoraConfig

    dataset = load_test_dataset("standard_language_modeling")
    trainer = SFTTrainer(
        get_tiny_model_path("qwen2"),
        args=make_config(tmp_path),
        train_dataset=dataset,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:
            assert not torch.equal(param, before[name]), f"{name} did not change"
        elif "lora_" not in name:
            assert torch.equal(param, before[name]), f"base weight {name} changed"


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_peft_virtual_tokens_loss_is_the_nll_of_the_real_tokens(tmp_path, method):
    from peft import PrefixTuningConfig, PromptTuningConfig

    config_class = PromptTuningConfig if method == "prompt_tuning" else PrefixTuningConfig
    dataset = load_test_dataset("standard_prompt_completion").select(range(4))
    trainer = SFTTrainer(
        get_tiny_model_path("qwen2"),
        args=make_config(tmp_path, max_steps=1, per_device_train_batch_size=2, gradient_checkpointing=False),
        train_dataset=dataset,
        eval_dataset=dataset,
        peft_config=config_class(task_type="CAUSAL_LM", num_virtual_tokens=3),
    )
    model = trainer.model
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Prompt tuning prepends its 3 virtual positions to the logits; prefix tuning keeps them in the cache.
        assert logits.shape[1] == batch["input_ids"].shape[1] + (3 if method == "prompt_tuning" else 0)
        logits = logits[:, -batch["input_ids"].shape[1] : -1]
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        logps = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        expected = -(logps * mask).sum() / mask.sum()
        assert trainer.compute_loss(model, batch).item() == pytest.approx(expected.item(), rel=1e-5)
    model.train()
    trainable = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}
    trainer.train()
    assert trainable and all(
        not torch.equal(param, trainable[name]) for name, param in model.named_parameters() if name in trainable
    )
    assert trainer.evaluate()["eval_loss"] > 0


def test_virtual_tokens_refuse_what_would_drop_them(tmp_path):
    from peft import PrefixTuningConfig, PromptTuningConfig

    dataset = load_test_dataset("standard_language_modeling").select(range(4))
    with pytest.raises(ValueError, match="padding_free=False"):
        SFTTrainer(
            get_tiny_model_path("qwen2"),
            args=make_config(tmp_path, padding_free=True),
            train_dataset=dataset,
            peft_config=PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
        )
    with pytest.raises(ValueError, match="gradient_checkpointing=False"):
        SFTTrainer(
            get_tiny_model_path("qwen2"),
            args=make_config(tmp_path, gradient_checkpointing=True),
            train_dataset=dataset,
            peft_config=PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
        )


def test_eval_reports_metrics_for_each_eval_dataset(tmp_path):
    train = load_test_dataset("standard_language_modeling")
    evals = {
        "lm": load_test_dataset("standard_language_modeling", split="test"),
        "pc": load_test_dataset("standard_prompt_completion", split="test"),
    }
    args = make_config(tmp_path, eval_strategy="steps", eval_steps=2, max_steps=2)
    trainer = SFTTrainer(get_tiny_model_path("qwen2"), args=args, train_dataset=train, eval_dataset=evals)
    trainer.train()
    metrics = trainer.evaluate()
    for name in evals:
        assert f"eval_{name}_loss" in metrics
        assert 0.0 <= metrics[f"eval_{name}_mean_token_accuracy"] <= 1.0
        assert metrics[f"eval_{name}_entropy"] > 0


def test_save_reload_and_resume(tmp_path):
    dataset = load_test_dataset("standard_language_modeling")
    args = make_config(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer = SFTTrainer(get_tiny_model_path("qwen2"), args=args, train_dataset=dataset)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(reloaded.state_dict()[name], param.detach())
    assert (tmp_path / "final" / "README.md").read_text().count("SFT") >= 1
    assert os.path.isdir(tmp_path / "checkpoint-2")

    resumed = SFTTrainer(get_tiny_model_path("qwen2"), args=args, train_dataset=dataset)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.state.global_step == 4
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(resumed.model.state_dict()[name], param.detach())


def test_pretokenized_and_iterable_datasets(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("chatml"))
    texts = load_test_dataset("standard_language_modeling")["text"]
    tokenized = Dataset.from_dict({"input_ids": [tokenizer(t)["input_ids"] for t in texts]})
    trainer = SFTTrainer(get_tiny_model_path("qwen2"), args=make_config(tmp_path), train_dataset=tokenized)
    assert trainer.train_dataset["input_ids"] == tokenized["input_ids"]
    trainer.train()

    iterable = load_test_dataset("standard_language_modeling").to_iterable_dataset()
    trainer = SFTTrainer(get_tiny_model_path("qwen2"), args=make_config(tmp_path), train_dataset=iterable)
    trainer.train()
    assert trainer.state.global_step == 3


def test_formatting_func(tmp_path):
    dataset = load_test_dataset("standard_prompt_completion")
    trainer = SFTTrainer(
        get_tiny_model_path("qwen2"),
        args=make_config(tmp_path),
        train_dataset=dataset,
        formatting_func=lambda ex: f"Q:{ex['prompt']} A:{ex['completion']}",
    )
    decoded = trainer.processing_class.decode(trainer.train_dataset[0]["input_ids"])
    assert decoded.startswith(f"Q:{dataset[0]['prompt']} A:")
    trainer.train()


def test_chat_template_path_from_jinja_file(tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    dataset = load_test_dataset("conversational_language_modeling").select(range(4))
    args = make_config(tmp_path, chat_template_path=str(template))
    trainer = SFTTrainer(get_tiny_model_path("gpt2"), args=args, train_dataset=dataset)
    decoded = trainer.processing_class.decode(trainer.train_dataset[0]["input_ids"])
    assert decoded.startswith(f"[{dataset[0]['messages'][0]['role']}]")


# ---------------------------------------------------------------- bad inputs
def test_unknown_dataset_format_raises(tmp_path):
    dataset = Dataset.from_dict({"question": ["a"], "answer": ["b"]})
    with pytest.raises(ValueError, match="dataset_text_field"):
        SFTTrainer(get_tiny_model_path("qwen2"), args=make_config(tmp_path), train_dataset=dataset)


def test_missing_text_column_names_the_field(tmp_path):
    dataset = load_test_dataset("standard_language_modeling")
    with pytest.raises(ValueError, match="content"):
        SFTTrainer(
            get_tiny_model_path("qwen2"),
            args=make_config(tmp_path, dataset_text_field="content"),
            train_dataset=dataset,
        )


def test_max_length_shorter_than_prompt_raises(tmp_path):
    dataset = Dataset.from_dict(
        {"prompt": ["one two three four five six seven eight nine ten"], "completion": [" eleven"]}
    )
    with pytest.raises(ValueError, match="max_length"):
        SFTTrainer(get_tiny_model_path("qwen2"), args=make_config(tmp_path, max_length=3), train_dataset=dataset)


def test_no_pad_and_no_eos_token_raises(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("chatml"))
    tokenizer.pad_token = None
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="pad_token"):
        SFTTrainer(
            get_tiny_model_path("qwen2"),
            args=make_config(tmp_path),
            processing_class=tokenizer,
            train_dataset=load_test_dataset("standard_language_modeling"),
        )


def test_completion_only_loss_on_language_modeling_data_raises(tmp_path):
    with pytest.raises(ValueError, match="prompt-completion"):
        SFTTrainer(
            get_tiny_model_path("qwen2"),
            args=make_config(tmp_path, completion_only_loss=True),
            train_dataset=load_test_dataset("standard_language_modeling"),
        )


def sharegpt(dataset: Dataset) -> Dataset:
    """The same conversations in ShareGPT form: a `conversations` column of `{"from", "value"}` turns."""
    speakers = {"user": "human", "assistant": "gpt", "system": "system"}
    rows = [
        [{"from": speakers[m["role"]], "value": m["content"]} for m in messages] for messages in dataset["messages"]
    ]
    return Dataset.from_dict({"conversations": rows})


def test_sharegpt_data_is_converted_before_the_chat_template_checks(tmp_path):
    chatml = load_test_dataset("conversational_language_modeling").select(range(4))
    model_path = get_tiny_model_path("qwen2", template="chatml_generation")
    args = make_config(tmp_path, assistant_only_loss=True)
    converted = SFTTrainer(model_path, args=args, train_dataset=sharegpt(chatml)).train_dataset
    reference = SFTTrainer(model_path, args=args, train_dataset=chatml).train_dataset
    assert converted["input_ids"] == reference["input_ids"]
    assert converted["assistant_masks"] == reference["assistant_masks"] and any(converted["assistant_masks"][0])
    # Without assistant_only_loss the checks run too: a tokenizer without a chat template is refused up front.
    with pytest.raises(ValueError, match="chat_template_path"):
        SFTTrainer(get_tiny_model_path("gpt2"), args=make_config(tmp_path), train_dataset=sharegpt(chatml))


def test_conversational_data_without_chat_template_raises(tmp_path):
    with pytest.raises(ValueError, match="chat_template_path"):
        SFTTrainer(
            get_tiny_model_path("gpt2"),
            args=make_config(tmp_path),
            train_dataset=load_test_dataset("conversational_language_modeling"),
        )


def test_invalid_config_values_raise_before_loading(tmp_path):
    with pytest.raises(ValueError, match="loss_type"):
        make_config(tmp_path, loss_type="mse")
    with pytest.raises(ValueError, match="packing_strategy"):
        make_config(tmp_path, packing=True, packing_strategy="greedy")
    with pytest.raises(ValueError, match="model_init_kwargs"):
        SFTTrainer(
            AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2")),
            args=make_config(tmp_path, model_init_kwargs={"dtype": "float32"}),
            train_dataset=load_test_dataset("standard_language_modeling"),
        )


def test_unknown_dataset_kwargs_and_cpu_activation_offloading_raise(tmp_path):
    dataset = load_test_dataset("standard_language_modeling")
    with pytest.raises(ValueError, match="skip_prepare_dataset"):
        SFTTrainer(
            get_tiny_model_path("qwen2"),
            args=make_config(tmp_path, dataset_kwargs={"add_eos": True}),
            train_dataset=dataset,
        )
    with pytest.raises(ValueError, match="activation_offloading=False"):
        SFTTrainer(
            get_tiny_model_path("qwen2"), args=make_config(tmp_path, activation_offloading=True), train_dataset=dataset
        )


def test_router_aux_loss_coef_on_dense_model_raises(tmp_path):
    with pytest.raises(ValueError, match="mixture-of-experts"):
        SFTTrainer(
            get_tiny_model_path("qwen2"),
            args=make_config(tmp_path, router_aux_loss_coef=0.01),
            train_dataset=load_test_dataset("standard_language_modeling"),
        )


def test_model_init_kwargs_dtype_string(tmp_path):
    args = make_config(tmp_path, model_init_kwargs={"dtype": "bfloat16"})
    trainer = SFTTrainer(
        get_tiny_model_path("qwen2"), args=args, train_dataset=load_test_dataset("standard_language_modeling")
    )
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
