"""Tiny random-weight vision-language models with real processors, and tiny image datasets, built offline.

Each family is the real transformers model class (`Qwen2VLForConditionalGeneration`, ...) at a few hundred thousand
parameters, with the family's real processor: an image processor (the Pillow backend, so torchvision is not needed),
the tiny BPE tokenizer of [`build_tiny_tokenizer`] extended with the family's image special tokens, and the family's
chat template from `trl/chat_templates` (content parts `{"type": "image"}` render the family's placeholder).

| arch          | model class                              | what the batch carries besides `input_ids`               |
|---------------|------------------------------------------|----------------------------------------------------------|
| `qwen2-vl`    | `Qwen2VLForConditionalGeneration`        | `pixel_values` (patches of all images), `image_grid_thw`, `mm_token_type_ids` |
| `qwen2.5-vl`  | `Qwen2_5_VLForConditionalGeneration`     | the same                                                 |
| `idefics3`    | `Idefics3ForConditionalGeneration`       | `pixel_values` `[B, images, 3, H, W]`, `pixel_attention_mask` |
| `llava`       | `LlavaForConditionalGeneration`          | `pixel_values` `[images, 3, H, W]` (`<image>` placeholder) |
| `gemma3`      | `Gemma3ForConditionalGeneration`         | `pixel_values`, `token_type_ids`                         |

Transformers' Qwen2-VL processors require a video processor, which needs torchvision. Without it, the Qwen families
use a subclass of the real processor without the video part ([`load_tiny_vlm_processor`] loads it back from disk;
`AutoProcessor` loads the other families).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .cache import cached_build
from .tiny_tokenizer import build_tiny_tokenizer


_SEED = 42
# Text model: hidden size, layers, attention heads, key-value heads, MLP size (the "tiny" size of `tiny_models`).
_HIDDEN, _LAYERS, _HEADS, _KV_HEADS, _MLP = 32, 2, 4, 2, 64
# Vision towers: 14-pixel patches; SigLIP-style towers see 56x56 images (16 patches), CLIP-style 28x28 (4 patches).
_PATCH = 14


@dataclass(frozen=True)
class _Family:
    model_class: str
    template: str
    # Special tokens added to the tokenizer: named ones (`tokenizer.<name>`) and plain ones.
    named_tokens: tuple[tuple[str, str], ...]
    tokens: tuple[str, ...]
    eos_token: str


_QWEN_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
_FAMILIES = {
    "qwen2-vl": _Family(
        "Qwen2VLForConditionalGeneration",
        "qwen3_vl",
        (("image_token", "<|image_pad|>"), ("video_token", "<|video_pad|>")),
        _QWEN_TOKENS,
        "<|im_end|>",
    ),
    "qwen2.5-vl": _Family(
        "Qwen2_5_VLForConditionalGeneration",
        "qwen3_vl",
        (("image_token", "<|image_pad|>"), ("video_token", "<|video_pad|>")),
        _QWEN_TOKENS,
        "<|im_end|>",
    ),
    "idefics3": _Family(
        "Idefics3ForConditionalGeneration",
        "idefics3",
        (),
        ("<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"),
        "<end_of_utterance>",
    ),
    "llava": _Family("LlavaForConditionalGeneration", "llava_next", (("image_token", "<image>"),), (), "</s>"),
    "gemma3": _Family(
        "Gemma3ForConditionalGeneration",
        "gemma3",
        (("boi_token", "<start_of_image>"), ("eoi_token", "<end_of_image>"), ("image_token", "<image_soft_token>")),
        ("<start_of_turn>", "<end_of_turn>"),
        "<end_of_turn>",
    ),
}
VLM_ARCHITECTURES = tuple(_FAMILIES)
# Reward-model heads (`num_labels=1`) on the families transformers has a multimodal sequence classifier for.
_SEQ_CLS = {"gemma3-seq-cls": "Gemma3ForSequenceClassification"}
VLM_SEQUENCE_CLASSIFICATION_ARCHITECTURES = tuple(_SEQ_CLS)
# Number of image tokens one image becomes in the text (fixed for all but the Qwen families, whose count depends on
# the image size: one token per 28x28 pixels, between 1 and 8).
_IMAGE_SEQ_LEN = {"idefics3": 4, "llava": 4, "gemma3": 4}


def _check_arch(arch: str) -> _Family:
    if arch not in _FAMILIES and arch not in _SEQ_CLS:
        choices = VLM_ARCHITECTURES + VLM_SEQUENCE_CLASSIFICATION_ARCHITECTURES
        raise ValueError(f"Unknown vision-language arch {arch!r}; choose one of {choices}.")
    return _FAMILIES[_base(arch)]


def _base(arch: str) -> str:
    """The family of an arch: `"gemma3"` for `"gemma3-seq-cls"`."""
    return arch.removesuffix("-seq-cls")


def _chat_template(family: _Family) -> str:
    from ..chat_template_utils.families import get_family

    return get_family(family.template).chat_template


def build_tiny_vlm_tokenizer(arch: str = "qwen2-vl"):
    """
    Builds the tiny tokenizer of a vision-language family: [`build_tiny_tokenizer`]'s vocabulary plus the family's
    image special tokens, its end-of-turn token as EOS and its chat template.

    Args:
        arch (`str`, *optional*, defaults to `"qwen2-vl"`):
            One of [`VLM_ARCHITECTURES`].

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: The tokenizer.
    """
    family = _check_arch(arch)
    tokenizer = build_tiny_tokenizer("chatml")
    named = dict(family.named_tokens)
    extra = [*family.tokens, *(token for token in named.values() if token not in family.tokens)]
    tokenizer.add_special_tokens({"extra_special_tokens": extra}, replace_extra_special_tokens=False)
    if named:
        # What the constructor does with a dict of `extra_special_tokens`: `tokenizer.image_token` and friends,
        # saved with the tokenizer (the processors read them).
        tokenizer._set_model_specific_special_tokens(named)
    tokenizer.eos_token = family.eos_token
    tokenizer.chat_template = _chat_template(family)
    return tokenizer


def _image_only_qwen_processor(processor_class):
    """The Qwen processor without its video processor (which needs torchvision); images work unchanged."""
    from transformers import ProcessorMixin

    class ImageOnlyProcessor(processor_class):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            # What the real `__init__` sets before `ProcessorMixin.__init__`, which it calls with a video processor.
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"ImageOnly{processor_class.__name__}"
    return ImageOnlyProcessor


def _qwen_processor_class(arch: str):
    import transformers
    from transformers.utils import is_torchvision_available

    processor_class = transformers.Qwen2VLProcessor if arch == "qwen2-vl" else transformers.Qwen2_5_VLProcessor
    if is_torchvision_available():
        return processor_class
    return _image_only_qwen_processor(processor_class)


def _image_processor(arch: str):
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if arch in ("qwen2-vl", "qwen2.5-vl"):
        merged = (2 * _PATCH) ** 2  # one image token per 2x2 patches
        return Qwen2VLImageProcessorPil(
            min_pixels=merged, max_pixels=8 * merged, patch_size=_PATCH, merge_size=2, temporal_patch_size=2
        )
    if arch == "idefics3":
        edge = {"longest_edge": 4 * _PATCH}
        return Idefics3ImageProcessorPil(do_image_splitting=False, size=edge, max_image_size=edge)
    if arch == "llava":
        side = 2 * _PATCH
        return LlavaImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    side = 4 * _PATCH
    return Gemma3ImageProcessorPil(size={"height": side, "width": side})


def build_tiny_vlm_processor(arch: str = "qwen2-vl"):
    """
    Builds the processor of a tiny vision-language family (image processor, tokenizer and chat template).

    Args:
        arch (`str`, *optional*, defaults to `"qwen2-vl"`):
            One of [`VLM_ARCHITECTURES`].

    Returns:
        [`~transformers.ProcessorMixin`]: The family's processor (`processor.tokenizer` is the text tokenizer).
    """
    import transformers

    family = _check_arch(arch)
    arch = _base(arch)
    tokenizer = build_tiny_vlm_tokenizer(arch)
    image_processor = _image_processor(arch)
    template = _chat_template(family)
    if arch in ("qwen2-vl", "qwen2.5-vl"):
        return _qwen_processor_class(arch)(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=template
        )
    if arch == "idefics3":
        return transformers.Idefics3Processor(
            image_processor=image_processor, tokenizer=tokenizer, image_seq_len=_IMAGE_SEQ_LEN[arch],
            chat_template=template,
        )  # fmt: skip
    if arch == "llava":
        # CLIP keeps a CLS token that the "default" feature selection drops: 2x2 patches, 4 image tokens.
        return transformers.LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=_PATCH,
            vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=template,
        )  # fmt: skip
    return transformers.Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=_IMAGE_SEQ_LEN[arch],
        chat_template=template,
    )  # fmt: skip


def _text_config(tokenizer, **extra) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": _HIDDEN,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "num_key_value_heads": _KV_HEADS,
        "intermediate_size": _MLP,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **extra,
    }


def _vision_tower(image_size: int) -> dict:
    return {
        "hidden_size": _HIDDEN,
        "intermediate_size": _MLP,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "image_size": image_size,
        "patch_size": _PATCH,
    }


def _model_config(arch: str, processor):
    import transformers

    tokenizer = processor.tokenizer
    if arch in ("qwen2-vl", "qwen2.5-vl"):
        # Multimodal RoPE: the head's 4 rotary frequency pairs split over time, height and width.
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
        ids = {
            "image_token_id": processor.image_token_id,
            "video_token_id": processor.video_token_id,
            "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
            "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        }
        vision = {"depth": _LAYERS, "num_heads": _HEADS, "patch_size": _PATCH, "spatial_merge_size": 2,
                  "temporal_patch_size": 2}  # fmt: skip
        if arch == "qwen2-vl":
            vision.update(embed_dim=_HIDDEN, hidden_size=_HIDDEN, mlp_ratio=2)
            config_class = transformers.Qwen2VLConfig
        else:
            # Windowed attention in the first block, full attention in the last (as the real model alternates).
            vision.update(hidden_size=_HIDDEN, intermediate_size=_MLP, out_hidden_size=_HIDDEN, window_size=56,
                          fullatt_block_indexes=[_LAYERS - 1])  # fmt: skip
            config_class = transformers.Qwen2_5_VLConfig
        return config_class(text_config=_text_config(tokenizer, rope_parameters=rope), vision_config=vision, **ids)
    if arch == "idefics3":
        return transformers.Idefics3Config(
            text_config={"model_type": "llama", **_text_config(tokenizer)}, vision_config=_vision_tower(4 * _PATCH),
            image_token_id=processor.image_token_id, scale_factor=2, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    if arch == "llava":
        vision = {"model_type": "clip_vision_model", **_vision_tower(2 * _PATCH), "projection_dim": _HIDDEN}
        return transformers.LlavaConfig(
            text_config={"model_type": "qwen2", **_text_config(tokenizer)}, vision_config=vision,
            image_token_id=processor.image_token_id, vision_feature_select_strategy="default",
            vision_feature_layer=-1,
        )  # fmt: skip
    return transformers.Gemma3Config(
        # One windowed and one full-attention layer: both masks run, and the answer still sees the image.
        text_config=_text_config(tokenizer, head_dim=_HIDDEN // _HEADS, query_pre_attn_scalar=_HIDDEN // _HEADS,
                                 sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
        # Gemma 3 reads the tower's patch features, never SigLIP's pooling head: leave the head out.
        vision_config={**_vision_tower(4 * _PATCH), "vision_use_head": False}, mm_tokens_per_image=_IMAGE_SEQ_LEN[arch],
        image_token_id=tokenizer.image_token_id, boi_token_id=tokenizer.boi_token_id,
        eoi_token_id=tokenizer.eoi_token_id,
    )  # fmt: skip


def _build_model(arch: str, processor):
    import torch
    import transformers

    config = _model_config(_base(arch), processor)
    if arch in _SEQ_CLS:
        config.num_labels = 1
    model_class = getattr(transformers, _SEQ_CLS.get(arch) or _FAMILIES[arch].model_class)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = model_class(config).to(torch.float32)
        if _base(arch) == "gemma3":
            # Gemma 3 initialises its image projection to zeros (the real weights are trained): with it, no image
            # would reach the language model and the vision tower would get no gradient.
            projection = model.model.multi_modal_projector.mm_input_projection_weight
            projection.data.normal_(0.0, config.text_config.initializer_range * 10)
    tokenizer = processor.tokenizer
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def build_tiny_vlm(arch: str = "qwen2-vl"):
    """
    Builds a tiny random-weight vision-language model and its processor in memory, weights fixed by a seed.

    Args:
        arch (`str`, *optional*, defaults to `"qwen2-vl"`):
            One of [`VLM_ARCHITECTURES`] (`"qwen2-vl"`, `"qwen2.5-vl"`, `"idefics3"`, `"llava"`, `"gemma3"`), or of
            [`VLM_SEQUENCE_CLASSIFICATION_ARCHITECTURES`] (`"gemma3-seq-cls"`, a reward model with `num_labels=1`).

    Returns:
        `tuple`: `(model, processor)`, the model in float32 with its `generation_config` ids set.
    """
    processor = build_tiny_vlm_processor(arch)
    return _build_model(arch, processor), processor


# What a complete entry holds; `cached_build` refuses to publish a build without them.
_VLM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json")


def get_tiny_vlm_path(arch: str = "qwen2-vl") -> str:
    """
    Returns a directory holding a tiny vision-language model and its processor, building and caching it on first use.

    Args:
        arch (`str`, *optional*, defaults to `"qwen2-vl"`):
            One of [`VLM_ARCHITECTURES`].

    Returns:
        `str`: A directory that `AutoModelForImageTextToText.from_pretrained` loads, and [`load_tiny_vlm_processor`]
        (or, for every family but the Qwen ones without torchvision, `AutoProcessor.from_pretrained`).
    """
    family = _check_arch(arch)
    arguments = {"kind": "vlm", "arch": arch, "template": _chat_template(family)}

    def save(directory: Path) -> None:
        model, processor = build_tiny_vlm(arch)
        processor.save_pretrained(directory)
        _restore_processor_class(directory, arch)
        model.should_save_on_this_rank = lambda is_main_process: True
        model.save_pretrained(directory)

    return cached_build(f"vlm-{arch}", arguments, save, required=_VLM_FILES)


def _restore_processor_class(directory: Path, arch: str) -> None:
    # The image-only Qwen processor saves under its own class name; the entry names the real one, so that an
    # environment with torchvision loads it with `AutoProcessor`.
    if arch not in ("qwen2-vl", "qwen2.5-vl"):
        return
    path = directory / "processor_config.json"
    config = json.loads(path.read_text())
    config["processor_class"] = "Qwen2VLProcessor" if arch == "qwen2-vl" else "Qwen2_5_VLProcessor"
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def load_tiny_vlm_processor(path: str, arch: str | None = None):
    """
    Loads the processor of a [`get_tiny_vlm_path`] directory.

    Args:
        path (`str`):
            The directory.
        arch (`str` or `None`, *optional*):
            Its family; read from the model config when `None`.

    Returns:
        [`~transformers.ProcessorMixin`]: The processor.
    """
    from transformers import AutoConfig, AutoProcessor

    if arch is None:
        model_type = AutoConfig.from_pretrained(path).model_type
        arch = {"qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl"}.get(model_type)
    if arch in ("qwen2-vl", "qwen2.5-vl"):
        return _qwen_processor_class(arch).from_pretrained(path)
    return AutoProcessor.from_pretrained(path)


def load_tiny_vlm(arch: str = "qwen2-vl"):
    """
    Loads the cached tiny vision-language model of `arch` and its processor ([`get_tiny_vlm_path`]).

    Args:
        arch (`str`, *optional*, defaults to `"qwen2-vl"`):
            One of [`VLM_ARCHITECTURES`].

    Returns:
        `tuple`: `(model, processor)`.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoModelForSequenceClassification

    path = get_tiny_vlm_path(arch)
    auto_class = AutoModelForSequenceClassification if arch in _SEQ_CLS else AutoModelForImageTextToText
    model = auto_class.from_pretrained(path, dtype=torch.float32)
    return model, load_tiny_vlm_processor(path, arch)


