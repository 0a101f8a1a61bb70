"""Helpers of the reference's public surface: `trl.trainer.utils`, `trl.models`, `trl.experimental.utils`,
`trl.scripts.utils`."""

import asyncio
import os
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from trl.trainer.utils import (
    FusedCausalLMOutput,
    add_fused_lm_head,
    adjusted_mfu,
    compute_flops_per_token,
    create_model_from_path,
    ensure_master_addr_port,
    generate_model_card,
    get_config_model_id,
    get_peak_flops,
    get_peak_flops_per_device,
    get_trackio_space_url,
    global_then_local_main_first,
    is_triton_available,
    maybe_gather_lm_head_ctx,
    print_prompt_completions_sample,
    repeat_iterable_dataset,
    shutdown_event_loop_in_daemon,
    split_pixel_values_by_grid,
    start_event_loop_in_daemon,
    strip_images_from_messages,
    unsplit_pixel_values_by_grid,
)


def tiny_config(**overrides):
    values = dict(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_lm():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).eval()


# ------------------------------------------------------------------------------------------ trainer.utils
def test_ensure_master_addr_port(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    ensure_master_addr_port()
    assert os.environ["MASTER_ADDR"] == "localhost" and int(os.environ["MASTER_PORT"]) > 0
    monkeypatch.setenv("MASTER_PORT", "1234")
    ensure_master_addr_port()
    assert os.environ["MASTER_PORT"] == "1234"
    ensure_master_addr_port("10.0.0.1", 4321)
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("10.0.0.1", "4321")


def test_repeat_iterable_dataset_matches_repeat_sampler_order():
    out = list(repeat_iterable_dataset(iter("abcde"), mini_repeat_count=2, batch_size=2, repeat_count=2))
    assert "".join(out) == "aabbaabbccddccdd"  # the short last chunk ("e") is dropped
    assert list(repeat_iterable_dataset([1, 2], 1)) == [1, 2]
    with pytest.raises(ValueError):
        list(repeat_iterable_dataset([1], 0))


def test_split_and_unsplit_pixel_values_by_grid():
    grid = torch.tensor([[1, 2, 2], [1, 1, 2], [1, 2, 1]])  # 4, 2, 2 patches
    pixel_values = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)
    batch = {"pixel_values": pixel_values, "image_grid_thw": grid, "num_images": [2, 1], "input_ids": torch.ones(2)}
    split = split_pixel_values_by_grid(batch)
    assert [t.shape[0] for t in split["pixel_values"]] == [6, 2]
    assert [g.shape[0] for g in split["image_grid_thw"]] == [2, 1]
    assert split["input_ids"] is batch["input_ids"]
    back = unsplit_pixel_values_by_grid(split)
    assert torch.equal(back["pixel_values"], pixel_values) and torch.equal(back["image_grid_thw"], grid)
    assert split_pixel_values_by_grid({"input_ids": 1}) == {"input_ids": 1}
    with pytest.raises(ValueError, match="patches"):
        split_pixel_values_by_grid({"pixel_values": pixel_values[:5], "image_grid_thw": grid})


def test_event_loop_in_daemon():
    thread, loop = start_event_loop_in_daemon(name="trl-test-loop")
    assert thread.daemon and thread.name == "trl-test-loop" and loop.is_running()

    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    assert asyncio.run_coroutine_threadsafe(double(21), loop).result(timeout=5) == 42
    pending = asyncio.run_coroutine_threadsafe(asyncio.sleep(60), loop)
    shutdown_event_loop_in_daemon(thread, loop)
    assert not thread.is_alive() and loop.is_closed() and pending.cancelled()


def test_strip_images_from_messages():
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A cat."},
    ]
    stripped = strip_images_from_messages(messages)
    assert stripped[0]["content"] == [{"type": "text", "text": "What is it?"}]
    assert stripped[1] == {"role": "assistant", "content": "A cat."}
    assert len(messages[0]["content"]) == 2  # the input is not modified


