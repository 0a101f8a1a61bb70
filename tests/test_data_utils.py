import json
import time

import numpy as np
import pytest
from datasets import Dataset, DatasetDict, IterableDataset
from transformers import AutoTokenizer

from trl.data_utils import (
    apply_chat_template,
    common_prefix_length,
    extract_prompt,
    get_dataset_column_names,
    get_dataset_type,
    is_conversational,
    is_conversational_from_value,
    maybe_apply_chat_template,
    maybe_convert_to_chatml,
    maybe_extract_prompt,
    maybe_unpair_preference_dataset,
    pack_dataset,
    prepare_multimodal_messages,
    truncate_dataset,
    unpair_preference_dataset,
)
from trl.testing import DATASET_CONFIGS, get_tiny_tokenizer_path, load_test_dataset


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.fixture(scope="module")
def chatml():
    return AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("chatml"))


@pytest.fixture(scope="module")
def llama3():
    return AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("llama3"))


# ---------------------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------------------


class TestDetection:
    def test_is_conversational(self):
        assert is_conversational({"messages": [user("Hi")]})
        assert is_conversational({"prompt": [user("Hi")], "completion": [assistant("Yo")]})
        assert is_conversational({"chosen": [user("Hi")], "rejected": [user("Ho")]})
        assert not is_conversational({"prompt": "The sky is", "completion": " blue."})
        assert not is_conversational({"text": "plain"})
        assert not is_conversational({"prompt": []})
        assert not is_conversational({"prompt": [{"from": "human", "value": "Hi"}]})

    def test_is_conversational_first_present_key_decides(self):
        # `prompt` is inspected before `completion`.
        assert not is_conversational({"prompt": "standard", "completion": [assistant("Yo")]})

    def test_is_conversational_from_value(self):
        assert is_conversational_from_value({"conversations": [{"from": "human", "value": "Hi"}]})
        assert not is_conversational_from_value({"conversations": [user("Hi")]})
        assert not is_conversational_from_value({"messages": [{"from": "human", "value": "Hi"}]})

    @pytest.mark.parametrize(
        "columns, expected",
        [
            (["text"], "language_modeling"),
            (["messages", "tools"], "language_modeling"),
            (["prompt"], "prompt_only"),
            (["prompt", "completion"], "prompt_completion"),
            (["prompt", "chosen", "rejected"], "preference"),
            (["chosen", "rejected", "margin"], "implicit_prompt_preference"),
            (["prompt", "completion", "label"], "unpaired_preference"),
            (["prompt", "completions", "labels"], "stepwise_supervision"),
        ],
    )
    def test_get_dataset_type(self, columns, expected):
        assert get_dataset_type(columns) == expected
        assert get_dataset_type(dict.fromkeys(columns)) == expected

    def test_get_dataset_type_error_lists_expected_columns(self):
        with pytest.raises(ValueError, match=r"question.*prompt, chosen, rejected.*rename_column"):
            get_dataset_type(["question", "answer"])

    @pytest.mark.parametrize("config", DATASET_CONFIGS)
    def test_get_dataset_type_on_test_datasets(self, config):
        dataset = load_test_dataset(config)
        kind = config.split("_", 1)[1]
        expected = "language_modeling" if kind == "tool_calling" else kind
        assert get_dataset_type(dataset.column_names) == expected
        assert is_conversational(dataset[0]) == config.startswith("conversational")

    def test_common_prefix_length(self):
        assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
        assert common_prefix_length([1, 2], [1, 2, 3]) == 2
        assert common_prefix_length([], [1]) == 0
        assert common_prefix_length("abc", "abd") == 2

    def test_get_dataset_column_names(self):
        dataset = Dataset.from_dict({"a": [1], "b": [2]})
        assert get_dataset_column_names(dataset) == ["a", "b"]
        assert get_dataset_column_names(DatasetDict(train=dataset)) == ["a", "b"]

        def generate():
            yield {"x": 1, "y": 2}

        iterable = IterableDataset.from_generator(generate)
        assert get_dataset_column_names(iterable) == ["x", "y"]


# ---------------------------------------------------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------------------------------------------------

HI = "<|im_start|>user\nHi<|im_end|>\n"
GEN = "<|im_start|>assistant\n"


