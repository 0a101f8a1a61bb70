import json
import os
import re
import runpy
from pathlib import Path

import pytest
import torch
import transformers
from datasets import load_dataset
from transformers import AutoConfig, AutoTokenizer

from trl.testing import (
    DATASET_CONFIGS,
    TINY_ARCHITECTURES,
    build_tiny_model,
    build_tiny_tokenizer,
    get_dataset_path,
    get_tiny_model_path,
    get_tiny_tokenizer_path,
    load_test_dataset,
    read_chat_template,
)


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What color is the sky?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And grass?"},
    {"role": "assistant", "content": "Green."},
]
EXPECTED_RENDERING = {
    "chatml": (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat color is the sky?<|im_end|>\n"
        "<|im_start|>assistant\nBlue.<|im_end|>\n"
        "<|im_start|>user\nAnd grass?<|im_end|>\n"
        "<|im_start|>assistant\nGreen.<|im_end|>\n"
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat color is the sky?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nBlue.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd grass?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nGreen.<|eot_id|>"
    ),
}
EXPECTED_RENDERING["chatml_generation"] = EXPECTED_RENDERING["chatml"]
GENERATION_PROMPT = {
    "chatml": "<|im_start|>assistant\n",
    "chatml_generation": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
}
CHAT_TEMPLATES = ("chatml", "chatml_generation", "llama3")
AUTO_CLASSES = {
    "qwen2": (transformers.AutoModelForCausalLM, "Qwen2ForCausalLM"),
    "qwen3": (transformers.AutoModelForCausalLM, "Qwen3ForCausalLM"),
    "llama": (transformers.AutoModelForCausalLM, "LlamaForCausalLM"),
    "gpt2": (transformers.AutoModelForCausalLM, "GPT2LMHeadModel"),
    "qwen3-moe": (transformers.AutoModelForCausalLM, "Qwen3MoeForCausalLM"),
    "gpt-neox": (transformers.AutoModelForCausalLM, "GPTNeoXForCausalLM"),
    "gemma2": (transformers.AutoModelForCausalLM, "Gemma2ForCausalLM"),
    "phi3": (transformers.AutoModelForCausalLM, "Phi3ForCausalLM"),
    "cohere2": (transformers.AutoModelForCausalLM, "Cohere2ForCausalLM"),
    "gpt-oss": (transformers.AutoModelForCausalLM, "GptOssForCausalLM"),
    "qwen2-seq-cls": (transformers.AutoModelForSequenceClassification, "Qwen2ForSequenceClassification"),
    "qwen3-moe-seq-cls": (transformers.AutoModelForSequenceClassification, "Qwen3MoeForSequenceClassification"),
    "llama-seq-cls": (transformers.AutoModelForSequenceClassification, "LlamaForSequenceClassification"),
    "gpt2-seq-cls": (transformers.AutoModelForSequenceClassification, "GPT2ForSequenceClassification"),
    "gpt-neox-seq-cls": (transformers.AutoModelForSequenceClassification, "GPTNeoXForSequenceClassification"),
    "gemma2-seq-cls": (transformers.AutoModelForSequenceClassification, "Gemma2ForSequenceClassification"),
    "phi3-seq-cls": (transformers.AutoModelForSequenceClassification, "Phi3ForSequenceClassification"),
    "gpt-oss-seq-cls": (transformers.AutoModelForSequenceClassification, "GptOssForSequenceClassification"),
    "qwen2-token-cls": (transformers.AutoModelForTokenClassification, "Qwen2ForTokenClassification"),
    "llama-token-cls": (transformers.AutoModelForTokenClassification, "LlamaForTokenClassification"),
    "gemma2-token-cls": (transformers.AutoModelForTokenClassification, "Gemma2ForTokenClassification"),
    "t5": (transformers.AutoModelForSeq2SeqLM, "T5ForConditionalGeneration"),
}
EXPECTED_COLUMNS = {
    "language_modeling": {"standard": ["text"], "conversational": ["messages"]},
    "prompt_only": ["prompt"],
    "prompt_completion": ["prompt", "completion"],
    "preference": ["prompt", "chosen", "rejected"],
    "implicit_prompt_preference": ["chosen", "rejected"],
    "unpaired_preference": ["prompt", "completion", "label"],
    "stepwise_supervision": ["prompt", "completions", "labels"],
    "tool_calling": ["messages", "tools"],
}