def test_small_environment_helpers(monkeypatch):
    assert isinstance(is_triton_available(), bool)
    assert is_triton_available("999.0.0") is False
    monkeypatch.setenv("TRACKIO_SPACE_ID", "me/trackio")
    assert get_trackio_space_url() == "https://huggingface.co/spaces/me/trackio"
    monkeypatch.delenv("TRACKIO_SPACE_ID")
    assert get_trackio_space_url() is None
    with global_then_local_main_first():
        pass
    assert get_config_model_id(tiny_config(name_or_path="org/model")) == "org/model"


def test_peak_flops_and_adjusted_mfu():
    assert get_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert get_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert get_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert get_peak_flops("Some CPU", torch.bfloat16) is None
    assert get_peak_flops_per_device(torch.device("cpu"), torch.bfloat16) is None
    config = tiny_config()
    assert adjusted_mfu(0.4, config, 0) == pytest.approx(0.4)
    expected = 0.4 * compute_flops_per_token(config, 128) / compute_flops_per_token(config, 0)
    assert adjusted_mfu(0.4, config, 128) == pytest.approx(expected) and expected > 0.4


def test_create_model_from_path(tmp_path):
    tiny_lm().save_pretrained(tmp_path)
    model = create_model_from_path(str(tmp_path), dtype="bfloat16")
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.bfloat16
    classifier = create_model_from_path(str(tmp_path), architecture="LlamaForSequenceClassification", num_labels=1)
    assert isinstance(classifier, LlamaForSequenceClassification)


def test_generate_model_card():
    card = generate_model_card(
        base_model="org/base",
        model_name="my-model",
        hub_model_id="me/my-model",
        dataset_name="org/data",
        tags=["trl", "sft"],
        wandb_url="https://wandb.ai/run",
        trackio_url=None,
        trainer_name="SFT",
        comet_url="https://comet.com/run",
    )
    assert card.data.base_model == "org/base" and "sft" in card.data.tags
    assert "https://wandb.ai/run" in card.text and "https://comet.com/run" in card.text
    assert "me/my-model" in card.text


def test_add_fused_lm_head_matches_full_logits():
    model = tiny_lm()
    input_ids = torch.tensor([[1, 5, 7, 9, 3], [2, 4, 6, 8, 0]])
    labels = input_ids.masked_fill(input_ids == 0, -100)
    with torch.no_grad():
        logits = model(input_ids).logits
    reference = torch.log_softmax(logits[:, :-1] / 0.7, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    reference = reference.masked_fill(labels[:, 1:] == -100, 0)
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy", "loss"))
    with torch.no_grad():
        out = model(input_ids, labels=labels)
    assert isinstance(out, FusedCausalLMOutput)
    assert out.log_probs.shape == (2, 5)
    torch.testing.assert_close(out.log_probs[:, :-1], reference, atol=1e-5, rtol=1e-5)
    assert out.entropy.shape == (2, 5) and out.loss > 0
    assert model(input_ids).logits.shape == (2, 5, 32)  # without labels: the original forward
    with pytest.raises(ValueError, match="outputs"):
        add_fused_lm_head(tiny_lm(), outputs=("logits",))
    with maybe_gather_lm_head_ctx(model.lm_head.parameters()):
        pass


def test_print_prompt_completions_sample_layout(monkeypatch):
    import rich.console

    consoles = []

    class Recording(rich.console.Console):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, record=True, width=120, file=open(os.devnull, "w"), **kwargs)
            consoles.append(self)

    monkeypatch.setattr(rich.console, "Console", Recording)
    print_prompt_completions_sample(
        [[{"role": "user", "content": "Why?"}], "How?"],
        ["Because.", "Like so."],
        {"accuracy": [1.0, 0.5], "format": [0.0, 1.0]},
        [0.25, -0.25],
        step=7,
    )
    text = consoles[-1].export_text()
    assert "Step 7" in text.splitlines()[0]  # the panel's title
    header = next(line for line in text.splitlines() if "Prompt" in line)
    order = [header.index(name) for name in ("Prompt", "Completion", "accuracy", "format", "Advantage")]
    assert order == sorted(order)
    assert "user: Why?" in text and "Like so." in text and "-0.25" in text and "0.50" in text


