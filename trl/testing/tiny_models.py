"""Tiny random-weight models of several architectures, built offline and deterministically."""

from dataclasses import dataclass
from pathlib import Path

from .cache import cached_build
from .tiny_tokenizer import build_tiny_tokenizer


_SEED = 42


@dataclass(frozen=True)
class _Architecture:
    auto_class: str
    model_type: str
    default_template: str | None
    extra_config: tuple[tuple[str, object], ...] = ()


_ARCHITECTURES = {
    "qwen2": _Architecture("AutoModelForCausalLM", "qwen2", "chatml"),
    "qwen3": _Architecture("AutoModelForCausalLM", "qwen3", "chatml"),
    "llama": _Architecture("AutoModelForCausalLM", "llama", "llama3"),
    "gpt2": _Architecture("AutoModelForCausalLM", "gpt2", None),
    "qwen2-seq-cls": _Architecture("AutoModelForSequenceClassification", "qwen2", "chatml", (("num_labels", 1),)),
    "qwen2-token-cls": _Architecture("AutoModelForTokenClassification", "qwen2", "chatml", (("num_labels", 2),)),
    "t5": _Architecture("AutoModelForSeq2SeqLM", "t5", None),
}
TINY_ARCHITECTURES = tuple(_ARCHITECTURES)

# hidden size, layers, attention heads, key-value heads, MLP size
_SIZES = {"tiny": (32, 2, 4, 2, 64), "small": (128, 4, 4, 2, 256)}
# `template=None` picks the arch's own template, so "no chat template" needs its own name.
NO_TEMPLATE = "none"


def _check_arguments(arch: str, template: str | None, size: str) -> str | None:
    if arch not in _ARCHITECTURES:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {TINY_ARCHITECTURES}.")
    if size not in _SIZES:
        raise ValueError(f"Unknown size {size!r}; choose one of {tuple(_SIZES)}.")
    if template is None:
        template = _ARCHITECTURES[arch].default_template
    elif template == NO_TEMPLATE:
        template = None
    if arch == "t5" and template is not None:
        raise ValueError(f"The t5 arch has no chat template; leave `template` unset or pass {NO_TEMPLATE!r}.")
    return template


def _config_kwargs(arch: str, size: str, tokenizer) -> dict:
    hidden, layers, heads, kv_heads, mlp = _SIZES[size]
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    # Sequence classification needs a pad id to find each row's last real token; fall back on EOS.
    if arch == "qwen2-seq-cls" and special_ids["pad_token_id"] is None:
        special_ids["pad_token_id"] = tokenizer.eos_token_id
    if arch == "gpt2":
        return {
            "n_embd": hidden,
            "n_layer": layers,
            "n_head": heads,
            "n_inner": mlp,
            "n_positions": 512,
            **special_ids,
        }
    if arch == "t5":
        return {
            "d_model": hidden,
            "d_kv": hidden // heads,
            "d_ff": mlp,
            "num_layers": layers,
            "num_decoder_layers": layers,
            "num_heads": heads,
            "decoder_start_token_id": tokenizer.pad_token_id,
            **special_ids,
        }
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": mlp,
        "max_position_embeddings": 512,
        **({"head_dim": hidden // heads} if arch == "qwen3" else {}),
        **special_ids,
    }


def _tokenizer_for(arch: str, template: str | None):
    return build_tiny_tokenizer(flavour="t5") if arch == "t5" else build_tiny_tokenizer(template)


def build_tiny_model(arch: str = "qwen2", template: str | None = None, size: str = "tiny", tokenizer=None):
    """
    Builds a tiny random-weight model in memory, with weights fixed by a seed.

    Args:
        arch (`str`, *optional*, defaults to `"qwen2"`):
            One of [`TINY_ARCHITECTURES`].
        template (`str` or `None`, *optional*):
            Chat template whose tokenizer fixes the special-token ids, as in [`get_tiny_model_path`].
        size (`str`, *optional*, defaults to `"tiny"`):
            `"tiny"` (hidden 32, 2 layers) or `"small"` (hidden 128, 4 layers, about 10x the parameters).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizer whose special-token ids the config uses; built from `template` when `None`.

    Returns:
        [`~transformers.PreTrainedModel`]: The model, in float32, with its `generation_config` ids set.
    """
    template = _check_arguments(arch, template, size)
    return _build_model(arch, size, tokenizer if tokenizer is not None else _tokenizer_for(arch, template))


def _build_model(arch: str, size: str, tokenizer):
    import torch
    import transformers

    spec = _ARCHITECTURES[arch]
    config = transformers.AutoConfig.for_model(
        spec.model_type, vocab_size=len(tokenizer), **_config_kwargs(arch, size, tokenizer), **dict(spec.extra_config)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = getattr(transformers, spec.auto_class).from_config(config, dtype=torch.float32)
    if model.can_generate():
        model.generation_config = transformers.GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
            decoder_start_token_id=getattr(config, "decoder_start_token_id", None),
        )
    return model


def get_tiny_model_path(arch: str = "qwen2", template: str | None = None, size: str = "tiny") -> str:
    """
    Returns a directory holding a tiny model and its tokenizer, building and caching it on first use.

    Args:
        arch (`str`, *optional*, defaults to `"qwen2"`):
            `"qwen2"`, `"qwen3"`, `"llama"`, `"gpt2"` (causal LMs), `"qwen2-seq-cls"` (sequence classification,
            `num_labels=1`), `"qwen2-token-cls"` (token classification, `num_labels=2`) or `"t5"`
            (encoder-decoder).
        template (`str` or `None`, *optional*):
            Chat template of the bundled tokenizer: `"chatml"`, `"chatml_generation"`, `"llama3"` or `"none"` (no
            chat template, GPT-2 style special tokens). `None` picks the arch's own: `"chatml"` for the Qwen archs,
            `"llama3"` for `"llama"`, no template for `"gpt2"` and `"t5"`.
        size (`str`, *optional*, defaults to `"tiny"`):
            `"tiny"` or `"small"`.

    Returns:
        `str`: A directory that both the matching `AutoModel*` class and `AutoTokenizer` load with `from_pretrained`.
    """
    template = _check_arguments(arch, template, size)
    name = f"{arch}-{size}" + (f"-{template}" if template is not None else "")
    arguments = {"kind": "model", "arch": arch, "template": template, "size": size}
    return cached_build(name, arguments, _saver(arch, template, size), required=_MODEL_FILES)


# What a complete model entry holds; `cached_build` refuses to publish a build without them.
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _saver(arch: str, template: str | None, size: str):
    def save(directory: Path) -> None:
        tokenizer = _tokenizer_for(arch, template)
        tokenizer.save_pretrained(directory)
        model = _build_model(arch, size, tokenizer)
        # `save_pretrained` writes nothing on a non-zero rank of an initialised process group, but whichever rank
        # holds the build lock must write the whole entry: this model exists only to be saved here.
        model.should_save_on_this_rank = lambda is_main_process: True
        model.save_pretrained(directory)

    return save
