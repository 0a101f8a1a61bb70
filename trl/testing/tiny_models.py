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


# Causal LMs: name -> (model type, default chat template). Archs without a bundled template of their own (Gemma,
# Phi-3, Cohere, GPT-OSS) use ChatML; the base-model archs (GPT-2, GPT-NeoX) have none.
_CAUSAL_LMS = {
    "qwen2": ("qwen2", "chatml"),
    "qwen3": ("qwen3", "chatml"),
    "qwen3-moe": ("qwen3_moe", "chatml"),
    "llama": ("llama", "llama3"),
    "gpt2": ("gpt2", None),
    "gpt-neox": ("gpt_neox", None),
    "gemma2": ("gemma2", "chatml"),
    "phi3": ("phi3", "chatml"),
    "cohere2": ("cohere2", "chatml"),
    "gpt-oss": ("gpt_oss", "chatml"),
}
# Classification heads on some of them (transformers has none for Cohere 2). `<arch>-seq-cls` has `num_labels=1` (a
# reward model), `<arch>-token-cls` has `num_labels=2` (a process reward model).
_SEQUENCE_CLASSIFIERS = ("qwen2", "qwen3-moe", "llama", "gpt2", "gpt-neox", "gemma2", "phi3", "gpt-oss")
_TOKEN_CLASSIFIERS = ("qwen2", "llama", "gemma2")


def _classifier(causal_lm: str, auto_class: str, num_labels: int) -> _Architecture:
    """A classification head on the body of one of `_CAUSAL_LMS`, with its model type and chat template."""
    return _Architecture(auto_class, *_CAUSAL_LMS[causal_lm], (("num_labels", num_labels),))


_ARCHITECTURES = {
    **{name: _Architecture("AutoModelForCausalLM", *spec) for name, spec in _CAUSAL_LMS.items()},
    **{
        f"{name}-seq-cls": _classifier(name, "AutoModelForSequenceClassification", 1) for name in _SEQUENCE_CLASSIFIERS
    },
    **{f"{name}-token-cls": _classifier(name, "AutoModelForTokenClassification", 2) for name in _TOKEN_CLASSIFIERS},
    "t5": _Architecture("AutoModelForSeq2SeqLM", "t5", None),
}
TINY_ARCHITECTURES = tuple(_ARCHITECTURES)
# The matrices the tests train every trainer over.
CAUSAL_LM_ARCHITECTURES = tuple(_CAUSAL_LMS)
SEQUENCE_CLASSIFICATION_ARCHITECTURES = tuple(f"{name}-seq-cls" for name in _SEQUENCE_CLASSIFIERS)
TOKEN_CLASSIFICATION_ARCHITECTURES = tuple(f"{name}-token-cls" for name in _TOKEN_CLASSIFIERS)
# Mixture-of-experts archs: few experts, each token routed to half of them, so a short run reaches every expert.
_NUM_EXPERTS, _EXPERTS_PER_TOKEN = 4, 2
# Sliding-window archs get a window shorter than the test sequences, so the windowed mask is really exercised.
_SLIDING_WINDOW = 8

# GPT-OSS's YaRN scaling, with the pre-scaling context shrunk so that it matches the 512 positions.
_GPT_OSS_ROPE = {
    "rope_type": "yarn",
    "rope_theta": 150000.0,
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 16,
}
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
    spec = _ARCHITECTURES[arch]
    # Sequence classification needs a pad id to find each row's last real token; fall back on EOS.
    if spec.auto_class == "AutoModelForSequenceClassification" and special_ids["pad_token_id"] is None:
        special_ids["pad_token_id"] = tokenizer.eos_token_id
    if spec.model_type == "gpt2":
        return {
            "n_embd": hidden,
            "n_layer": layers,
            "n_head": heads,
            "n_inner": mlp,
            "n_positions": 512,
            **special_ids,
        }
    if spec.model_type == "t5":
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
    llama_style = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": mlp,
        "max_position_embeddings": 512,
        **special_ids,
    }
    if spec.model_type == "gpt_neox":  # no grouped key-value heads
        return llama_style
    return {
        **llama_style,
        "num_key_value_heads": kv_heads,
        **_model_type_kwargs(spec.model_type, hidden // heads, layers, mlp),
    }


def _model_type_kwargs(model_type: str, head_dim: int, layers: int, mlp: int) -> dict:
    """Config fields one model type needs on top of the Llama-style ones: head size where the default is not
    `hidden // heads`, experts, sliding windows."""
    head = {"head_dim": head_dim}
    # Alternate windowed and full attention, as Gemma 2 and GPT-OSS do, so both masks run.
    windows = {
        "sliding_window": _SLIDING_WINDOW,
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
    }
    experts = {"num_experts_per_tok": _EXPERTS_PER_TOKEN}
    by_type = {
        "qwen3": head,
        "qwen3_moe": {
            **head,
            **experts,
            "num_experts": _NUM_EXPERTS,
            "moe_intermediate_size": mlp,
            "norm_topk_prob": True,
        },
        # Logit soft-capping stays at its default (attention 50, final 30): it is what sets Gemma 2 apart.
        "gemma2": {**head, **windows, "query_pre_attn_scalar": head_dim},
        "cohere2": windows,
        "gpt_oss": {**head, **experts, **windows, "num_local_experts": _NUM_EXPERTS, "rope_parameters": _GPT_OSS_ROPE},
        "phi3": {"original_max_position_embeddings": 512},
    }
    return by_type.get(model_type, {})


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
            A causal LM of [`CAUSAL_LM_ARCHITECTURES`] (`"qwen2"`, `"qwen3"`, `"qwen3-moe"`, `"llama"`, `"gpt2"`,
            `"gpt-neox"`, `"gemma2"`, `"phi3"`, `"cohere2"`, `"gpt-oss"`), a sequence classifier
            `"<arch>-seq-cls"` of [`SEQUENCE_CLASSIFICATION_ARCHITECTURES`] (`num_labels=1`), a token classifier
            `"<arch>-token-cls"` of [`TOKEN_CLASSIFICATION_ARCHITECTURES`] (`num_labels=2`), or `"t5"`
            (encoder-decoder).
        template (`str` or `None`, *optional*):
            Chat template of the bundled tokenizer: `"chatml"`, `"chatml_generation"`, `"llama3"` or `"none"` (no
            chat template, GPT-2 style special tokens). `None` picks the arch's own: `"llama3"` for `"llama"`, no
            template for `"gpt2"`, `"gpt-neox"` and `"t5"`, `"chatml"` for the others.
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