def _expected_columns(config_name: str) -> list[str]:
    kind, _, dataset_type = config_name.partition("_")
    columns = EXPECTED_COLUMNS[dataset_type]
    return columns[kind] if isinstance(columns, dict) else columns


def _render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


# Determinism (the cache itself is tested in test_testing_cache.py)


def test_model_weights_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(0)
    expected_draw = torch.rand(3)
    torch.manual_seed(0)
    first = build_tiny_model("qwen2").state_dict()
    assert torch.equal(torch.rand(3), expected_draw)
    second = build_tiny_model("qwen2").state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


# Tokenizers


@pytest.mark.parametrize(
    "template, bos, eos, pad",
    [
        ("chatml", None, "<|im_end|>", "<|endoftext|>"),
        ("chatml_generation", None, "<|im_end|>", "<|endoftext|>"),
        ("llama3", "<|begin_of_text|>", "<|eot_id|>", None),
        (None, "<|endoftext|>", "<|endoftext|>", None),
        ("none", "<|endoftext|>", "<|endoftext|>", None),
    ],
)
def test_tokenizer_special_tokens(template, bos, eos, pad):
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path(template))
    assert isinstance(tokenizer, transformers.PreTrainedTokenizerFast)
    assert len(tokenizer) == 1024
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (bos, eos, pad)
    assert tokenizer.convert_ids_to_tokens(0) == "<|endoftext|>"
    assert (tokenizer.chat_template is None) == (template in (None, "none"))
    # Every special token is a single id.
    for token in (bos, eos, pad):
        if token is not None:
            assert len(tokenizer.encode(token, add_special_tokens=False)) == 1


def test_llama3_tokenizer_prepends_bos_only():
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("llama3"))
    ids = tokenizer("Hello there")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids[1:] == tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    assert tokenizer.eos_token_id not in ids


@pytest.mark.parametrize(
    "text",
    [
        "The sky is blue.",
        "  leading and trailing spaces  ",
        "Tabs\tand\nnew lines\r\n",
        "Ünïcödé, 日本語, emoji 🙂 and ✓",
        'JSON {"a": [1, 2.5, null]} <tool_call>',
    ],
)
def test_tokenizer_round_trip(text):
    tokenizer = build_tiny_tokenizer("chatml")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_tool_tags_are_single_tokens_kept_when_skipping_special_tokens():
    tokenizer = build_tiny_tokenizer("chatml")
    ids = tokenizer("<tool_call>x</tool_call><|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<tool_call>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<tool_call>x</tool_call>"


def test_unknown_template_raises():
    with pytest.raises(ValueError, match="Unknown template"):
        get_tiny_tokenizer_path("vicuna")


# Chat templates


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_chat_template_exact_rendering(template):
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path(template))
    assert _render(tokenizer, CONVERSATION) == EXPECTED_RENDERING[template]
    with_prompt = _render(tokenizer, CONVERSATION[:4], add_generation_prompt=True)
    assert with_prompt == _render(tokenizer, CONVERSATION[:4]) + GENERATION_PROMPT[template]


def test_chatml_generation_is_chatml_plus_markers():
    marked = read_chat_template("chatml_generation")
    assert "{%- generation %}" in marked and "{%- endgeneration %}" in marked
    assert "generation %}" not in read_chat_template("chatml")
    chatml, marked_tokenizer = build_tiny_tokenizer("chatml"), build_tiny_tokenizer("chatml_generation")
    row = load_test_dataset("conversational_tool_calling")[0]
    for kwargs in ({}, {"tools": row["tools"]}):
        assert _render(chatml, row["messages"], **kwargs) == _render(marked_tokenizer, row["messages"], **kwargs)


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_chat_templates_render_tools_and_tool_calls(template):
    tokenizer = build_tiny_tokenizer(template)
    row = load_test_dataset("conversational_tool_calling")[0]
    text = _render(tokenizer, row["messages"], tools=row["tools"])
    assert json.dumps(row["tools"][0]) in text
    call = row["messages"][1]["tool_calls"][0]["function"]
    assert f'{{"name": "{call["name"]}", ' in text
    assert json.dumps(call["arguments"]) in text
    assert row["messages"][2]["content"] in text and row["messages"][3]["content"] in text


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
@pytest.mark.parametrize("config_name", ["conversational_prompt_completion", "conversational_tool_calling"])
def test_chat_templates_are_prefix_preserving(template, config_name):
    tokenizer = build_tiny_tokenizer(template)
    for row in load_test_dataset(config_name, "test"):
        if "messages" in row:
            full, tools = row["messages"], row["tools"]
            prompts = [full[:cut] for cut in range(1, len(full))]
        else:
            full, tools, prompts = row["prompt"] + row["completion"], None, [row["prompt"]]
        rendered = _render(tokenizer, full, tools=tools)
        for prompt in prompts:
            assert rendered.startswith(_render(tokenizer, prompt, tools=tools))
            if full[len(prompt)]["role"] == "assistant":
                assert rendered.startswith(_render(tokenizer, prompt, tools=tools, add_generation_prompt=True))


