"""Chat-template utilities: copying a template between tokenizers, training templates with `{% generation %}` markers
for the supported model families, the template checks run when a trainer loads its data, and parsing of generated
assistant messages.

Split by concern: `cloning` (clone_chat_template, setup_chat_format), `families` (the shipped templates, family
recognition, get_training_chat_template), `checks` (prefix preservation, assistant-mask checks), `parsing`
(response schemas, parse_response). Every public name stays importable from `trl.chat_template_utils`.
"""

from ..data_utils import prepare_multimodal_messages
from ._common import CHAT_TEMPLATES_DIR, has_generation_markers, strip_generation_markers
from .checks import (
    chat_template_problems,
    check_chat_template,
    is_chat_template_prefix_preserving,
    is_chat_template_stop_token_trained,
    supports_tool_calling,
)
from .cloning import clone_chat_template, setup_chat_format
from .families import (
    FAMILIES,
    TEMPLATE_ATTRIBUTES,
    ChatTemplateFamily,
    detect_chat_template_family,
    get_family,
    get_training_chat_template,
)
from .parsing import (
    CHATML_RESPONSE_SCHEMA,
    LLAMA3_RESPONSE_SCHEMA,
    add_response_schema,
    parse_response,
)


# `qwen3_chat_template`, `qwen3_training_chat_template`, ... for every family in FAMILIES.
globals().update(TEMPLATE_ATTRIBUTES)

__all__ = [
    "CHATML_RESPONSE_SCHEMA",
    "CHAT_TEMPLATES_DIR",
    "FAMILIES",
    "LLAMA3_RESPONSE_SCHEMA",
    "ChatTemplateFamily",
    "add_response_schema",
    "chat_template_problems",
    "check_chat_template",
    "clone_chat_template",
    "detect_chat_template_family",
    "get_family",
    "get_training_chat_template",
    "has_generation_markers",
    "is_chat_template_prefix_preserving",
    "is_chat_template_stop_token_trained",
    "parse_response",
    "prepare_multimodal_messages",
    "setup_chat_format",
    "strip_generation_markers",
    "supports_tool_calling",
    *TEMPLATE_ATTRIBUTES,
]
