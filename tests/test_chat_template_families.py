"""Per-family tests of the shipped chat templates (trl/chat_templates/<family>_training.jinja).

Each family gets a tiny offline tokenizer (the trl.testing BPE plus the family's special tokens) whose chat template
is the family's plain template. For a multi-turn, a system-prompt, a tool-call (families with tools) and an image
(vision families) conversation, the plain and training templates render the same text, and the assistant mask of the
training template covers exactly what the assistant writes: each masked run starts where the generation prompt ends
and stops at the family's end-of-turn token.
"""

from dataclasses import dataclass

import pytest

from trl.chat_template_utils import (
    FAMILIES,
    detect_chat_template_family,
    get_family,
    get_training_chat_template,
    is_chat_template_prefix_preserving,
    is_chat_template_stop_token_trained,
    strip_generation_markers,
    supports_tool_calling,
)
from trl.testing.tiny_tokenizer import build_tiny_tokenizer


@dataclass(frozen=True)
class Spec:
    """What a family's tiny tokenizer needs and what its renderings must look like."""

    single_turn: str  # rendering of [user "Hi", assistant "Hello"]
    end_tokens: tuple[str, ...]  # tokens that close an assistant turn
    special: tuple[str, ...] = ()
    bos: str | None = None
    eos: str = "<|im_end|>"
    tools: bool = True
    system: bool = True
    prefix_preserving: bool = True
    headers: tuple[str, ...] = ()  # what precedes an assistant run when the family is not prefix-preserving
    final_turn_closed: bool = True  # False when the next message's role token ends a turn (GLM)
    image_turn: str | None = None  # rendering of [user [image, "Describe."], assistant "A cat."] for vision families
    base: str = "chatml"


QWEN_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
DEEPSEEK_TOKENS = (
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
)
COHERE_TOKENS = ("<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>")
COHERE_TOKENS += ("<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>")
COHERE2_TOKENS = COHERE_TOKENS + (
    "<|START_RESPONSE|>",
    "<|END_RESPONSE|>",
    "<|START_ACTION|>",
    "<|END_ACTION|>",
    "<|START_THINKING|>",
    "<|END_THINKING|>",
    "<|START_TOOL_RESULT|>",
    "<|END_TOOL_RESULT|>",
)
GPTOSS_TOKENS = ("<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>")
LFM2_TOKENS = ("<|startoftext|>", "<|tool_list_start|>", "<|tool_list_end|>", "<|tool_call_start|>")
LFM2_TOKENS += ("<|tool_call_end|>", "<|tool_response_start|>", "<|tool_response_end|>")
GLM_TOKENS = ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
PHI_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
GEMMA_TOKENS = ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>")
LLAMA_HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"
LLAMA31_SYSTEM = LLAMA_HEADER.format("system") + "Cutting Knowledge Date: December 2023\nToday Date: {}\n\n<|eot_id|>"
LLAMA_TURNS = LLAMA_HEADER.format("user") + "Hi<|eot_id|>" + LLAMA_HEADER.format("assistant") + "Hello<|eot_id|>"
QWEN_TURNS = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n{}Hello<|im_end|>\n"
GEMMA_TURNS = "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
COHERE_PREFIX = "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"