# ------------------------------------------------------------------------------------------- trl.models
def test_act_offloading_ctx_manager_keeps_gradients():
    from trl.models import get_act_offloading_ctx_manager

    model = tiny_lm().train()
    input_ids = torch.tensor([[1, 5, 7, 9, 3]])
    model(input_ids, labels=input_ids).loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with get_act_offloading_ctx_manager(model, min_offload_size=0) as offloader:
        loss = model(input_ids, labels=input_ids).loss
    loss.backward()
    for grad, param in zip(expected, model.parameters()):
        torch.testing.assert_close(param.grad, grad)
    assert offloader.offloaded == 0  # CPU tensors stay where they are
    with pytest.warns(UserWarning, match="no output head"):
        get_act_offloading_ctx_manager(torch.nn.Sequential(torch.nn.ReLU()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_act_offloading_ctx_manager(torch.nn.Sequential(torch.nn.ReLU()), warn_if_no_head=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading moves accelerator tensors")
def test_act_offloading_on_cuda():
    from trl.models import get_act_offloading_ctx_manager

    model = tiny_lm().cuda().train()
    input_ids = torch.tensor([[1, 5, 7, 9, 3]], device="cuda")
    model(input_ids, labels=input_ids).loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with get_act_offloading_ctx_manager(model, min_offload_size=0) as offloader:
        loss = model(input_ids, labels=input_ids).loss
    loss.backward()
    assert offloader.offloaded > 0
    for grad, param in zip(expected, model.parameters()):
        torch.testing.assert_close(param.grad, grad)


def test_selective_activation_checkpointing_keeps_gradients():
    from trl.models import enable_selective_activation_checkpointing

    model = tiny_lm().train()
    input_ids = torch.tensor([[1, 5, 7, 9, 3]])
    model(input_ids, labels=input_ids).loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    enable_selective_activation_checkpointing(model)
    assert all(layer._trl_selective_checkpointing for layer in model.model.layers)
    model(input_ids, labels=input_ids).loss.backward()
    for grad, param in zip(expected, model.parameters()):
        torch.testing.assert_close(param.grad, grad, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="no stack"):
        enable_selective_activation_checkpointing(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------- trl.experimental.utils
def test_experimental_utils_reexports_and_small_helpers():
    from trl import data_utils
    from trl.experimental import utils
    from trl.trainer import utils as trainer_utils

    assert utils.pad is trainer_utils.pad and utils.flush_left is trainer_utils.flush_left
    assert utils.is_conversational is data_utils.is_conversational
    assert "model.layers.{layer}" in utils.LAYER_PATTERNS
    prompt = {"prompt_input_ids": [5], "prompt_attention_mask": [1]}
    chosen = {"prompt_input_ids": [1, 5], "prompt_attention_mask": [1, 1]}
    rejected = {"prompt_input_ids": [], "prompt_attention_mask": []}
    prompt, chosen, rejected = utils.add_bos_token_if_needed(1, 1, prompt, 2, chosen, 0, rejected)
    assert prompt["prompt_input_ids"] == [1, 5] and chosen["prompt_input_ids"] == [1, 5]
    assert rejected == {"prompt_input_ids": [1], "prompt_attention_mask": [1]}
    chosen, rejected = utils.add_eos_token_if_needed(
        2, {"input_ids": [4, 2], "attention_mask": [1, 1]}, {"input_ids": [4], "attention_mask": [1]}
    )
    assert chosen["input_ids"] == [4, 2] and rejected == {"input_ids": [4, 2], "attention_mask": [1, 1]}
    ids, mask = utils.truncate_right(torch.tensor([[5, 2, 7], [3, 9, 8], [4, 4, 4]]), [2, 9], 0)
    assert ids.tolist() == [[5, 2, 0], [3, 9, 0], [4, 4, 4]] and mask.tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert utils.pad_byte_offsets([(0, 1)], 3, "left") == [(0, 0), (0, 0), (0, 1)]
    with pytest.raises(ValueError):
        utils.pad_byte_offsets([(0, 1), (1, 2)], 1, "right")


def test_dpo_data_collator_with_padding():
    from trl.experimental.utils import DPODataCollatorWithPadding

    batch = DPODataCollatorWithPadding(pad_token_id=9)(
        [
            {"prompt_input_ids": [1, 2], "chosen_labels": [3], "chosen_logps": -1.0, "id": "a"},
            {"prompt_input_ids": [1], "chosen_labels": [3, 4], "chosen_logps": -2.0, "id": "b"},
        ]
    )
    assert batch["prompt_input_ids"].tolist() == [[1, 2], [9, 1]]  # prompts padded on the left
    assert batch["chosen_labels"].tolist() == [[3, -100], [3, 4]]
    assert batch["chosen_logps"].dtype == torch.float32 and batch["id"] == ["a", "b"]


def test_byte_offsets_helpers():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from trl.experimental.utils import encode_with_byte_offsets, is_byte_level_tokenizer, piece_byte_len

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["héllo world", "hello wörld"] * 10, trainer=trainer)
    assert is_byte_level_tokenizer(tokenizer)
    assert not is_byte_level_tokenizer(Tokenizer(models.WordLevel({"a": 0}, unk_token="a")))
    text = "héllo wörld"
    ids, offsets = encode_with_byte_offsets(tokenizer, [text])
    data = text.encode("utf-8")
    assert offsets[0][-1][1] == len(data)
    pieces = [tokenizer.id_to_token(i) for i in ids[0]]
    assert sum(piece_byte_len(piece) for piece in pieces) == len(data)
    assert piece_byte_len("<0x0A>") == 1 and piece_byte_len("▁hi") == 3


def test_get_reward_reads_last_response_token():
    from trl.experimental.utils import get_reward

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_config(num_labels=1)).eval()
    query_responses = torch.tensor([[3, 4, 5, 6, 0], [3, 4, 7, 0, 0]])
    with torch.no_grad():
        logits, scores, lengths = get_reward(model, query_responses, pad_token_id=0, context_length=2)
    assert lengths.tolist() == [3, 2] and logits.shape == (2, 5, 1)
    torch.testing.assert_close(scores, logits[[0, 1], [3, 2], 0])
    with torch.no_grad():
        alone = model(torch.tensor([[3, 4, 7]])).logits[0, 0]
    torch.testing.assert_close(scores[1], alone, atol=1e-5, rtol=1e-4)


def test_scripts_utils_names():
    from trl.scripts import utils

    assert utils.TYPE_CHECKING is False
    assert utils.HfArgumentParser.__name__ == "HfArgumentParser"
    assert utils.DataClass is not None and utils.DataClassType is not None


def test_data_collator_for_chatml_trains_on_the_last_message():
    from trl.experimental.utils import DataCollatorForChatML
    from trl.testing.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("chatml")
    conversations = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}],
        [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four"}],
    ]
    batch = DataCollatorForChatML(tokenizer)([{"messages": messages} for messages in conversations])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][:, -1].all()  # left padded
    for row, messages in enumerate(conversations):
        trained = batch["labels"][row][batch["labels"][row] != -100]
        answer = tokenizer.decode(trained)
        assert answer.startswith(messages[-1]["content"]) and "user" not in answer
        prompt = batch["prompts"][row][batch["prompt_attention_mask"][row] == 1]
        assert tokenizer.decode(prompt).rstrip().endswith("assistant")
