"""Model and processing-class loading shared by every trainer: dtype handling, pad tokens, PEFT wrapping."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import warnings
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, TrainingArguments
from transformers.utils import logging

from ..import_utils import is_peft_available, require
from .input_checks import check_model_path
from .vision_models import auto_class_for, is_vision_language_model_id, load_processor


logger = logging.get_logger(__name__)


_DTYPE_NAMES = {"float32", "float16", "bfloat16", "float64", "half", "float", "double"}


def resolve_dtype(dtype: Any) -> Any:
    """Turn a dtype given as a string (CLI / YAML) into a `torch.dtype`; keep `"auto"`, `None` and dtypes.

    Args:
        dtype (`str`, `torch.dtype` or `None`):
            `"auto"`, a dtype name such as `"bfloat16"` (optionally prefixed by `torch.`), or a `torch.dtype`.
    """
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name in _DTYPE_NAMES:
            return getattr(torch, name)
    raise ValueError(
        f"Invalid dtype {dtype!r}: use 'auto', 'float32', 'float16', 'bfloat16' or a torch.dtype in model_init_kwargs."
    )


def resolve_model_init_kwargs(model_init_kwargs: dict[str, Any] | None, trust_remote_code: bool = False) -> dict:
    """Normalise the keyword arguments used to load a model from a string.

    `torch_dtype` is accepted as an alias of `dtype`, string dtypes become `torch.dtype`s, and `trust_remote_code`
    from the trainer config is forwarded unless the kwargs set it.

    Args:
        model_init_kwargs (`dict[str, Any]` or `None`):
            The user's `model_init_kwargs`.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            The config's `trust_remote_code`.
    """
    kwargs = dict(model_init_kwargs or {})
    if "torch_dtype" in kwargs:
        if "dtype" in kwargs:
            raise ValueError(
                "model_init_kwargs sets both `dtype` and its deprecated alias `torch_dtype`; keep `dtype`."
            )
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    if "dtype" in kwargs:
        kwargs["dtype"] = resolve_dtype(kwargs["dtype"])
    kwargs.setdefault("trust_remote_code", trust_remote_code)
    return kwargs


def load_model(model_id: str, args: Any, auto_class: Any = AutoModelForCausalLM, **overrides: Any) -> PreTrainedModel:
    """Load `model_id` with `auto_class.from_pretrained`, using `args.model_init_kwargs` and `args.trust_remote_code`.

    Args:
        model_id (`str`):
            Hub id or local path.
        args (`TrainingArguments`):
            The trainer config; `model_init_kwargs` and `trust_remote_code` are read if present.
        auto_class (`type`, *optional*, defaults to `AutoModelForCausalLM`):
            The auto class to load with.
        **overrides:
            Extra `from_pretrained` arguments that take precedence (e.g. `num_labels=1`).
    """
    kwargs = resolve_model_init_kwargs(
        getattr(args, "model_init_kwargs", None), getattr(args, "trust_remote_code", False)
    )
    kwargs.update(overrides)
    check_model_path(model_id)
    auto_class = auto_class_for(model_id, auto_class, kwargs)
    return auto_class.from_pretrained(model_id, **kwargs)


def load_trained_model(
    model_id: str, args: Any, auto_class: Any = AutoModelForCausalLM, **overrides: Any
) -> PreTrainedModel:
    """Load the model a trainer optimises: like [`load_model`], but in float32 unless `model_init_kwargs` sets `dtype`.

    Published checkpoints are mostly bf16, and `from_pretrained` keeps the checkpoint's dtype; in bf16 weights small
    optimizer updates round away, so some tensors never change. Mixed precision comes from `bf16=True` instead.
    `dtype="auto"` in `model_init_kwargs` keeps the checkpoint's dtype. Reference, teacher and reward models are frozen
    and keep using [`load_model`], whose arguments this function takes.
    """
    kwargs = resolve_model_init_kwargs(getattr(args, "model_init_kwargs", None))
    # An explicit `dtype=None` means "no choice made", as it did before transformers 5 made `"auto"` the default.
    if kwargs.get("dtype") is None and overrides.get("dtype") is None:
        overrides["dtype"] = torch.float32
    return load_model(model_id, args, auto_class, **overrides)


def check_model_init_kwargs_unused(model: Any, args: Any) -> None:
    """Raise if `model_init_kwargs` is set while the model is already instantiated (it would be ignored)."""
    if not isinstance(model, str) and getattr(args, "model_init_kwargs", None):
        raise ValueError(
            "`model_init_kwargs` only applies when `model` is a string (a model id or path); the model you passed is "
            "already loaded. Load it with those arguments yourself, or pass its id instead."
        )


def load_processing_class(model_id: str, args: Any, **kwargs: Any):
    """Load the tokenizer of `model_id` (its `AutoProcessor` for a vision-language model), honouring `revision` from
    `model_init_kwargs` and `trust_remote_code`."""
    init_kwargs = getattr(args, "model_init_kwargs", None) or {}
    if "revision" in init_kwargs:
        kwargs.setdefault("revision", init_kwargs["revision"])
    kwargs.setdefault("trust_remote_code", getattr(args, "trust_remote_code", False))
    if is_vision_language_model_id(model_id, **kwargs):
        return load_processor(model_id, **kwargs)
    return AutoTokenizer.from_pretrained(model_id, **kwargs)


def get_tokenizer(processing_class: Any):
    """Return the text tokenizer of a tokenizer or a multimodal processor."""
    return getattr(processing_class, "tokenizer", processing_class)


def resolve_pad_token_id(processing_class: Any, pad_token: str | None = None, padding_value: int | None = None) -> int:
    """The one pad-token rule: the pad id collators use, without ever changing the tokenizer.

    In order: the config's `padding_value` (an id, preference trainers), the config's `pad_token` (a token), the
    tokenizer's pad token, else its EOS token (padded positions are masked, so EOS is a safe filler; logged once).

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            The tokenizer (or processor).
        pad_token (`str` or `None`, *optional*, defaults to `None`):
            The config's (deprecated) `pad_token`.
        padding_value (`int` or `None`, *optional*, defaults to `None`):
            The config's `padding_value`, used as is.
    """
    if padding_value is not None:
        return padding_value
    tokenizer = get_tokenizer(processing_class)
    if pad_token is not None:
        warnings.warn(
            "The `pad_token` config field is deprecated: set `tokenizer.pad_token` on your tokenizer instead.",
            FutureWarning,
            stacklevel=3,
        )
        pad_token_id = tokenizer.convert_tokens_to_ids(pad_token)
        if pad_token_id is None or pad_token_id == tokenizer.unk_token_id and pad_token != tokenizer.unk_token:
            raise ValueError(
                f"pad_token {pad_token!r} is not in the tokenizer's vocabulary; pass a token the tokenizer knows, "
                "or set tokenizer.pad_token."
            )
        return pad_token_id
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        logger.info(
            "The tokenizer has no pad token: batches are padded with its EOS token %r (padded positions are masked). "
            "The tokenizer itself is left unchanged.",
            tokenizer.eos_token,
        )
        return tokenizer.eos_token_id
    raise ValueError(
        "The tokenizer has neither a pad token nor an EOS token to pad with. Set one, e.g. "
        "`tokenizer.pad_token = tokenizer.eos_token` or `tokenizer.add_special_tokens({'pad_token': '<pad>'})`."
    )


def prepare_peft_model(model: PreTrainedModel, peft_config: Any, args: Any) -> Any:
    """Wrap `model` with `peft_config` (LoRA, prompt tuning, ...), ready for training.

    Under gradient checkpointing the input embeddings are made to require grad, since the frozen base would
    otherwise leave the checkpointed segments without a grad path. Adapters of a k-bit (QLoRA) base are cast to bf16.

    Args:
        model (`PreTrainedModel`):
            The base model, or an existing `PeftModel` when `peft_config` is `None`.
        peft_config (`PeftConfig` or `None`):
            The adapter configuration.
        args (`TrainingArguments`):
            The trainer config (`gradient_checkpointing`, `bf16`).
    """
    if peft_config is None:
        return model
    require(is_peft_available(), "peft_config", "pip install trl[peft]")
    from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if not isinstance(peft_config, PeftConfig):
        raise ValueError(f"peft_config must be a peft.PeftConfig (e.g. LoraConfig), got {type(peft_config).__name__}.")
    if args.gradient_checkpointing and peft_config.peft_type == "PREFIX_TUNING":
        raise ValueError(
            "Prefix tuning keeps its virtual tokens in the attention cache, which transformers drops under gradient "
            "checkpointing (the prefix would silently vanish). Set gradient_checkpointing=False."
        )
    if isinstance(model, PeftModel):
        raise ValueError(
            "You passed a PeftModel together with a peft_config. Merge the existing adapter first "
            "(`model = model.merge_and_unload()`) or pass the PeftModel without peft_config to keep training it."
        )
    is_kbit = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if is_kbit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(args.gradient_checkpointing),
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        )
    elif args.gradient_checkpointing:
        model.enable_input_require_grads()
    model = get_peft_model(model, peft_config)
    if is_kbit and args.bf16:
        cast_adapters_to_bf16(model)
    return model


def cast_adapters_to_bf16(model: torch.nn.Module) -> None:
    """Cast trainable (adapter) parameters of a quantized base to bf16, keeping norms in fp32 (QLoRA recipe)."""
    for name, module in model.named_modules():
        if "norm" in name:
            module.to(torch.float32)
        elif any(param.requires_grad for param in module.parameters(recurse=False)):
            if getattr(module, "weight", None) is not None and module.weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def is_peft_model(model: Any) -> bool:
    """Whether `model` is a `peft.PeftModel` (False when peft is not installed)."""
    if not is_peft_available():
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def num_prepended_virtual_tokens(model: Any) -> int:
    """Positions a PEFT prompt-learning adapter prepends to every sequence (0 for any other model).

    Prompt tuning and P-tuning put `num_virtual_tokens` learned embeddings in front of the input, so the logits have
    that many more positions than `input_ids`; prefix tuning puts them in the attention cache instead (0 here).

    Args:
        model (`torch.nn.Module`):
            The model, possibly a `peft.PeftModel`.
    """
    if not is_peft_model(model):
        return 0
    config = model.active_peft_config
    if not config.is_prompt_learning or config.peft_type in ("PREFIX_TUNING", "CARTRIDGE"):
        return 0
    return config.num_virtual_tokens


def to_config(args: TrainingArguments | None, config_class: type, model_name: str, method: str) -> Any:
    """Return `args` as an instance of `config_class`.

    `None` gives the default config with `output_dir="<model name>-<method>"`; another config (a plain
    `TrainingArguments`, a `GRPOConfig` for a GRPO-based trainer) is converted field by field (not through
    `to_dict()`, which redacts the `*_token` fields). A field that `args`' `__post_init__` derived from another, and
    that `config_class` rejects set together with it (`generation_batch_size` with `steps_per_generation`), is passed
    as its default and derived again (to the same value).

    Args:
        args (`TrainingArguments` or `None`):
            What the user passed.
        config_class (`type`):
            The trainer's config class.
        model_name (`str`):
            The model id, used for the default output directory.
        method (`str`):
            The method name, e.g. `"SFT"`.
    """
    if args is None:
        return config_class(output_dir=f"{model_name.split('/')[-1]}-{method}")
    if isinstance(args, config_class):
        return args
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    try:
        return config_class(**values)
    except ValueError:
        converted = _rederive_one_field(args, config_class, values)
        if converted is None:
            raise
        return converted


def _rederive_one_field(args: TrainingArguments, config_class: type, values: dict[str, Any]) -> Any:
    # The first field, among those `args` holds at a value other than its default, that the target accepts at its
    # default and derives back to the value `args` holds: the conversion with it, or `None` when there is none.
    for f in dataclasses.fields(args):
        if not f.init or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if values[f.name] is default or values[f.name] == default:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                converted = config_class(**{**values, f.name: default})
        except (ValueError, TypeError):
            continue
        if getattr(converted, f.name) == values[f.name]:
            return converted
    return None


def model_name_of(model: str | PreTrainedModel) -> str:
    """The id or path of a model given as a string or an instance."""
    if isinstance(model, str):
        return model
    return getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (possibly PEFT-wrapped) model's forward takes `logits_to_keep`, which lets trainers project only
    the positions they need through the LM head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def is_moe_model(model: PreTrainedModel) -> bool:
    """Whether the model's config describes a mixture of experts with a router."""
    config = getattr(model, "config", None)
    return any(hasattr(config, name) for name in ("num_experts", "num_local_experts", "router_aux_loss_coef"))