SPECS = {
    "chatml": Spec(QWEN_TURNS.format(""), ("<|im_end|>",)),
    "tiny_llama3": Spec(
        "<|begin_of_text|>" + LLAMA_TURNS, ("<|eot_id|>",), bos="<|begin_of_text|>", eos="<|eot_id|>", base="llama3"
    ),
    "qwen2_5": Spec(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        + QWEN_TURNS.format(""),
        ("<|im_end|>",),
    ),
    "qwen3": Spec(QWEN_TURNS.format("<think>\n\n</think>\n\n"), ("<|im_end|>",)),
    "qwen3_instruct_2507": Spec(QWEN_TURNS.format(""), ("<|im_end|>",)),
    "qwen3_vl": Spec(
        QWEN_TURNS.format(""),
        ("<|im_end|>",),
        special=QWEN_TOKENS,
        image_turn="<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n",
    ),
    "llama3": Spec(
        "<|begin_of_text|>" + LLAMA_TURNS,
        ("<|eot_id|>",),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        tools=False,
        base="llama3",
    ),
    "llama3_1": Spec(
        "<|begin_of_text|>" + LLAMA31_SYSTEM.format("26 Jul 2024") + LLAMA_TURNS,
        ("<|eot_id|>",),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        base="llama3",
    ),
    "llama3_2": Spec(
        "<|begin_of_text|>" + LLAMA31_SYSTEM.format("{today}") + LLAMA_TURNS,
        ("<|eot_id|>",),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        base="llama3",
    ),
    "gemma": Spec(GEMMA_TURNS, ("<end_of_turn>",), GEMMA_TOKENS, "<bos>", "<eos>", tools=False, system=False),
    "gemma3": Spec(
        GEMMA_TURNS,
        ("<end_of_turn>",),
        GEMMA_TOKENS,
        "<bos>",
        "<eos>",
        tools=False,
        image_turn="<bos><start_of_turn>user\n<start_of_image>Describe.<end_of_turn>\n<start_of_turn>model\n"
        "A cat.<end_of_turn>\n",
    ),
    "phi3": Spec(
        "<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|endoftext|>",
        ("<|end|>",),
        PHI_TOKENS,
        eos="<|endoftext|>",
        tools=False,
    ),
    "phi3_5": Spec(
        "<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|endoftext|>",
        ("<|end|>",),
        PHI_TOKENS,
        eos="<|endoftext|>",
        tools=False,
    ),
    "gptoss": Spec(
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: "
        "2024-06\nCurrent date: {date}\n\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. "
        "Channel must be included for every message.<|end|><|start|>user<|message|>Hi<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello<|return|>",
        ("<|end|>", "<|return|>", "<|call|>"),
        GPTOSS_TOKENS,
        eos="<|return|>",
    ),
    "deepseek_r1_distill": Spec(
        "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜>",
        ("<｜end▁of▁sentence｜>",),
        DEEPSEEK_TOKENS,
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        prefix_preserving=False,
        headers=("<｜Assistant｜>", "<｜tool▁outputs▁end｜>"),
    ),
    "deepseekv3": Spec(
        "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜>",
        ("<｜end▁of▁sentence｜>",),
        DEEPSEEK_TOKENS,
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
    ),
    "glm4moe": Spec(
        "[gMASK]<sop><|user|>\nHi<|assistant|>\n<think></think>\nHello",
        ("<|user|>", "<|observation|>"),
        GLM_TOKENS,
        eos="<|endoftext|>",
        final_turn_closed=False,
    ),
    "cohere": Spec(
        COHERE_PREFIX + "<|CHATBOT_TOKEN|>Hello<|END_OF_TURN_TOKEN|>",
        ("<|END_OF_TURN_TOKEN|>",),
        COHERE_TOKENS,
        "<BOS_TOKEN>",
        "<|END_OF_TURN_TOKEN|>",
        tools=False,
    ),
    "cohere2": Spec(
        COHERE_PREFIX + "<|CHATBOT_TOKEN|><|START_RESPONSE|>Hello<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
        ("<|END_OF_TURN_TOKEN|>",),
        COHERE2_TOKENS,
        "<BOS_TOKEN>",
        "<|END_OF_TURN_TOKEN|>",
    ),
    "lfm2": Spec("<|startoftext|>" + QWEN_TURNS.format(""), ("<|im_end|>",), LFM2_TOKENS, "<|startoftext|>"),
    "idefics3": Spec(
        "<|begin_of_text|>User: Hi<end_of_utterance>\nAssistant: Hello<end_of_utterance>\n",
        ("<end_of_utterance>",),
        ("<end_of_utterance>", "<image>"),
        eos="<end_of_utterance>",
        tools=False,
        image_turn="<|begin_of_text|>User:<image>Describe.<end_of_utterance>\nAssistant: A cat.<end_of_utterance>\n",
    ),
    "smolvlm": Spec(
        "<|im_start|>User: Hi<end_of_utterance>\nAssistant: Hello<end_of_utterance>\n",
        ("<end_of_utterance>",),
        ("<end_of_utterance>", "<image>"),
        eos="<end_of_utterance>",
        tools=False,
        image_turn="<|im_start|>User:<image>Describe.<end_of_utterance>\nAssistant: A cat.<end_of_utterance>\n",
    ),
    "llava_next": Spec(
        "[INST] Hi [/INST] Hello</s>",
        ("</s>",),
        ("<s>", "<image>"),
        "<s>",
        "</s>",
        tools=False,
        image_turn="[INST] <image>\nDescribe. [/INST] A cat.</s>",
    ),
}
NAMES = [family.name for family in FAMILIES]

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name."}},
            "required": ["city"],
        },
    },
}
SINGLE_TURN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
MULTI_TURN = SINGLE_TURN + [
    {"role": "user", "content": "How are you?"},
    {"role": "assistant", "content": "Fine, thanks."},
]
SYSTEM_PROMPT = [{"role": "system", "content": "Be brief."}] + MULTI_TURN
TOOL_CALLING = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "name": "get_weather", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."},
]
IMAGE_TURN = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
]


