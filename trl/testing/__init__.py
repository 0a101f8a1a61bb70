"""Offline, deterministic fixtures for tests, examples and benchmarks: tiny models, tokenizers and datasets.

Everything is built locally in seconds (no Hugging Face Hub access) and cached on disk under `TRL_TESTING_CACHE`
(default `~/.cache/trl/testing`), in directories named by a hash of what built them.
"""

from .cache import get_cache_dir
from .tiny_datasets import DATASET_CONFIGS, get_dataset_path, load_test_dataset
from .tiny_models import (
    CAUSAL_LM_ARCHITECTURES,
    SEQUENCE_CLASSIFICATION_ARCHITECTURES,
    TINY_ARCHITECTURES,
    TOKEN_CLASSIFICATION_ARCHITECTURES,
    build_tiny_model,
    get_tiny_model_path,
)
from .tiny_tokenizer import TINY_TEMPLATES, build_tiny_tokenizer, get_tiny_tokenizer_path, read_chat_template
from .tiny_vlms import (
    VISION_DATASET_CONFIGS,
    VLM_ARCHITECTURES,
    VLM_SEQUENCE_CLASSIFICATION_ARCHITECTURES,
    build_tiny_vision_dataset,
    build_tiny_vlm,
    build_tiny_vlm_processor,
    build_tiny_vlm_tokenizer,
    get_tiny_vlm_path,
    load_tiny_vlm,
    load_tiny_vlm_processor,
    make_tiny_image,
)


__all__ = [
    "CAUSAL_LM_ARCHITECTURES",
    "DATASET_CONFIGS",
    "SEQUENCE_CLASSIFICATION_ARCHITECTURES",
    "TINY_ARCHITECTURES",
    "TINY_TEMPLATES",
    "TOKEN_CLASSIFICATION_ARCHITECTURES",
    "VISION_DATASET_CONFIGS",
    "VLM_ARCHITECTURES",
    "VLM_SEQUENCE_CLASSIFICATION_ARCHITECTURES",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "build_tiny_vision_dataset",
    "build_tiny_vlm",
    "build_tiny_vlm_processor",
    "build_tiny_vlm_tokenizer",
    "get_cache_dir",
    "get_dataset_path",
    "get_tiny_model_path",
    "get_tiny_tokenizer_path",
    "get_tiny_vlm_path",
    "load_test_dataset",
    "load_tiny_vlm",
    "load_tiny_vlm_processor",
    "make_tiny_image",
    "read_chat_template",
]