def apply_chat_template_path(model: PreTrainedModel, processing_class: Any, path: str | None):
    """Use the chat template of `path`: a `.jinja` file, or a tokenizer whose template and special tokens are cloned
    (the embeddings grow when tokens are added).

    Args:
        model (`PreTrainedModel`):
            The model (resized when tokens are added).
        processing_class (`PreTrainedTokenizerBase`):
            The tokenizer receiving the template.
        path (`str` or `None`):
            The config's `chat_template_path`; `None` changes nothing.

    Returns:
        `tuple`: The `(model, processing_class)` pair.
    """
    if path is None:
        return model, processing_class
    if os.path.isfile(path) and path.endswith((".jinja", ".j2")):
        with open(path, encoding="utf-8") as file:
            get_tokenizer(processing_class).chat_template = file.read()
        return model, processing_class
    from ..chat_template_utils import clone_chat_template

    model, processing_class, _ = clone_chat_template(model, processing_class, path)
    return model, processing_class


_HEAD_NAMES = ("score", "classifier")


def classification_head_name(model: torch.nn.Module) -> str | None:
    """Name of the classification head of a sequence- or token-classification model (`"score"` for most decoders)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return next((name for name in _HEAD_NAMES if isinstance(getattr(base, name, None), torch.nn.Module)), None)


def classification_peft_config(peft_config: Any, model: PreTrainedModel, task_type: str, method: str) -> Any:
    """A copy of `peft_config` for a classification model: task type `task_type` and the head in `modules_to_save`,
    so the (often freshly initialised) head is trained in full next to the adapters.

    A copy, because PEFT extends `modules_to_save` in place. A mismatching task type is replaced with a warning.

    Args:
        peft_config (`PeftConfig` or `None`):
            The user's adapter configuration.
        model (`PreTrainedModel`):
            The classification model.
        task_type (`str`):
            `"SEQ_CLS"` (reward models) or `"TOKEN_CLS"` (process reward models).
        method (`str`):
            The method, named in the warning.
    """
    if peft_config is None or is_peft_model(model):
        return peft_config
    current = getattr(peft_config, "task_type", None)
    current = getattr(current, "value", current)
    head = classification_head_name(model)
    modules = list(getattr(peft_config, "modules_to_save", None) or [])
    if current == task_type and (head is None or head in modules):
        return peft_config
    peft_config = copy.deepcopy(peft_config)
    if current not in (None, task_type):
        warnings.warn(
            f"peft_config.task_type={current!r} does not match a {method} model; using {task_type!r}. Pass "
            f"LoraConfig(task_type={task_type!r}) to silence this warning.",
            UserWarning,
            stacklevel=4,
        )
    peft_config.task_type = task_type
    if head is not None and head not in modules and hasattr(peft_config, "modules_to_save"):
        peft_config.modules_to_save = [*modules, head]
    return peft_config


def uses_flash_attention(model: torch.nn.Module) -> bool:
    """Whether the model runs a FlashAttention kernel (the only attention that pays off on flattened padding-free
    batches; sdpa / eager build a mask over the whole flattened row)."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return "flash" in implementation