class TestApplyChatTemplate:
    def test_language_modeling(self, chatml):
        example = {"messages": [SYSTEM, user("Hi"), assistant("Hello")]}
        expected = "<|im_start|>system\nBe brief.<|im_end|>\n" + HI + GEN + "Hello<|im_end|>\n"
        assert apply_chat_template(example, chatml) == {"text": expected}

    def test_prompt_only(self, chatml):
        assert apply_chat_template({"prompt": [user("Hi")]}, chatml) == {"prompt": HI + GEN}

    def test_prompt_only_ending_with_assistant_continues_it(self, chatml):
        example = {"prompt": [user("Hi"), assistant("Sure, the")]}
        assert apply_chat_template(example, chatml) == {"prompt": HI + GEN + "Sure, the"}

    def test_prompt_ending_with_system_raises(self, chatml):
        with pytest.raises(ValueError, match="must end with a 'user', 'tool' or 'assistant'"):
            apply_chat_template({"prompt": [SYSTEM]}, chatml)

    def test_prompt_completion(self, chatml):
        example = {"prompt": [user("Hi")], "completion": [assistant("Hello")]}
        assert apply_chat_template(example, chatml) == {"prompt": HI + GEN, "completion": "Hello<|im_end|>\n"}

    def test_empty_completion(self, chatml):
        example = {"prompt": [user("Hi")], "completion": [assistant("")]}
        assert apply_chat_template(example, chatml) == {"prompt": HI + GEN, "completion": "<|im_end|>\n"}

    def test_multi_turn_prompt_completion(self, chatml):
        example = {"prompt": [SYSTEM, user("Hi"), assistant("Hello"), user("Bye")], "completion": [assistant("Ciao")]}
        output = apply_chat_template(example, chatml)
        assert output["prompt"] == (
            "<|im_start|>system\nBe brief.<|im_end|>\n" + HI + GEN + "Hello<|im_end|>\n"
            "<|im_start|>user\nBye<|im_end|>\n" + GEN
        )
        assert output["completion"] == "Ciao<|im_end|>\n"

    def test_preference(self, chatml):
        example = {"prompt": [user("Hi")], "chosen": [assistant("Hello")], "rejected": [assistant("Go")]}
        assert apply_chat_template(example, chatml) == {
            "prompt": HI + GEN,
            "chosen": "Hello<|im_end|>\n",
            "rejected": "Go<|im_end|>\n",
        }

    def test_implicit_preference(self, chatml):
        example = {"chosen": [user("Hi"), assistant("Hello")], "rejected": [user("Hi"), assistant("Go")]}
        assert apply_chat_template(example, chatml) == {
            "chosen": HI + GEN + "Hello<|im_end|>\n",
            "rejected": HI + GEN + "Go<|im_end|>\n",
        }

    def test_unpaired_preference_keeps_label(self, chatml):
        example = {"prompt": [user("Hi")], "completion": [assistant("Hello")], "label": False}
        assert apply_chat_template(example, chatml) == {
            "prompt": HI + GEN,
            "completion": "Hello<|im_end|>\n",
            "label": False,
        }

    def test_llama3(self, llama3):
        example = {"prompt": [user("Hi")], "completion": [assistant("Hello")]}
        assert apply_chat_template(example, llama3) == {
            "prompt": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "completion": "Hello<|eot_id|>",
        }

    def test_invalid_keys(self, chatml):
        with pytest.raises(KeyError, match="Invalid keys"):
            apply_chat_template({"prompt": [user("Hi")], "chosen": [assistant("Hello")]}, chatml)

    def test_extra_columns_are_ignored(self, chatml):
        example = {"prompt": [user("Hi")], "images": None, "id": 3}
        assert apply_chat_template(example, chatml) == {"prompt": HI + GEN}

    def test_tool_calls_and_tools_argument(self, chatml):
        tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
        call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}
        messages = [
            user("Add"),
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "add", "content": "1"},
            assistant("It is 1."),
        ]
        text = apply_chat_template({"messages": messages}, chatml, tools=[tool])["text"]
        assert text == (
            "<|im_start|>system\n# Tools\n\nYou can call the functions whose signatures are listed between "
            "<tools></tools> tags:\n<tools>\n" + json.dumps(tool) + "\n</tools>\n\nTo call a function, write a JSON "
            'object with its name and arguments between <tool_call></tool_call> tags:\n<tool_call>\n{"name": '
            '<function-name>, "arguments": <arguments-json-object>}\n</tool_call><|im_end|>\n' + "<|im_start|>user\n"
            'Add<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n'
            "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n1\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\nIt is 1.<|im_end|>\n"
        )
        # The example's own `tools` column (also as a JSON string) is used when no `tools` argument is given.
        assert apply_chat_template({"messages": messages, "tools": [tool]}, chatml)["text"] == text
        assert apply_chat_template({"messages": messages, "tools": json.dumps([tool])}, chatml)["text"] == text
        # An empty tool list renders like no tools.
        assert "# Tools" not in apply_chat_template({"messages": messages}, chatml, tools=[])["text"]

    def test_tool_calling_dataset(self, chatml):
        dataset = load_test_dataset("conversational_tool_calling")
        text = apply_chat_template(dataset[0], chatml)["text"]
        assert "add_numbers" in text and "<tool_call>" in text and "<tool_response>" in text

    def test_chat_template_kwargs(self, chatml):
        template = "{% for m in messages %}{{ m.content }}{% endfor %}{% if shout %}!{% endif %}"
        example = {"messages": [user("Hi")], "chat_template_kwargs": {"shout": True}}
        assert apply_chat_template(example, chatml, chat_template=template) == {"text": "Hi!"}
        # Per-example kwargs override the call's.
        assert apply_chat_template(example, chatml, chat_template=template, shout=False) == {"text": "Hi!"}
        assert apply_chat_template({"messages": [user("Hi")]}, chatml, chat_template=template) == {"text": "Hi"}

    def test_generation_prompt_only_tokens_are_split_off(self, chatml):
        # Like DeepSeek-R1: `<think>` is added by the generation prompt only, never when rendering past turns.
        template = (
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<assistant><think>\n{% endif %}"
        )
        example = {"prompt": [user("Hi")], "completion": [assistant("Hello")]}
        output = apply_chat_template(example, chatml, chat_template=template)
        assert output == {"prompt": "<user>Hi</s><assistant>", "completion": "Hello</s>"}

    def test_not_prefix_preserving_raises(self, chatml):
        # Renders the number of turns first, so a longer conversation changes the start of the text.
        template = (
            "{{ messages | length }} turns;{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}"
        )
        example = {"prompt": [user("Hi"), assistant("Hello"), user("Bye")], "completion": [assistant("Ciao")]}
        with pytest.raises(ValueError, match="(?s)not prefix-preserving.*chat_template_path"):
            apply_chat_template(example, chatml, chat_template=template)

    def test_maybe_apply_chat_template(self, chatml):
        standard = {"prompt": "The sky is", "completion": " blue."}
        assert maybe_apply_chat_template(standard, chatml) is standard
        conversational = {"prompt": [user("Hi")]}
        assert maybe_apply_chat_template(conversational, chatml) == {"prompt": HI + GEN}

    @pytest.mark.parametrize("config", [c for c in DATASET_CONFIGS if c.startswith("conversational")])
    def test_every_conversational_test_dataset(self, chatml, config):
        dataset = load_test_dataset(config).select(range(4))
        rendered = dataset.map(maybe_apply_chat_template, fn_kwargs={"processing_class": chatml})
        for row in rendered:
            for key in ("text", "prompt", "completion", "chosen", "rejected"):
                if key in row:
                    assert isinstance(row[key], str) and row[key]
            if "completion" in row and "prompt" in row:
                assert row["prompt"].endswith(GEN) and row["completion"].endswith("<|im_end|>\n")


