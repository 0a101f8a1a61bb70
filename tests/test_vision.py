"""Vision-language models: the offline fixtures of `trl.testing`, the vision data utilities and collators, and
training on image data."""

import pytest
import torch


pytest.importorskip("PIL")

from trl.testing import (  # noqa: E402
    VISION_DATASET_CONFIGS,
    VLM_ARCHITECTURES,
    build_tiny_vision_dataset,
    get_tiny_vlm_path,
    load_tiny_vlm,
    load_tiny_vlm_processor,
)


# The batch keys each family's processor adds to `input_ids` / `attention_mask`.
VISION_KEYS = {
    "qwen2-vl": {"pixel_values", "image_grid_thw", "mm_token_type_ids"},
    "qwen2.5-vl": {"pixel_values", "image_grid_thw", "mm_token_type_ids"},
    "idefics3": {"pixel_values", "pixel_attention_mask"},
    "llava": {"pixel_values"},
    "gemma3": {"pixel_values", "token_type_ids"},
}
CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the picture?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
]


def _vision_parameters(model) -> dict[str, torch.Tensor]:
    names = ("visual", "vision", "multi_modal_projector", "connector")
    return {n: p.detach().clone() for n, p in model.named_parameters() if any(k in n for k in names)}


# ---------------------------------------------------------------------------------------------------------- fixtures
@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
def test_tiny_vlm_processes_images_and_trains_the_vision_tower(arch):
    model, processor = load_tiny_vlm(arch)
    assert sum(p.numel() for p in model.parameters()) < 500_000
    image = build_tiny_vision_dataset(num_rows=1)[0]["images"][0]
    text = processor.apply_chat_template(CONVERSATION, tokenize=False)
    batch = processor(text=[text], images=[[image]] if arch == "idefics3" else [image], return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"} | VISION_KEYS[arch]
    image_token_id = model.config.image_token_id
    assert (batch["input_ids"] == image_token_id).sum() >= 1
    # Gradients reach the vision tower through the image tokens' embeddings.
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    vision = [p for n, p in model.named_parameters() if n in _vision_parameters(model)]
    assert vision and all(p.grad is not None and p.grad.abs().sum() > 0 for p in vision[:3])


@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
def test_tiny_vlm_directory_reloads_the_same_processor(arch):
    path = get_tiny_vlm_path(arch)
    assert get_tiny_vlm_path(arch) == path  # cached
    _, processor = load_tiny_vlm(arch)
    reloaded = load_tiny_vlm_processor(path)
    image = build_tiny_vision_dataset(num_rows=1)[0]["images"][0]
    text = processor.apply_chat_template(CONVERSATION, tokenize=False)
    images = [[image]] if arch == "idefics3" else [image]
    first = processor(text=[text], images=images, return_tensors="pt")
    second = reloaded(text=[text], images=images, return_tensors="pt")
    assert torch.equal(first["input_ids"], second["input_ids"])
    assert torch.equal(first["pixel_values"], second["pixel_values"])
    assert reloaded.tokenizer.eos_token == processor.tokenizer.eos_token


def test_tiny_vlm_reward_head_scores_images():
    from trl.testing import VLM_SEQUENCE_CLASSIFICATION_ARCHITECTURES

    assert VLM_SEQUENCE_CLASSIFICATION_ARCHITECTURES == ("gemma3-seq-cls",)
    model, processor = load_tiny_vlm("gemma3-seq-cls")
    assert type(model).__name__ == "Gemma3ForSequenceClassification" and model.config.num_labels == 1
    images = [row["images"] for row in build_tiny_vision_dataset(num_rows=2)]
    text = processor.apply_chat_template(CONVERSATION, tokenize=False)
    scores = model(**processor(text=[text, text], images=images, return_tensors="pt")).logits
    assert scores.shape == (2, 1) and scores[0] != scores[1]  # different pictures, different rewards


@pytest.mark.parametrize("config_name", VISION_DATASET_CONFIGS)
def test_tiny_vision_datasets(config_name):
    dataset = build_tiny_vision_dataset(config_name, num_rows=4, num_images=2)
    assert len(dataset) == 4
    row = dataset[1]
    assert len(row["images"]) == 2 and row["images"][0].mode == "RGB"
    assert row["images"][0].size != row["images"][1].size
    blocks = build_tiny_vision_dataset(config_name, num_rows=2, num_images=2, image_blocks=True)[0]
    first_user = next(m for m in (blocks.get("prompt") or blocks["messages"]) if m["role"] == "user")
    assert [part["type"] for part in first_user["content"]] == ["image", "image", "text"]
    # Deterministic: the same pixels on every build.
    again = build_tiny_vision_dataset(config_name, num_rows=4, num_images=2)[1]["images"][0]
    assert again.tobytes() == row["images"][0].tobytes()


def test_tiny_vision_dataset_rejects_unknown_config():
    with pytest.raises(ValueError, match="conversational_language_modeling"):
        build_tiny_vision_dataset("standard_language_modeling")


# --------------------------------------------------------------------------------------------------------- collators
from trl.chat_template_utils import get_training_chat_template  # noqa: E402
from trl.testing import build_tiny_tokenizer, build_tiny_vlm_processor  # noqa: E402
from trl.trainer.vision_collators import (  # noqa: E402
    DataCollatorForVisionLanguageModeling,
    DataCollatorForVisionPreference,
    DataCollatorForVisionUnpairedPreference,
    check_vision_example,
    image_token_ids,
)


@pytest.fixture(scope="module")
def processors():
    return {arch: build_tiny_vlm_processor(arch) for arch in VLM_ARCHITECTURES}


def _rows(config_name, num_images=1, num_rows=3):
    dataset = build_tiny_vision_dataset(config_name, num_rows=num_rows, num_images=num_images)
    return [dataset[i] for i in range(num_rows)]


def _labelled_text(processor, labels_row):
    return processor.tokenizer.decode(labels_row[labels_row != -100])


@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
@pytest.mark.parametrize("num_images", [1, 2])
def test_vision_lm_collator_assistant_only(processors, arch, num_images):
    processor = processors[arch]
    collator = DataCollatorForVisionLanguageModeling(
        processor, assistant_only_loss=True, chat_template=get_training_chat_template(processor)
    )
    batch = collator(_rows("conversational_language_modeling", num_images))
    assert VISION_KEYS[arch] <= set(batch)
    assert batch["labels"].shape == batch["input_ids"].shape
    eos = processor.tokenizer.eos_token
    expected = (
        ["Red.", "Green.", "Blue."] if num_images == 1 else ["Red and green.", "Green and blue.", "Blue and yellow."]
    )
    for row, answer in zip(batch["labels"], expected):
        assert _labelled_text(processor, row).strip() == answer + eos
    # One image's worth of image tokens per image, none of them labelled.
    image_ids = torch.tensor(sorted(image_token_ids(processor)))
    is_image = torch.isin(batch["input_ids"], image_ids)
    assert is_image.sum(dim=1).min() >= num_images
    assert (batch["labels"][is_image] == -100).all()


@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
def test_vision_lm_collator_trains_on_every_text_token_by_default(processors, arch):
    processor = processors[arch]
    batch = DataCollatorForVisionLanguageModeling(processor)(_rows("conversational_language_modeling"))
    text = _labelled_text(processor, batch["labels"][0])
    assert "What colour is the picture?" in text and "Red." in text
    # Padding is never labelled.
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
@pytest.mark.parametrize("completion_only_loss", [True, False])
def test_vision_prompt_completion_collator(processors, arch, completion_only_loss):
    processor = processors[arch]
    collator = DataCollatorForVisionLanguageModeling(
        processor, completion_only_loss=completion_only_loss, pad_to_multiple_of=16
    )
    batch = collator(_rows("conversational_prompt_completion", num_images=2))
    assert batch["input_ids"].shape[1] % 16 == 0
    assert VISION_KEYS[arch] <= set(batch)
    text = _labelled_text(processor, batch["labels"][1])
    assert "Green and blue." in text
    assert ("colours" in text) is not completion_only_loss
    # The padded rows keep their tokens at the start (right padding).
    assert (batch["attention_mask"][:, 0] == 1).all()


@pytest.mark.parametrize("arch", ["qwen2-vl", "llava", "gemma3"])
def test_vision_collator_max_length_never_cuts_images(processors, arch):
    processor = processors[arch]
    rows = _rows("conversational_prompt_completion")
    full = DataCollatorForVisionLanguageModeling(processor)(rows)
    image_ids = torch.tensor(sorted(image_token_ids(processor)))
    last_image = int(torch.isin(full["input_ids"], image_ids).nonzero()[:, 1].max())
    cut = DataCollatorForVisionLanguageModeling(processor, max_length=last_image + 2)(rows)
    assert cut["input_ids"].shape[1] == last_image + 2
    assert torch.equal(cut["input_ids"], full["input_ids"][:, : last_image + 2])
    with pytest.raises(ValueError, match="would cut the image tokens"):
        DataCollatorForVisionLanguageModeling(processor, max_length=last_image)(rows)


def test_vision_collator_needs_a_processor():
    with pytest.raises(ValueError, match="AutoProcessor"):
        DataCollatorForVisionLanguageModeling(build_tiny_tokenizer())


def test_check_vision_example_names_the_fix(processors):
    example = _rows("conversational_language_modeling", num_rows=1)[0]
    with pytest.raises(ValueError, match="cannot process images"):
        check_vision_example(example, build_tiny_tokenizer(), "SFTTrainer")
    with pytest.raises(ValueError, match="conversational data only"):
        check_vision_example({"images": example["images"], "text": "A red square."}, processors["llava"], "SFTTrainer")
    check_vision_example(example, processors["llava"], "SFTTrainer")


@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
def test_vision_preference_collator(processors, arch):
    processor = processors[arch]
    batch = DataCollatorForVisionPreference(processor)(_rows("conversational_preference", num_rows=2))
    assert batch["input_ids"].shape[0] == 4 and VISION_KEYS[arch] <= set(batch)
    completions = [processor.tokenizer.decode(row[mask.bool()]) for row, mask in
                   zip(batch["input_ids"], batch["completion_mask"])]  # fmt: skip
    assert [c.strip().split(".")[0] for c in completions] == ["Red", "Green", "Blue", "Yellow"]
    # Chosen and rejected rows of a pair share their prompt and image tensors.
    prompt_0 = batch["input_ids"][0][~batch["completion_mask"][0].bool() & batch["attention_mask"][0].bool()]
    prompt_2 = batch["input_ids"][2][~batch["completion_mask"][2].bool() & batch["attention_mask"][2].bool()]
    assert torch.equal(prompt_0, prompt_2)


@pytest.mark.parametrize("arch", ["qwen2-vl", "idefics3"])
def test_vision_unpaired_preference_collator(processors, arch):
    processor = processors[arch]
    batch = DataCollatorForVisionUnpairedPreference(processor)(_rows("conversational_unpaired_preference"))
    assert batch["labels"].tolist() == [True, False, True]
    assert {f"kl_{key}" for key in VISION_KEYS[arch]} <= set(batch)
    kl = [processor.tokenizer.decode(row[mask.bool()]) for row, mask in
          zip(batch["kl_input_ids"], batch["kl_completion_mask"])]  # fmt: skip
    own = [processor.tokenizer.decode(row[mask.bool()]) for row, mask in
           zip(batch["input_ids"], batch["completion_mask"])]  # fmt: skip
    assert kl == own[1:] + own[:1]


# ------------------------------------------------------------------------------------------------- loading by name
def test_vision_model_ids_load_with_the_image_text_to_text_class_and_a_processor():
    from types import SimpleNamespace

    from trl.testing import get_tiny_model_path
    from trl.trainer.model_utils import load_model, load_processing_class

    args = SimpleNamespace(model_init_kwargs=None, trust_remote_code=False)
    path = get_tiny_vlm_path("llava")
    assert type(load_model(path, args)).__name__ == "LlavaForConditionalGeneration"
    assert type(load_processing_class(path, args)).__name__ == "LlavaProcessor"
    # Text models keep their causal-LM class and tokenizer.
    text_path = get_tiny_model_path("qwen2")
    assert type(load_model(text_path, args)).__name__ == "Qwen2ForCausalLM"
    assert not hasattr(load_processing_class(text_path, args), "image_processor")


def test_unbuildable_processor_names_the_fix(monkeypatch):
    from types import SimpleNamespace

    import transformers

    from trl.trainer.model_utils import load_processing_class

    def fail(*args, **kwargs):
        raise OSError("Can't load video processor")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", fail)
    args = SimpleNamespace(model_init_kwargs=None, trust_remote_code=False)
    with pytest.raises(ValueError, match="pass it as `processing_class`"):
        load_processing_class(get_tiny_vlm_path("llava"), args)


def test_paired_image_data_is_unpaired_with_its_images():
    from trl.trainer.vision_collators import prepare_vision_unpaired_dataset

    paired = build_tiny_vision_dataset("conversational_preference", num_rows=3)
    unpaired = prepare_vision_unpaired_dataset(paired)
    assert len(unpaired) == 6 and sorted(unpaired["label"]) == [False] * 3 + [True] * 3
    assert all(len(images) == 1 for images in unpaired["images"])
    # Unpaired data is returned as it is.
    data = build_tiny_vision_dataset("conversational_unpaired_preference", num_rows=3)
    assert prepare_vision_unpaired_dataset(data)["label"] == data["label"]


def test_stack_vision_inputs_puts_the_kl_rows_after_the_completion_rows(processors):
    from trl.trainer.vision_collators import stack_vision_inputs

    batch = DataCollatorForVisionUnpairedPreference(processors["qwen2-vl"])(
        _rows("conversational_unpaired_preference")
    )
    length = max(batch["input_ids"].shape[1], batch["kl_input_ids"].shape[1]) + 3
    stacked = stack_vision_inputs(batch, length)
    assert torch.equal(stacked["pixel_values"], torch.cat([batch["pixel_values"], batch["kl_pixel_values"]]))
    assert stacked["image_grid_thw"].shape[0] == 6
    assert stacked["mm_token_type_ids"].shape == (6, length)
    assert torch.equal(stacked["mm_token_type_ids"][:3, : batch["input_ids"].shape[1]], batch["mm_token_type_ids"])


@pytest.mark.parametrize("config_name", ["conversational_preference", "conversational_language_modeling"])
def test_vision_reward_collator(processors, config_name):
    from trl.trainer.vision_collators import DataCollatorForVisionRewardPreference

    processor = processors["gemma3"]
    rows = _rows("conversational_preference", num_rows=2)
    if config_name == "conversational_language_modeling":  # implicit prompt: the prompt inside both sides
        rows = [{"images": r["images"], "chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]}
                for r in rows]  # fmt: skip
    rows[0]["margin"], rows[1]["margin"] = 1.0, 2.0
    batch = DataCollatorForVisionRewardPreference(processor)(rows)
    assert batch["input_ids"].shape[0] == 4 and VISION_KEYS["gemma3"] <= set(batch)
    assert batch["pixel_values"].shape[0] == 4 and batch["margin"].tolist() == [1.0, 2.0]
    texts = processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=False)
    assert all("What colour is the picture?" in text for text in texts)
    assert ["Red." in texts[0], "Blue." in texts[2]] == [True, True]
    image_ids = torch.tensor(sorted(image_token_ids(processor)))
    assert (torch.isin(batch["input_ids"], image_ids).sum(dim=1) > 0).all()


def test_prepare_vision_dataset_refuses_keep_end(processors):
    from trl.trainer.vision_collators import prepare_vision_dataset

    dataset = build_tiny_vision_dataset("conversational_preference", num_rows=2)
    assert prepare_vision_dataset(dataset, processors["llava"], "DPOTrainer")
    with pytest.raises(ValueError, match="keep_end"):
        prepare_vision_dataset(dataset, processors["llava"], "DPOTrainer", truncation_mode="keep_end")
    assert not prepare_vision_dataset(build_tiny_vision_dataset(num_rows=2).remove_columns("images"), None, "X")


def test_vision_collator_image_count_must_match_the_placeholders(processors):
    rows = build_tiny_vision_dataset("conversational_language_modeling", num_rows=2, num_images=2, image_blocks=True)
    rows = [{**row, "images": row["images"][:1]} for row in rows]  # two image parts, one image
    with pytest.raises(ValueError, match=r"2 image block\(s\) but 1 image\(s\)"):
        DataCollatorForVisionLanguageModeling(processors["qwen2-vl"])(rows)