def load_policy(
    model: str | PreTrainedModel, args: Any, quantization_config: Any = None, auto_class: Any = AutoModelForCausalLM
) -> PreTrainedModel:
    """The trained model of a trainer: loaded when `model` is a string (in float32 unless `model_init_kwargs` sets
    `dtype`, see [`load_trained_model`]), checked either way.

    Args:
        model (`str` or `PreTrainedModel`):
            A model id / path, or a loaded model.
        args (`TrainingArguments`):
            The trainer config (`model_init_kwargs`, `trust_remote_code`, `router_aux_loss_coef`).
        quantization_config (`BitsAndBytesConfig` or `None`, *optional*, defaults to `None`):
            Used when `model` is a string; an error with a loaded model, where it would be ignored.
        auto_class (`type`, *optional*, defaults to `AutoModelForCausalLM`):
            The auto class to load with.
    """
    if isinstance(model, str):
        overrides = {"quantization_config": quantization_config} if quantization_config is not None else {}
        model = load_trained_model(model, args, auto_class, **overrides)
    elif quantization_config is not None:
        raise ValueError("quantization_config only applies when `model` is a string; the model is already loaded.")
    coef = getattr(args, "router_aux_loss_coef", None)
    if coef not in (None, 0.0) and not is_moe_model(model):
        raise ValueError(
            f"router_aux_loss_coef={coef} is set but {type(model).__name__} is not a mixture-of-experts model (its "
            "config has no router). Leave router_aux_loss_coef=None."
        )
    return model