class TestConvertToChatML:
    def test_conversations(self):
        example = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}], "id": 1}
        assert maybe_convert_to_chatml(example) == {"id": 1, "messages": [user("Hi"), assistant("Hey")]}

    def test_roles_and_keys(self):
        example = {
            "prompt": [{"from": "system", "value": "S"}, {"from": "human", "value": "Hi"}],
            "completion": [{"from": "gpt", "value": "Yo"}],
            "chosen": [{"from": "observation", "value": "42"}],
            "rejected": [{"from": "narrator", "value": "?"}],
        }
        assert maybe_convert_to_chatml(example) == {
            "prompt": [{"role": "system", "content": "S"}, user("Hi")],
            "completion": [assistant("Yo")],
            "chosen": [{"role": "tool", "content": "42"}],
            "rejected": [{"role": "narrator", "content": "?"}],
        }

    def test_chatml_unchanged(self):
        example = {"messages": [user("Hi")], "text": "x"}
        assert maybe_convert_to_chatml(example) == {"messages": [user("Hi")], "text": "x"}


class TestMultimodal:
    def test_inserts_image_blocks_in_first_user_message(self):
        messages = [SYSTEM, user("What is it?"), assistant("A cat."), user("Sure?")]
        output = prepare_multimodal_messages(messages, images=["img0", "img1"])
        assert output[1]["content"] == [
            {"type": "image", "image": "img0"},
            {"type": "image", "image": "img1"},
            {"type": "text", "text": "What is it?"},
        ]
        assert output[0]["content"] == [{"type": "text", "text": "Be brief."}]
        assert output[3]["content"] == [{"type": "text", "text": "Sure?"}]
        assert messages[1]["content"] == "What is it?"  # input untouched

    def test_fills_existing_placeholders(self):
        messages = [{"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"}]}]
        output = prepare_multimodal_messages(messages, images=["img"])
        assert output[0]["content"] == [{"type": "text", "text": "A"}, {"type": "image", "image": "img"}]

    def test_without_images(self):
        assert prepare_multimodal_messages([user("Hi")]) == [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
        ]

    def test_errors(self):
        placeholder = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}]
        with pytest.raises(ValueError, match="2 image block"):
            prepare_multimodal_messages(placeholder, images=["only one"])
        with pytest.raises(ValueError, match="Unsupported role"):
            prepare_multimodal_messages([{"role": "narrator", "content": "x"}])