def _masked_spans(input_ids: list[int], mask: list[int]) -> list[list[int]]:
    spans, current = [], []
    for token_id, flag in zip(input_ids, mask):
        if flag:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


def test_assistant_mask_covers_exactly_assistant_tokens_and_end_of_turn():
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("chatml_generation"))
    encoded = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected_spans = [
        tokenizer.encode("Blue.", add_special_tokens=False) + [im_end],
        tokenizer.encode("Green.", add_special_tokens=False) + [im_end],
    ]
    assert _masked_spans(encoded["input_ids"], encoded["assistant_masks"]) == expected_spans
    # The mask is 1 only there: the count matches the spans and the tail "\n" after the last <|im_end|> is 0.
    assert sum(encoded["assistant_masks"]) == sum(len(span) for span in expected_spans)
    assert encoded["assistant_masks"][-1] == 0


def test_assistant_mask_covers_tool_calls():
    tokenizer = build_tiny_tokenizer("chatml_generation")
    row = load_test_dataset("conversational_tool_calling")[0]
    encoded = tokenizer.apply_chat_template(
        row["messages"], tools=row["tools"], return_dict=True, return_assistant_tokens_mask=True
    )
    spans = [tokenizer.decode(span) for span in _masked_spans(encoded["input_ids"], encoded["assistant_masks"])]
    call = row["messages"][1]["tool_calls"][0]["function"]
    arguments = json.dumps(call["arguments"])
    assert spans == [
        f'<tool_call>\n{{"name": "{call["name"]}", "arguments": {arguments}}}\n</tool_call><|im_end|>',
        row["messages"][3]["content"] + "<|im_end|>",
    ]


# Models


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_every_arch_loads_and_runs(arch):
    path = get_tiny_model_path(arch)
    auto_class, class_name = AUTO_CLASSES[arch]
    model = auto_class.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == class_name
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer) == 1024
    assert model.config.eos_token_id == tokenizer.eos_token_id
    # Archs without a pad token (llama, gpt2), like their real counterparts, get an unpadded batch of one.
    texts = ["The sky is blue.", "Hi"] if tokenizer.pad_token is not None else ["The sky is blue."]
    inputs = tokenizer(texts, return_tensors="pt", padding=len(texts) > 1)
    batch, length = inputs["input_ids"].shape
    with torch.no_grad():
        if arch == "t5":
            logits = model(**inputs, decoder_input_ids=inputs["input_ids"]).logits
        else:
            logits = model(**inputs).logits
    if arch.endswith("-seq-cls"):
        assert tuple(logits.shape) == (batch, 1)
    elif arch.endswith("-token-cls"):
        assert tuple(logits.shape) == (batch, length, 2)
    else:
        assert tuple(logits.shape) == (batch, length, 1024)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "arch, pad, eos, bos",
    [
        ("qwen2", "<|endoftext|>", "<|im_end|>", None),
        ("llama", None, "<|eot_id|>", "<|begin_of_text|>"),
        ("gpt2", None, "<|endoftext|>", "<|endoftext|>"),
        ("t5", "<pad>", "</s>", None),
    ],
)
def test_generation_config_matches_tokenizer(arch, pad, eos, bos):
    path = get_tiny_model_path(arch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    generation_config = transformers.GenerationConfig.from_pretrained(path)
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token) == (pad, eos, bos)
    assert generation_config.eos_token_id == tokenizer.eos_token_id
    assert generation_config.pad_token_id == tokenizer.pad_token_id
    assert generation_config.bos_token_id == tokenizer.bos_token_id


def test_tiny_config_values():
    qwen2 = AutoConfig.from_pretrained(get_tiny_model_path("qwen2"))
    assert (qwen2.hidden_size, qwen2.num_hidden_layers, qwen2.num_attention_heads) == (32, 2, 4)
    assert (qwen2.num_key_value_heads, qwen2.intermediate_size, qwen2.max_position_embeddings) == (2, 64, 512)
    seq_cls = AutoConfig.from_pretrained(get_tiny_model_path("qwen2-seq-cls"))
    assert seq_cls.num_labels == 1 and seq_cls.pad_token_id == 0
    assert AutoConfig.from_pretrained(get_tiny_model_path("qwen2-token-cls")).num_labels == 2
    assert AutoConfig.from_pretrained(get_tiny_model_path("llama")).pad_token_id is None