def family_tokenizer(name: str):
    """A tiny tokenizer with the family's special tokens, BOS/EOS, and the family's plain template."""
    spec = SPECS[name]
    tokenizer = build_tiny_tokenizer(spec.base)
    tokens = [token for token in spec.special + (spec.eos,) + ((spec.bos,) if spec.bos else ()) if token]
    tokenizer.add_tokens([t for t in tokens if t not in tokenizer.get_vocab()], special_tokens=True)
    tokenizer.eos_token = spec.eos
    if spec.bos is not None:
        tokenizer.bos_token = spec.bos
    tokenizer.chat_template = get_family(name).chat_template
    return tokenizer


def conversations(name: str) -> list[tuple[str, list[dict], dict]]:
    spec = SPECS[name]
    cases = [("multi-turn", MULTI_TURN, {})]
    if spec.system:
        cases.append(("system prompt", SYSTEM_PROMPT, {}))
    if spec.tools:
        cases.append(("tool call", TOOL_CALLING, {"tools": [TOOL]}))
    if spec.image_turn is not None:
        cases.append(("image", IMAGE_TURN, {}))
    return cases


CASES = [(name, case, messages, kwargs) for name in NAMES for case, messages, kwargs in conversations(name)]
CASE_IDS = [f"{name}-{case}" for name, case, _, _ in CASES]