# ---------------------------------------------------------------------------------------------------------------------
# Preference data
# ---------------------------------------------------------------------------------------------------------------------


class TestExtractPrompt:
    def test_strings_keep_space_with_completion(self):
        example = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
        assert extract_prompt(example) == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}

    def test_strings_without_space(self):
        example = {"chosen": "x=1", "rejected": "x=2"}
        assert extract_prompt(example) == {"prompt": "x=", "chosen": "1", "rejected": "2"}
        example = {"chosen": "Answer: A", "rejected": "Answer: B"}
        assert extract_prompt(example) == {"prompt": "Answer:", "chosen": " A", "rejected": " B"}

    def test_messages(self):
        example = {
            "chosen": [SYSTEM, user("Hi"), assistant("Hello")],
            "rejected": [SYSTEM, user("Hi"), assistant("Go")],
        }
        assert extract_prompt(example) == {
            "prompt": [SYSTEM, user("Hi")],
            "chosen": [assistant("Hello")],
            "rejected": [assistant("Go")],
        }

    def test_one_side_is_prefix(self):
        example = {"chosen": "abc", "rejected": "abcdef"}
        assert extract_prompt(example) == {"prompt": "abc", "chosen": "", "rejected": "def"}

    def test_maybe_extract_prompt(self):
        implicit = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
        assert maybe_extract_prompt(implicit) == extract_prompt(implicit)
        explicit = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
        assert maybe_extract_prompt(explicit) is explicit
        not_preference = {"prompt": "The sky is", "completion": " blue."}
        assert maybe_extract_prompt(not_preference) is not_preference
        # A standard prompt next to conversational answers is replaced by the extracted conversational prompt.
        mixed = {"prompt": "ignored", "chosen": [user("Hi"), assistant("A")], "rejected": [user("Hi"), assistant("B")]}
        assert maybe_extract_prompt(mixed) == {
            "prompt": [user("Hi")],
            "chosen": [assistant("A")],
            "rejected": [assistant("B")],
        }

    def test_on_implicit_test_dataset(self):
        dataset = load_test_dataset("conversational_implicit_prompt_preference")
        extracted = dataset.map(maybe_extract_prompt)
        row = extracted[0]
        assert row["prompt"] + row["chosen"] == dataset[0]["chosen"]
        assert row["prompt"][-1]["role"] == "user"


PAIRED = {"prompt": ["The sky is", "The sun is"], "chosen": [" blue.", " hot."], "rejected": [" green.", " cold."]}
UNPAIRED = {
    "prompt": ["The sky is", "The sun is", "The sky is", "The sun is"],
    "completion": [" blue.", " hot.", " green.", " cold."],
    "label": [True, True, False, False],
}