def prepare_auxiliary_model(
    model: str | torch.nn.Module, args: Any, init_kwargs: dict[str, Any] | None = None, auto_class: Any = None
) -> torch.nn.Module:
    """A model a trainer runs but never trains (reference, teacher, reward or value model), ready to use: loaded when
    given as a string, frozen (no parameter requires grad), in eval mode and with every dropout probability at 0.

    Dropout is switched off whatever `args.disable_dropout` says: these models only score, and a `train()` call on a
    wrapper must not turn their noise back on. A PEFT policy's reference needs no model at all (its adapters are
    disabled instead, see `trl.trainer.reference`), so it never comes through here.

    Args:
        model (`str` or `torch.nn.Module`):
            Model id / local path, or a loaded model.
        args (`TrainingArguments`):
            The trainer config (`model_init_kwargs`, `trust_remote_code`).
        init_kwargs (`dict[str, Any]` or `None`, *optional*, defaults to `None`):
            `from_pretrained` arguments for this model (e.g. `ref_model_init_kwargs`); `None` uses
            `args.model_init_kwargs`.
        auto_class (`type` or `None`, *optional*, defaults to `None`):
            The auto class to load with; `None` is `AutoModelForCausalLM`.
    """
    if isinstance(model, str):
        load_args = SimpleNamespace(
            model_init_kwargs=init_kwargs if init_kwargs is not None else getattr(args, "model_init_kwargs", None),
            trust_remote_code=getattr(args, "trust_remote_code", False),
        )
        model = load_model(model, load_args, auto_class or AutoModelForCausalLM)
    for param in model.parameters():
        param.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.eval()


def check_activation_offloading(args: Any) -> None:
    """`activation_offloading` moves saved activations from an accelerator to CPU memory: refuse it without one."""
    if getattr(args, "activation_offloading", False) and not torch.cuda.is_available():
        raise ValueError(
            "activation_offloading moves activations from an accelerator to CPU memory; without a CUDA device there "
            "is nothing to offload. Set activation_offloading=False."
        )