def test_small_size_has_about_ten_times_the_parameters():
    tiny = sum(p.numel() for p in build_tiny_model("qwen2").parameters())
    small_model = build_tiny_model("qwen2", size="small")
    small = sum(p.numel() for p in small_model.parameters())
    assert (small_model.config.hidden_size, small_model.config.num_hidden_layers) == (128, 4)
    assert small_model.config.intermediate_size == 256
    assert 8 < small / tiny < 12


def test_template_override_and_errors():
    path = get_tiny_model_path("qwen2", template="chatml_generation")
    assert "{%- generation %}" in AutoTokenizer.from_pretrained(path).chat_template
    assert AutoTokenizer.from_pretrained(get_tiny_model_path("qwen2", template="none")).chat_template is None
    # `None` means the arch's own template.
    assert get_tiny_model_path("qwen2", template=None) == get_tiny_model_path("qwen2", template="chatml")
    assert get_tiny_model_path("llama", template=None) == get_tiny_model_path("llama", template="llama3")
    assert get_tiny_model_path("gpt2", template=None) == get_tiny_model_path("gpt2", template="none")
    with pytest.raises(ValueError, match="Unknown arch"):
        get_tiny_model_path("mamba")
    with pytest.raises(ValueError, match="Unknown size"):
        get_tiny_model_path("qwen2", size="huge")
    with pytest.raises(ValueError, match="no chat template"):
        get_tiny_model_path("t5", template="chatml")


# Datasets


@pytest.mark.parametrize("config_name", DATASET_CONFIGS)
def test_every_dataset_config_loads_offline(config_name, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    splits = load_dataset(get_dataset_path(), config_name)
    assert {split: len(dataset) for split, dataset in splits.items()} == {"train": 48, "test": 8}
    for dataset in splits.values():
        assert dataset.column_names == _expected_columns(config_name)
    assert load_test_dataset(config_name, "test")[:] == splits["test"][:]


def test_standard_completions_start_with_a_space():
    for config_name, columns in [
        ("standard_prompt_completion", ["completion"]),
        ("standard_preference", ["chosen", "rejected"]),
        ("standard_unpaired_preference", ["completion"]),
    ]:
        for row in load_test_dataset(config_name):
            assert all(row[column].startswith(" ") and not row[column].startswith("  ") for column in columns)


def test_preference_data_is_separable():
    for row in load_test_dataset("standard_preference"):
        assert re.fullmatch(r" (\w+)( \1)+\.", row["rejected"])
        assert not re.fullmatch(r" (\w+)( \1)+\.", row["chosen"])
    for row in load_test_dataset("conversational_implicit_prompt_preference"):
        assert row["chosen"][:-1] == row["rejected"][:-1]
        assert row["chosen"][-1]["role"] == row["rejected"][-1]["role"] == "assistant"


def test_conversational_data_has_system_and_multi_turn_rows():
    rows = load_test_dataset("conversational_language_modeling")["messages"]
    assert any(messages[0]["role"] == "system" for messages in rows)
    assert any(sum(message["role"] == "assistant" for message in messages) > 1 for messages in rows)


def test_stepwise_labels_turn_false_at_the_first_wrong_step():
    for row in load_test_dataset("standard_stepwise_supervision"):
        assert len(row["completions"]) == len(row["labels"]) == 3
        if False in row["labels"]:
            first_wrong = row["labels"].index(False)
            assert not any(row["labels"][first_wrong:])


def test_committed_datasets_match_the_generator():
    data_dir = Path(get_dataset_path()).parent
    # run_path executes the script without importing it, so no __pycache__ lands in the package data.
    build_configs = runpy.run_path(str(data_dir / "make_datasets.py"))["build_configs"]
    for config_name, rows in build_configs().items():
        committed = []
        for split in ("train", "test"):
            lines = (data_dir / "datasets" / config_name / f"{split}.jsonl").read_text().splitlines()
            committed += [json.loads(line) for line in lines]
        assert committed == rows, config_name
    assert sorted(os.listdir(data_dir / "datasets")) == sorted([*DATASET_CONFIGS, "README.md"])