class TestUnpair:
    def test_dataset(self):
        assert unpair_preference_dataset(Dataset.from_dict(PAIRED)).to_dict() == UNPAIRED

    def test_extra_columns_are_duplicated(self):
        dataset = Dataset.from_dict({**PAIRED, "margin": [0.5, 1.0]})
        unpaired = unpair_preference_dataset(dataset, num_proc=None, desc="Unpairing")
        assert unpaired["margin"] == [0.5, 1.0, 0.5, 1.0]
        assert sorted(unpaired.column_names) == ["completion", "label", "margin", "prompt"]

    def test_dataset_dict(self):
        unpaired = unpair_preference_dataset(DatasetDict(train=Dataset.from_dict(PAIRED)))
        assert unpaired["train"].to_dict() == UNPAIRED

    def test_iterable_dataset_accepts_dataset_only_kwargs(self):
        iterable = Dataset.from_dict(PAIRED).to_iterable_dataset()
        rows = list(unpair_preference_dataset(iterable, num_proc=2, desc="ignored"))
        assert [row["completion"] for row in rows] == UNPAIRED["completion"]
        assert [row["label"] for row in rows] == UNPAIRED["label"]

    def test_maybe_unpair(self):
        assert maybe_unpair_preference_dataset(Dataset.from_dict(PAIRED)).to_dict() == UNPAIRED
        already = Dataset.from_dict(UNPAIRED)
        assert maybe_unpair_preference_dataset(already) is already


# ---------------------------------------------------------------------------------------------------------------------
# Truncation and packing
# ---------------------------------------------------------------------------------------------------------------------

DOCTEST_IDS = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10], [11]]


class TestTruncate:
    def test_every_list_column(self):
        dataset = Dataset.from_dict(
            {"input_ids": [[1, 2, 3], [4, 5]], "completion_mask": [[0, 1, 1], [1, 1]], "y": [7, 8]}
        )
        truncated = truncate_dataset(dataset, max_length=2)
        assert truncated.to_dict() == {"input_ids": [[1, 2], [4, 5]], "completion_mask": [[0, 1], [1, 1]], "y": [7, 8]}

    def test_iterable(self):
        iterable = Dataset.from_dict({"input_ids": [[1, 2, 3], [4]], "y": [7, 8]}).to_iterable_dataset()
        assert list(truncate_dataset(iterable, 2, map_kwargs={"desc": "x"})) == [
            {"input_ids": [1, 2], "y": 7},
            {"input_ids": [4], "y": 8},
        ]

    def test_invalid_length(self):
        with pytest.raises(ValueError, match="positive"):
            truncate_dataset(Dataset.from_dict({"input_ids": [[1]]}), 0)