def text_of(message: dict) -> str:
    content = message.get("content") or ""
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def runs_of(mask: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of ones."""
    runs, start = [], None
    for index, bit in enumerate(list(mask) + [0]):
        if bit and start is None:
            start = index
        elif not bit and start is not None:
            runs.append((start, index))
            start = None
    return runs


def test_every_family_has_a_spec():
    assert sorted(SPECS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_plain_template_is_the_training_template_without_markers(name):
    family = get_family(name)
    assert "generation" in family.training_chat_template
    assert family.chat_template == strip_generation_markers(family.training_chat_template)
    assert "{% generation" not in family.chat_template and "{%- generation" not in family.chat_template


@pytest.mark.parametrize("name", NAMES)
def test_single_turn_rendering(name):
    import datetime

    tokenizer = family_tokenizer(name)
    today = datetime.datetime.now()
    expected = SPECS[name].single_turn.format(today=today.strftime("%d %b %Y"), date=today.strftime("%Y-%m-%d"))
    assert tokenizer.apply_chat_template(SINGLE_TURN, tokenize=False) == expected


@pytest.mark.parametrize("name, case, messages, kwargs", CASES, ids=CASE_IDS)
def test_plain_and_training_render_the_same(name, case, messages, kwargs):
    tokenizer = family_tokenizer(name)
    training = get_family(name).training_chat_template
    for end in range(1, len(messages) + 1):
        for prompt in (False, True):
            head = messages[:end]
            plain = tokenizer.apply_chat_template(head, tokenize=False, add_generation_prompt=prompt, **kwargs)
            trained = tokenizer.apply_chat_template(
                head, tokenize=False, add_generation_prompt=prompt, chat_template=training, **kwargs
            )
            assert trained == plain


@pytest.mark.parametrize("name, case, messages, kwargs", CASES, ids=CASE_IDS)
def test_assistant_mask_covers_exactly_the_assistant_tokens(name, case, messages, kwargs):
    spec, tokenizer = SPECS[name], family_tokenizer(name)
    training = get_family(name).training_chat_template
    output = tokenizer.apply_chat_template(
        messages, chat_template=training, return_dict=True, return_assistant_tokens_mask=True, **kwargs
    )
    ids, runs = list(output["input_ids"]), runs_of(output["assistant_masks"])
    assistant = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    assert len(runs) == len(assistant)
    for (start, end), index in zip(runs, assistant):
        message, text = messages[index], tokenizer.decode(ids[start:end])
        assert text_of(message) in text
        for call in message.get("tool_calls", []):
            assert call["function"]["name"] in text and "Paris" in text
        # The run ends with the end-of-turn token (GLM's final turn has none: the next role token would end it).
        closed = spec.final_turn_closed or index != len(messages) - 1
        last = tokenizer.convert_ids_to_tokens(ids[end - 1])
        assert (last in spec.end_tokens) == closed
        # The run starts exactly where the generation prompt of the conversation so far ends.
        if spec.prefix_preserving:
            prompt = tokenizer.apply_chat_template(
                messages[:index], add_generation_prompt=True, return_dict=True, **kwargs
            )["input_ids"]
            assert ids[:start] == list(prompt)
        else:
            assert tokenizer.decode(ids[:start]).endswith(spec.headers)


@pytest.mark.parametrize("name", NAMES)
def test_training_template_is_recognised(name):
    tokenizer = family_tokenizer(name)
    training = get_family(name).training_chat_template
    assert get_training_chat_template(tokenizer) == training
    # A template that is not trl's text but renders the same (as a hub copy of the family's template would) is
    # recognised by its special tokens and its renderings.
    tokenizer.chat_template = "{#- a copy of the family's template -#}\n" + tokenizer.chat_template
    assert detect_chat_template_family(tokenizer).name == name
    assert get_training_chat_template(tokenizer) == training


@pytest.mark.parametrize("name", NAMES)
def test_training_template_passes_the_trainer_checks(name):
    spec, tokenizer = SPECS[name], family_tokenizer(name)
    assert is_chat_template_prefix_preserving(tokenizer) == spec.prefix_preserving
    assert supports_tool_calling(tokenizer) == spec.tools
    training = get_family(name).training_chat_template
    assert is_chat_template_stop_token_trained(tokenizer, training) == spec.final_turn_closed


@pytest.mark.parametrize("name", [name for name in NAMES if SPECS[name].image_turn])
def test_image_placeholders(name):
    tokenizer = family_tokenizer(name)
    assert tokenizer.apply_chat_template(IMAGE_TURN, tokenize=False) == SPECS[name].image_turn
    prompt = tokenizer.apply_chat_template(IMAGE_TURN[:1], tokenize=False, add_generation_prompt=True)
    assert SPECS[name].image_turn.startswith(prompt)


def test_qwen3_drops_the_reasoning_of_earlier_turns():
    """Qwen3 keeps reasoning only after the last user query: a finished reasoning turn renders differently once the
    conversation goes on, so such conversations are not token-prefixes of their continuations."""
    tokenizer = family_tokenizer("qwen3")
    turn = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "reasoning_content": "Greet."},
    ]
    alone = tokenizer.apply_chat_template(turn, tokenize=False)
    continued = tokenizer.apply_chat_template(turn + [{"role": "user", "content": "Bye"}], tokenize=False)
    assert "<think>\nGreet.\n</think>\n\nHello<|im_end|>" in alone
    assert "Greet." not in continued and not continued.startswith(alone)
    no_think = tokenizer.apply_chat_template(
        turn[:1], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_deepseek_r1_generation_prompt_opens_the_reasoning():
    tokenizer = family_tokenizer("deepseek_r1_distill")
    prompt = tokenizer.apply_chat_template(SINGLE_TURN[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<｜Assistant｜><think>\n")
    answer = [SINGLE_TURN[0], {"role": "assistant", "content": "<think>\nGreet.\n</think>\n\nHello"}]
    assert tokenizer.apply_chat_template(answer, tokenize=False).endswith(
        "<｜Assistant｜>\n\nHello<｜end▁of▁sentence｜>"
    )


def test_gptoss_channels():
    tokenizer = family_tokenizer("gptoss")
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "thinking": "Greet back."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, reasoning_effort="high")
    assert "Reasoning: high" in text
    assert text.endswith(
        "<|start|>assistant<|channel|>analysis<|message|>Greet back.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello<|return|>"
    )
    # An earlier turn ends with <|end|> and loses its reasoning once a later user message follows.
    longer = tokenizer.apply_chat_template(messages + [{"role": "user", "content": "Bye"}], tokenize=False)
    assert "Greet back." not in longer and "<|channel|>final<|message|>Hello<|end|>" in longer


def test_gemma_refuses_system_messages_and_gemma3_folds_them():
    with pytest.raises(Exception, match="System role not supported"):
        family_tokenizer("gemma").apply_chat_template(SYSTEM_PROMPT, tokenize=False)
    text = family_tokenizer("gemma3").apply_chat_template(SYSTEM_PROMPT[:3], tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n")


def test_glm_masks_the_role_token_that_ends_the_turn():
    tokenizer = family_tokenizer("glm4moe")
    output = tokenizer.apply_chat_template(
        MULTI_TURN,
        chat_template=get_family("glm4moe").training_chat_template,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    first, second = (tokenizer.decode(output["input_ids"][a:b]) for a, b in runs_of(output["assistant_masks"]))
    assert first == "\n<think></think>\nHello<|user|>"
    assert second == "\n<think></think>\nFine, thanks."


@pytest.mark.parametrize(
    "name, generated, expected",
    [
        (
            "qwen3",
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
        ),
        (
            "llama3_1",
            '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
        ),
        ("gemma3", "It is sunny.<end_of_turn>\n<start_of_turn>user", {"role": "assistant", "content": "It is sunny."}),
        ("phi3_5", "It is sunny.<|end|>\n<|user|>", {"role": "assistant", "content": "It is sunny."}),
        ("smolvlm", " A cat.<end_of_utterance>\nUser:", {"role": "assistant", "content": "A cat."}),
    ],
)
def test_add_response_schema_parses_the_family_format(name, generated, expected):
    from trl.chat_template_utils import add_response_schema, parse_response

    tokenizer = add_response_schema(family_tokenizer(name))
    ids = tokenizer(generated, add_special_tokens=False)["input_ids"]
    assert parse_response(tokenizer, ids) == expected


@pytest.mark.parametrize("name", ["gptoss", "deepseekv3", "glm4moe", "cohere2", "lfm2"])
def test_add_response_schema_names_the_family_it_cannot_parse(name):
    from trl.chat_template_utils import add_response_schema

    with pytest.raises(ValueError, match=f"(?s){get_family(name).title.split(' (')[0]}.*response_schema"):
        add_response_schema(family_tokenizer(name))


@pytest.mark.parametrize("name", ["qwen3", "gptoss", "deepseekv3", "gemma3"])
def test_clone_chat_template_onto_a_tiny_model(tmp_path, name):
    """clone_chat_template copies the family's template, special tokens and EOS from a tokenizer directory onto a
    tiny model (from trl.testing) and its tokenizer, growing the embeddings to a multiple of 64."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl import clone_chat_template
    from trl.testing import get_tiny_model_path

    source = family_tokenizer(name)
    source.save_pretrained(tmp_path)
    path = get_tiny_model_path("llama")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    before = len(tokenizer)
    model, tokenizer, added = clone_chat_template(model, tokenizer, str(tmp_path))
    assert tokenizer.chat_template == source.chat_template
    new_tokens = [
        token
        for token in SPECS[name].special + (SPECS[name].eos,)
        if token not in AutoTokenizer.from_pretrained(path).get_vocab()
    ]
    assert tokenizer.convert_ids_to_tokens(added) == list(dict.fromkeys(new_tokens))
    assert added == list(range(before, before + len(added)))
    assert tokenizer.eos_token == SPECS[name].eos
    assert model.config.eos_token_id == tokenizer.eos_token_id == model.generation_config.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == -(-len(tokenizer) // 64) * 64
    # The cloned tokenizer renders the family's format and its training template gives an assistant mask.
    assert get_training_chat_template(tokenizer) == get_family(name).training_chat_template
