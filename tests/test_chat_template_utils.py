import pytest
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from trl.chat_template_utils import (
    CHAT_TEMPLATES_DIR,
    FAMILIES,
    add_response_schema,
    chat_template_problems,
    check_chat_template,
    clone_chat_template,
    get_training_chat_template,
    has_generation_markers,
    is_chat_template_prefix_preserving,
    is_chat_template_stop_token_trained,
    parse_response,
    setup_chat_format,
    supports_tool_calling,
)
from trl.testing import get_tiny_tokenizer_path


USER = {"role": "user", "content": "Hi"}
ANSWER = {"role": "assistant", "content": "Hello"}
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
TOOL_CALL = {
    "role": "assistant",
    "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}],
}
TOOL_RESULT = {"role": "tool", "name": "add", "content": "1"}

# A ChatML template whose {% generation %} block leaves the end-of-turn token out.
STOP_OUTSIDE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EMPTY_GENERATION = STOP_OUTSIDE.replace(
    "{% generation %}{{ m.content }}{% endgeneration %}", "{% generation %}{% endgeneration %}{{ m.content }}"
)
# Starts with the number of turns: the prompt's rendering is never a prefix of a longer conversation's.
TURN_COUNTING = (
    "{{ messages | length }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def load(template_name="chatml"):
    return AutoTokenizer.from_pretrained(get_tiny_tokenizer_path(template_name))


def tiny_model(vocab_size=1024):
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class TestGenerationMarkers:
    def test_has_generation_markers(self):
        assert has_generation_markers("a{% generation %}b{% endgeneration %}")
        assert has_generation_markers("a{%- generation -%}b{%- endgeneration -%}")
        assert has_generation_markers({"default": "x", "tool_use": "{%generation%}y{%endgeneration%}"})
        assert not has_generation_markers("{{ generation }} text about generation")
        assert not has_generation_markers({"default": "x"})
        assert not has_generation_markers("")

    def test_shipped_templates_have_markers(self):
        templates = sorted(path.name for path in CHAT_TEMPLATES_DIR.glob("*.jinja"))
        assert templates == sorted(f"{family.name}_training.jinja" for family in FAMILIES)
        for path in CHAT_TEMPLATES_DIR.glob("*.jinja"):
            assert has_generation_markers(path.read_text())


class TestTrainingChatTemplate:
    @pytest.mark.parametrize("name, family", [("chatml", "chatml"), ("llama3", "tiny_llama3")])
    def test_finds_matching_template(self, name, family):
        tokenizer = load(name)
        template = get_training_chat_template(tokenizer)
        assert template == (CHAT_TEMPLATES_DIR / f"{family}_training.jinja").read_text()
        with pytest.warns(FutureWarning, match="processing_class"):
            assert get_training_chat_template(tokenizer=tokenizer) == template
        # Same rendering as the original on a tool-calling conversation, with and without a generation prompt.
        for messages, kwargs in [
            ([USER, TOOL_CALL, TOOL_RESULT, ANSWER], {"tools": [TOOL]}),
            ([{"role": "system", "content": "S"}, USER], {"add_generation_prompt": True}),
        ]:
            original = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
            training = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template, **kwargs)
            assert training == original

    def test_chatml_assistant_mask_is_exact(self):
        tokenizer = load("chatml")
        template = get_training_chat_template(tokenizer)
        output = tokenizer.apply_chat_template(
            [USER, ANSWER], chat_template=template, return_assistant_tokens_mask=True, return_dict=True
        )
        prompt = ids(tokenizer, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        answer = ids(tokenizer, "Hello<|im_end|>")
        newline = ids(tokenizer, "\n")
        assert list(output["input_ids"]) == prompt + answer + newline
        assert list(output["assistant_masks"]) == [0] * len(prompt) + [1] * len(answer) + [0] * len(newline)

    def test_llama3_assistant_mask_is_exact(self):
        tokenizer = load("llama3")
        template = get_training_chat_template(tokenizer)
        output = tokenizer.apply_chat_template(
            [USER, ANSWER], chat_template=template, return_assistant_tokens_mask=True, return_dict=True
        )
        prompt = ids(
            tokenizer,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        )
        answer = ids(tokenizer, "Hello<|eot_id|>")
        assert list(output["input_ids"]) == prompt + answer
        assert list(output["assistant_masks"]) == [0] * len(prompt) + [1] * len(answer)

    def test_tool_call_is_in_mask_and_tool_result_is_not(self):
        tokenizer = load("chatml")
        template = get_training_chat_template(tokenizer)
        messages = [USER, TOOL_CALL, TOOL_RESULT, ANSWER]
        output = tokenizer.apply_chat_template(
            messages, chat_template=template, return_assistant_tokens_mask=True, return_dict=True
        )
        masked = [token for token, bit in zip(output["input_ids"], output["assistant_masks"]) if bit]
        expected = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><|im_end|>Hello<|im_end|>'
        assert tokenizer.decode(masked) == expected

    def test_none_when_markers_present(self):
        assert get_training_chat_template(load("chatml_generation")) is None

    def test_unknown_or_missing_template_raises_with_the_fix(self):
        tokenizer = load("chatml")
        tokenizer.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        with pytest.raises(ValueError, match="(?s)not recognised.*chat_template_path.*generation"):
            get_training_chat_template(tokenizer)
        tokenizer.chat_template = TURN_COUNTING  # ChatML tokens, but renders differently from every ChatML family
        with pytest.raises(ValueError, match="(?s)special tokens of trl ChatML.*chatml_training_chat_template"):
            get_training_chat_template(tokenizer)
        tokenizer.chat_template = None
        with pytest.raises(ValueError, match="no chat template.*chat_template_path"):
            get_training_chat_template(tokenizer)
        with pytest.raises(ValueError, match="processing_class"):
            get_training_chat_template()
        with pytest.raises(TypeError, match="only `processing_class`"):
            get_training_chat_template(tokenizer, tokenizer=tokenizer)


class TestTemplateChecks:
    @pytest.mark.parametrize("name", ["chatml", "chatml_generation", "llama3"])
    def test_prefix_preserving(self, name):
        assert is_chat_template_prefix_preserving(load(name))

    def test_not_prefix_preserving(self):
        tokenizer = load("chatml")
        tokenizer.chat_template = TURN_COUNTING
        assert not is_chat_template_prefix_preserving(tokenizer)

    def test_stop_token_trained(self):
        tokenizer = load("chatml")
        assert not is_chat_template_stop_token_trained(tokenizer)  # no markers, no mask
        assert is_chat_template_stop_token_trained(tokenizer, get_training_chat_template(tokenizer))
        assert not is_chat_template_stop_token_trained(tokenizer, STOP_OUTSIDE)
        assert is_chat_template_stop_token_trained(load("chatml_generation"))

    def test_check_passes(self):
        check_chat_template(load("chatml"), assistant_only_loss=False)
        check_chat_template(load("chatml_generation"), assistant_only_loss=True)
        assert chat_template_problems(load("llama3")) == []

    def test_assistant_only_loss_without_markers_names_the_fix(self):
        with pytest.raises(ValueError, match="(?s)generation.*get_training_chat_template.*chat_template_path"):
            check_chat_template(load("chatml"), assistant_only_loss=True)

    def test_no_template(self):
        tokenizer = load("chatml")
        tokenizer.chat_template = None
        with pytest.raises(ValueError, match="no chat template.*chat_template_path"):
            check_chat_template(tokenizer)

    def test_not_prefix_preserving_problem(self):
        tokenizer = load("chatml")
        tokenizer.chat_template = TURN_COUNTING
        with pytest.raises(ValueError, match="not prefix-preserving"):
            check_chat_template(tokenizer)
        check_chat_template(tokenizer, require_prefix_preserving=False)

    def test_stop_token_outside_mask(self):
        tokenizer = load("chatml")
        tokenizer.chat_template = STOP_OUTSIDE
        problems = chat_template_problems(tokenizer, assistant_only_loss=True)
        assert len(problems) == 1 and "end-of-turn token" in problems[0]

    def test_all_zero_mask(self):
        tokenizer = load("chatml")
        tokenizer.chat_template = EMPTY_GENERATION
        problems = chat_template_problems(tokenizer, assistant_only_loss=True)
        assert len(problems) == 1 and "all zeros" in problems[0]

    def test_supports_tool_calling(self):
        assert supports_tool_calling(load("chatml"))
        assert supports_tool_calling(load("llama3"))
        tokenizer = load("chatml")
        tokenizer.chat_template = STOP_OUTSIDE  # ignores tool_calls entirely
        assert not supports_tool_calling(tokenizer)
        tokenizer.chat_template = None
        assert not supports_tool_calling(tokenizer)


class TestCloneChatTemplate:
    @pytest.fixture
    def source_path(self, tmp_path):
        source = load("llama3")
        source.add_tokens(["<|new_turn|>"], special_tokens=True)
        source.add_tokens(["<think2>"])
        source.eos_token = "<|new_turn|>"
        source.save_pretrained(tmp_path)
        return str(tmp_path)

    def test_clone(self, source_path):
        tokenizer, model = load("chatml"), tiny_model()
        model, tokenizer, added = clone_chat_template(model, tokenizer, source_path)
        assert tokenizer.chat_template == load("llama3").chat_template
        assert added == [1024, 1025]
        assert tokenizer.convert_ids_to_tokens(added) == ["<|new_turn|>", "<think2>"]
        assert tokenizer.added_tokens_decoder[1024].special and not tokenizer.added_tokens_decoder[1025].special
        assert tokenizer.eos_token == "<|new_turn|>"
        assert model.config.eos_token_id == 1024 and model.generation_config.eos_token_id == 1024
        assert model.get_input_embeddings().weight.shape[0] == 1088  # 1026 rounded up to a multiple of 64
        assert model.get_output_embeddings().weight.shape[0] == 1088

    def test_clone_exact_size(self, source_path):
        model, tokenizer, _ = clone_chat_template(
            tiny_model(), load("chatml"), source_path, resize_to_multiple_of=None
        )
        assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 1026

    def test_clone_never_shrinks(self, source_path):
        model, _, _ = clone_chat_template(tiny_model(vocab_size=2000), load("chatml"), source_path)
        assert model.get_input_embeddings().weight.shape[0] == 2048  # already large enough, only rounded up

    def test_source_without_template(self, tmp_path):
        source = load("chatml")
        source.chat_template = None
        source.save_pretrained(tmp_path)
        with pytest.raises(ValueError, match="no chat template"):
            clone_chat_template(tiny_model(), load("chatml"), str(tmp_path))


class TestSetupChatFormat:
    def test_setup(self):
        tokenizer, model = load("chatml"), tiny_model(vocab_size=1000)
        tokenizer.chat_template = None
        with pytest.warns(FutureWarning, match="clone_chat_template"):
            model, tokenizer = setup_chat_format(model, tokenizer, resize_to_multiple_of=64)
        assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
            "<|im_start|>",
            "<|im_end|>",
            "<|im_end|>",
        )
        assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert model.config.bos_token_id == tokenizer.convert_tokens_to_ids("<|im_start|>")
        assert model.config.pad_token_id == model.config.eos_token_id
        assert model.get_input_embeddings().weight.shape[0] == 1024
        assert has_generation_markers(tokenizer.chat_template)
        text = tokenizer.apply_chat_template([USER, ANSWER], tokenize=False)
        assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"

    def test_errors(self):
        with pytest.warns(FutureWarning), pytest.raises(ValueError, match="already has a chat template"):
            setup_chat_format(tiny_model(), load("chatml"))
        tokenizer = load("chatml")
        tokenizer.chat_template = None
        with pytest.warns(FutureWarning), pytest.raises(ValueError, match="Unsupported format"):
            setup_chat_format(tiny_model(), tokenizer, format="zephyr")


