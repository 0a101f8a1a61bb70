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