class TestPack:
    def test_bfd_doctest(self):
        packed = pack_dataset(Dataset.from_dict({"input_ids": DOCTEST_IDS}), seq_length=4, strategy="bfd")
        assert packed.to_dict() == {
            "input_ids": [[1, 2, 3, 4], [8, 9, 10, 11], [6, 7]],
            "seq_lengths": [[4], [3, 1], [2]],
        }

    def test_bfd_split_doctest(self):
        packed = pack_dataset(Dataset.from_dict({"input_ids": DOCTEST_IDS}), seq_length=4, strategy="bfd_split")
        assert packed.to_dict() == {
            "input_ids": [[1, 2, 3, 4], [8, 9, 10, 5], [6, 7, 11]],
            "seq_lengths": [[4], [3, 1], [2, 1]],
        }

    def test_wrapped(self):
        packed = pack_dataset(Dataset.from_dict({"input_ids": DOCTEST_IDS}), seq_length=4, strategy="wrapped")
        assert packed.to_dict() == {"input_ids": [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]}

    def test_masks_are_packed_with_input_ids(self):
        dataset = Dataset.from_dict(
            {
                "input_ids": DOCTEST_IDS,
                "completion_mask": [[0, 0, 1, 1, 1], [0, 1], [0, 0, 1], [1]],
                "assistant_masks": [[1, 0, 0, 0, 0], [1, 1], [0, 1, 0], [0]],
            }
        )
        packed = pack_dataset(dataset, seq_length=4, strategy="bfd_split")
        assert packed["completion_mask"] == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1]]
        assert packed["assistant_masks"] == [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0]]
        wrapped = pack_dataset(dataset, seq_length=4, strategy="wrapped")
        assert wrapped["completion_mask"] == [[0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 1]]

    def test_scalar_columns_become_per_document_lists(self):
        dataset = Dataset.from_dict({"input_ids": DOCTEST_IDS, "source": ["a", "b", "c", "d"]})
        packed = pack_dataset(dataset, seq_length=4)
        assert packed["source"] == [["a"], ["c", "d"], ["b"]]
        with pytest.raises(ValueError, match="wrapped.*remove"):
            pack_dataset(dataset, seq_length=4, strategy="wrapped")

    @pytest.mark.parametrize("strategy", ["bfd", "bfd_split"])
    def test_empty_sequences_are_dropped(self, strategy):
        dataset = Dataset.from_dict({"input_ids": [[1, 2], [], [3]], "id": [0, 1, 2]})
        packed = pack_dataset(dataset, seq_length=4, strategy=strategy)
        assert packed.to_dict() == {"input_ids": [[1, 2, 3]], "id": [[0, 2]], "seq_lengths": [[2, 1]]}

    def test_iterable_dataset(self):
        iterable = Dataset.from_dict({"input_ids": DOCTEST_IDS}).to_iterable_dataset()
        rows = list(pack_dataset(iterable, seq_length=4, strategy="bfd", map_kwargs={"num_proc": 2}))
        assert rows == [
            {"input_ids": [1, 2, 3, 4], "seq_lengths": [4]},
            {"input_ids": [8, 9, 10, 11], "seq_lengths": [3, 1]},
            {"input_ids": [6, 7], "seq_lengths": [2]},
        ]

    def test_mismatched_mask_length_raises(self):
        dataset = Dataset.from_dict({"input_ids": [[1, 2, 3]], "completion_mask": [[1, 1]]})
        with pytest.raises(ValueError, match="completion_mask"):
            pack_dataset(dataset, seq_length=4)

    def test_invalid_arguments(self):
        dataset = Dataset.from_dict({"input_ids": DOCTEST_IDS})
        with pytest.raises(ValueError, match="Invalid packing strategy"):
            pack_dataset(dataset, seq_length=4, strategy="ffd")
        with pytest.raises(ValueError, match="already packed"):
            pack_dataset(pack_dataset(dataset, seq_length=4), seq_length=4)

    @pytest.mark.parametrize("strategy", ["bfd", "bfd_split", "wrapped"])
    def test_no_token_lost_and_rows_fit(self, strategy):
        rng = np.random.default_rng(0)
        lengths = rng.integers(1, 60, size=300)
        rows = np.split(np.arange(lengths.sum()), np.cumsum(lengths)[:-1])
        dataset = Dataset.from_dict({"input_ids": [row.tolist() for row in rows]})
        packed = pack_dataset(dataset, seq_length=32, strategy=strategy, map_kwargs={"batch_size": 100})
        assert all(len(row) <= 32 for row in packed["input_ids"])
        tokens = sorted(token for row in packed["input_ids"] for token in row)
        if strategy == "bfd":  # each document keeps its first 32 tokens
            expected = sorted(token for row in rows for token in row[:32].tolist())
        else:
            expected = list(range(lengths.sum()))
        assert tokens == expected
        if strategy != "wrapped":
            assert [sum(lens) for lens in packed["seq_lengths"]] == [len(row) for row in packed["input_ids"]]
            # Every document is a contiguous, in-order run inside its packed row.
            for row, lens in zip(packed["input_ids"], packed["seq_lengths"]):
                for piece in np.split(np.array(row), np.cumsum(lens)[:-1]):
                    assert np.all(np.diff(piece) == 1)

    def test_bfd_fills_rows_well(self):
        # 10 documents of 3 and 10 of 1 fit exactly into 10 rows of 4.
        dataset = Dataset.from_dict({"input_ids": [[0] * 3] * 10 + [[1]] * 10})
        packed = pack_dataset(dataset, seq_length=4)
        assert packed["seq_lengths"] == [[3, 1]] * 10

    def test_large_dataset_is_fast(self):
        rng = np.random.default_rng(0)
        lengths = rng.integers(1, 200, size=20_000)
        values = np.arange(lengths.sum()) % 1000
        dataset = Dataset.from_dict({"input_ids": np.split(values, np.cumsum(lengths)[:-1])})
        start = time.perf_counter()
        packed = pack_dataset(dataset, seq_length=256, map_kwargs={"batch_size": 20_000})
        assert time.perf_counter() - start < 5
        assert sum(map(sum, packed["seq_lengths"])) == lengths.sum()