class TestParseResponse:
    def test_content_and_tool_call(self):
        tokenizer = load("chatml")
        text = 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><|im_end|>ignored'
        assert parse_response(tokenizer, ids(tokenizer, text)) == {
            "role": "assistant",
            "content": "Let me add.",
            "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}],
        }

    def test_plain_answer_and_eos_cut(self):
        tokenizer = load("chatml")
        assert parse_response(tokenizer, ids(tokenizer, "Paris.<|im_end|>\n<|im_start|>user")) == {
            "role": "assistant",
            "content": "Paris.",
        }

    def test_malformed_tool_call_stays_in_content(self):
        tokenizer = load("chatml")
        text = "<tool_call>\n{not json}\n</tool_call>"
        assert parse_response(tokenizer, ids(tokenizer, text)) == {"role": "assistant", "content": text}

    def test_unknown_tool_stays_in_content(self):
        tokenizer = load("chatml")
        text = '<tool_call>\n{"name": "rm", "arguments": {}}\n</tool_call>'
        assert parse_response(tokenizer, ids(tokenizer, text), tools=[TOOL]) == {"role": "assistant", "content": text}
        assert parse_response(tokenizer, ids(tokenizer, text))["tool_calls"][0]["function"]["name"] == "rm"

    def test_prefill_from_prefix(self):
        tokenizer = load("chatml")
        prefix = ids(tokenizer, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nThe answer")
        assert (
            parse_response(tokenizer, ids(tokenizer, " is 2.<|im_end|>"), prefix=prefix)["content"]
            == "The answer is 2."
        )
        closed = ids(tokenizer, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        assert parse_response(tokenizer, ids(tokenizer, "Two."), prefix=closed)["content"] == "Two."

    def test_llama3_json_tool_call(self):
        tokenizer = load("llama3")
        text = '{"name": "add", "parameters": {"a": 1}}<|eot_id|>'
        assert parse_response(tokenizer, ids(tokenizer, text)) == {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}],
        }

    def test_add_response_schema(self):
        tokenizer = add_response_schema(load("chatml"))
        assert tokenizer.response_schema["tool_call_open"] == "<tool_call>"
        tokenizer.response_schema["tool_call_open"], tokenizer.response_schema["tool_call_close"] = "<call>", "</call>"
        text = '<call>{"name": "add", "arguments": {}}</call>'
        assert parse_response(tokenizer, ids(tokenizer, text))["tool_calls"][0]["function"]["name"] == "add"
        unknown = load("chatml")
        unknown.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
        with pytest.raises(ValueError, match="response_schema"):
            add_response_schema(unknown)


@pytest.mark.parametrize(
    "trainer, data",
    [
        ("DPO", "conversational_preference"),
        ("KTO", "conversational_unpaired_preference"),
        ("ORPO", "conversational_preference"),
    ],
)
def test_every_trainer_checks_the_template_of_conversational_data(tmp_path, trainer, data):
    """The preference trainers run the same chat-template checks as SFT (here: prefix preservation)."""
    import trl
    from trl.testing import get_tiny_model_path, load_test_dataset

    tokenizer = load("chatml")
    tokenizer.chat_template = TURN_COUNTING
    trainer_class, config_class = getattr(trl, f"{trainer}Trainer"), getattr(trl, f"{trainer}Config")
    args = config_class(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2)
    with pytest.raises(ValueError, match="prefix-preserving"):
        trainer_class(
            get_tiny_model_path("qwen2"),
            args=args,
            train_dataset=load_test_dataset(data).select(range(4)),
            processing_class=tokenizer,
        )