# --------------------------------------------------------------------------------------------------------------------
# Image datasets
# --------------------------------------------------------------------------------------------------------------------

VISION_DATASET_CONFIGS = (
    "conversational_language_modeling",
    "conversational_prompt_only",
    "conversational_prompt_completion",
    "conversational_preference",
    "conversational_unpaired_preference",
)
_COLOURS = (("red", (220, 30, 30)), ("green", (30, 200, 60)), ("blue", (40, 60, 220)), ("yellow", (230, 220, 40)))
# (width, height): images of several sizes and aspect ratios, so per-image grids and resizing are exercised.
_IMAGE_SIZES = ((32, 32), (48, 32), (40, 56))


def make_tiny_image(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32), seed: int = 0):
    """
    Makes a small RGB image: a flat colour with a lighter square and a little fixed noise.

    Args:
        colour (`tuple[int, int, int]`):
            The RGB background colour.
        size (`tuple[int, int]`, *optional*, defaults to `(32, 32)`):
            `(width, height)` in pixels.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the noise.

    Returns:
        `PIL.Image.Image`: The image, in mode `"RGB"`.
    """
    import numpy as np
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    pixels = np.empty((height, width, 3), dtype=np.int16)
    pixels[:] = colour
    pixels[height // 4 : height // 2, width // 4 : width // 2] += 30
    pixels += rng.integers(-8, 9, size=pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def _text(content: str, image_blocks: bool, num_images: int = 0):
    if not image_blocks:
        return content
    return [*({"type": "image", "text": None} for _ in range(num_images)), {"type": "text", "text": content}]


def _vision_row(config_name: str, index: int, num_images: int, image_blocks: bool) -> dict:
    names = [_COLOURS[(index + k) % len(_COLOURS)][0] for k in range(num_images)]
    images = [
        make_tiny_image(_COLOURS[(index + k) % len(_COLOURS)][1], _IMAGE_SIZES[(index + k) % len(_IMAGE_SIZES)],
                        seed=index * 16 + k)
        for k in range(num_images)
    ]  # fmt: skip
    question = "What colour is the picture?" if num_images == 1 else "What colours are the pictures?"
    answer = (" and ".join(names) + ".").capitalize()
    wrong = (" and ".join(_COLOURS[(index + 2 + k) % len(_COLOURS)][0] for k in range(num_images)) + ".").capitalize()
    prompt = [{"role": "user", "content": _text(question, image_blocks, num_images)}]

    def reply(text: str) -> list[dict]:
        return [{"role": "assistant", "content": _text(text, image_blocks)}]

    row = {"images": images}
    if config_name == "conversational_language_modeling":
        row["messages"] = prompt + reply(answer)
    elif config_name == "conversational_prompt_only":
        row["prompt"] = prompt
    elif config_name == "conversational_prompt_completion":
        row.update(prompt=prompt, completion=reply(answer))
    elif config_name == "conversational_preference":
        row.update(prompt=prompt, chosen=reply(answer), rejected=reply(wrong))
    else:
        row.update(prompt=prompt, completion=reply(answer if index % 2 == 0 else wrong), label=index % 2 == 0)
    return row


def build_tiny_vision_dataset(
    config_name: str = "conversational_language_modeling",
    num_rows: int = 8,
    num_images: int = 1,
    image_blocks: bool = False,
):
    """
    Builds a small image dataset in the vision format, in memory (images generated with Pillow, deterministic).

    Each row has an `images` column (a list of `num_images` PIL images of a few sizes) and conversational text
    columns asking for the pictures' colours. With `image_blocks=False` the contents are strings and the trainers
    insert the image parts ([`~trl.data_utils.prepare_multimodal_messages`]); with `image_blocks=True` the user
    message already holds one `{"type": "image"}` part per image before its text part.

    Args:
        config_name (`str`, *optional*, defaults to `"conversational_language_modeling"`):
            One of [`VISION_DATASET_CONFIGS`].
        num_rows (`int`, *optional*, defaults to `8`):
            Number of rows.
        num_images (`int`, *optional*, defaults to `1`):
            Images per row (2 or more gives a multi-image dataset).
        image_blocks (`bool`, *optional*, defaults to `False`):
            Whether the messages hold content parts with image placeholders.

    Returns:
        [`~datasets.Dataset`]: The dataset.
    """
    from datasets import Dataset

    if config_name not in VISION_DATASET_CONFIGS:
        raise ValueError(f"Unknown vision dataset config {config_name!r}; choose one of {VISION_DATASET_CONFIGS}.")
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}.")
    return Dataset.from_list([_vision_row(config_name, i, num_images, image_blocks) for i in range(num_rows)])
