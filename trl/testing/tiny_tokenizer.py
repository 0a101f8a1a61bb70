"""Tiny byte-level BPE tokenizers trained offline on the bundled corpus, with each model family's special tokens."""

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .cache import cached_build


_PACKAGE_DIR = Path(__file__).resolve().parent
VOCAB_SIZE = 1024

# One shared vocabulary for every flavour, so token ids do not depend on the chat template. The order fixes the ids:
# "<|endoftext|>" is id 0.
_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<pad>",
    "</s>",
)
# Added as whole tokens but not special, as in Qwen: decoding with `skip_special_tokens=True` keeps them, so a tool
# call can still be parsed from the decoded text.
_NON_SPECIAL_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)


@dataclass(frozen=True)
class _Flavour:
    bos_token: str | None
    eos_token: str
    pad_token: str | None
    chat_template: str | None = None
    add_bos_token: bool = False
    add_eos_token: bool = False


_FLAVOURS = {
    "chatml": _Flavour(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template="chatml"),
    "chatml_generation": _Flavour(
        bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template="chatml_generation"
    ),
    # Like the real Llama 3: a BOS token prepended on encode, no pad token.
    "llama3": _Flavour(
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token=None,
        chat_template="llama3",
        add_bos_token=True,
    ),
    # Like the real GPT-2: bos == eos == "<|endoftext|>", no pad token, no chat template.
    "none": _Flavour(bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token=None),
    # Encoder-decoder (T5-style): "</s>" appended on encode, "<pad>" doubles as the decoder start token.
    "t5": _Flavour(bos_token=None, eos_token="</s>", pad_token="<pad>", add_eos_token=True),
}
TINY_TEMPLATES = ("chatml", "chatml_generation", "llama3", "none")


def _flavour_name(template: str | None) -> str:
    name = "none" if template is None else template
    if name not in _FLAVOURS or name == "t5":
        raise ValueError(f"Unknown template {template!r}; choose one of {TINY_TEMPLATES}.")
    return name


def read_chat_template(name: str) -> str:
    """
    Reads one of the bundled chat templates.

    Args:
        name (`str`):
            Template name: `"chatml"`, `"chatml_generation"` or `"llama3"`.

    Returns:
        `str`: The Jinja source.
    """
    return (_PACKAGE_DIR / "templates" / f"{name}.jinja").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    # Trained once per process; every flavour starts from this serialised model.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(_NON_SPECIAL_ADDED_TOKENS),
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = (_PACKAGE_DIR / "data" / "corpus.txt").read_text(encoding="utf-8")
    tokenizer.train_from_iterator(corpus.splitlines(), trainer=trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer(template: str | None = "chatml", flavour: str | None = None):
    """
    Builds a tiny fast tokenizer in memory (no disk access besides the bundled corpus and templates).

    Args:
        template (`str` or `None`, *optional*, defaults to `"chatml"`):
            Chat template and special-token set: `"chatml"`, `"chatml_generation"`, `"llama3"`, or `None` / `"none"`
            (GPT-2 style, no chat template).
        flavour (`str` or `None`, *optional*):
            Overrides the special-token set; `"t5"` gives an encoder-decoder tokenizer. Internal use.

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: The tokenizer, with about 1024 tokens.
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = _FLAVOURS[flavour or _flavour_name(template)]
    backend = Tokenizer.from_str(_trained_tokenizer_json())
    backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in _NON_SPECIAL_ADDED_TOKENS])
    kwargs = {"add_bos_token": True} if spec.add_bos_token else {}
    if spec.add_eos_token:
        kwargs["add_eos_token"] = True
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        unk_token=None,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    if spec.chat_template is not None:
        tokenizer.chat_template = read_chat_template(spec.chat_template)
    return tokenizer


def get_tiny_tokenizer_path(template: str | None = "chatml") -> str:
    """
    Returns a directory holding a tiny fast tokenizer, building and caching it on first use.

    Args:
        template (`str` or `None`, *optional*, defaults to `"chatml"`):
            `"chatml"` (Qwen2.5-style ChatML, eos `"<|im_end|>"`, pad `"<|endoftext|>"`), `"chatml_generation"` (the
            same with `{% generation %}` markers for assistant masks), `"llama3"` (bos `"<|begin_of_text|>"`, eos
            `"<|eot_id|>"`, no pad), or `None` / `"none"` (GPT-2 style: bos = eos = `"<|endoftext|>"`, no pad, no
            chat template).

    Returns:
        `str`: A directory that `AutoTokenizer.from_pretrained` loads.
    """
    name = _flavour_name(template)
    arguments = {"kind": "tokenizer", "flavour": name}
    return cached_build(
        f"tokenizer-{name}", arguments, _saver(name), required=("tokenizer.json", "tokenizer_config.json")
    )


def _saver(flavour: str):
    def save(directory: Path) -> None:
        build_tiny_tokenizer(flavour=flavour).save_pretrained(directory)

    return save
