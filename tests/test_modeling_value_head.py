"""Value-head models: forward outputs, head options, safetensors round trips (plain and PEFT), generate."""

import os

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from trl.models import (
    SUPPORTED_ARCHITECTURES,
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    PreTrainedModelWrapper,
    ValueHead,
)
from trl.testing import get_tiny_model_path


IDS = torch.tensor([[5, 9, 13, 17], [21, 25, 29, 33]])


@pytest.fixture(scope="module")
def causal_path():
    return get_tiny_model_path("qwen2")


def test_forward_returns_logits_loss_and_one_value_per_position(causal_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(causal_path)
    plain = AutoModelForCausalLM.from_pretrained(causal_path)
    lm_logits, loss, value = model(IDS, attention_mask=torch.ones_like(IDS), labels=IDS)
    assert lm_logits.shape == (2, 4, plain.config.vocab_size) and value.shape == (2, 4)
    expected = plain(IDS, labels=IDS)
    torch.testing.assert_close(lm_logits, expected.logits)
    torch.testing.assert_close(loss, expected.loss)
    # The value is the head applied to the last hidden state.
    hidden = plain(IDS, output_hidden_states=True).hidden_states[-1]
    model.eval()
    torch.testing.assert_close(model(IDS)[2], model.v_head.summary(hidden).squeeze(-1))
    assert len(model(IDS, return_past_key_values=True, use_cache=True)) == 4


def test_value_head_options(causal_path):
    default = AutoModelForCausalLMWithValueHead.from_pretrained(causal_path)
    assert isinstance(default.v_head.dropout, torch.nn.Dropout) and default.v_head.dropout.p == 0.1
    assert not default.is_resuming_training
    no_dropout = AutoModelForCausalLMWithValueHead.from_pretrained(causal_path, summary_dropout_prob=0.0)
    assert isinstance(no_dropout.v_head.dropout, torch.nn.Identity)
    torch.manual_seed(0)
    normal = AutoModelForCausalLMWithValueHead.from_pretrained(
        causal_path, v_head_init_strategy="normal", v_head_initializer_range=0.5
    )
    assert torch.all(normal.v_head.summary.bias == 0)
    assert 0.35 < normal.v_head.summary.weight.std().item() < 0.65
    with pytest.raises(ValueError, match="v_head_init_strategy"):
        AutoModelForCausalLMWithValueHead.from_pretrained(causal_path, v_head_init_strategy="xavier")
    with pytest.raises(NotImplementedError, match="reward adapter"):
        AutoModelForCausalLMWithValueHead.from_pretrained(causal_path, reward_adapter="some/adapter")
    head = ValueHead(default.config, summary_dropout_prob=0.3)
    assert head.dropout.p == 0.3 and head.summary.in_features == default.config.hidden_size


def test_save_and_reload_round_trip_through_safetensors(causal_path, tmp_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(causal_path, v_head_init_strategy="normal")
    model.save_pretrained(tmp_path)
    assert "model.safetensors" in os.listdir(tmp_path) and not any(f.endswith(".bin") for f in os.listdir(tmp_path))
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        assert {"v_head.summary.weight", "v_head.summary.bias"} <= set(handle.keys())
    reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path))
    assert reloaded.is_resuming_training
    model.eval(), reloaded.eval()
    for first, second in zip(model(IDS), reloaded(IDS), strict=True):
        if first is not None:
            torch.testing.assert_close(first, second)
    # The directory is still a plain causal LM checkpoint.
    AutoModelForCausalLM.from_pretrained(str(tmp_path))


def test_from_an_instance_and_generate(causal_path):
    lm = AutoModelForCausalLM.from_pretrained(causal_path)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(lm)
    assert model.pretrained_model is lm
    out = model.generate(IDS[:1], max_new_tokens=3, do_sample=False)
    torch.testing.assert_close(out, lm.generate(IDS[:1], max_new_tokens=3, do_sample=False))
    assert out.shape == (1, 7)
    assert AutoModelForCausalLMWithValueHead in SUPPORTED_ARCHITECTURES
    with pytest.raises(ValueError, match="pretrained_model"):
        PreTrainedModelWrapper()


def test_peft_value_head_model_trains_adapters_and_round_trips(causal_path, tmp_path):
    from peft import LoraConfig

    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        causal_path, peft_config=LoraConfig(r=4, target_modules="all-linear")
    )
    assert model.is_peft_model
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("v_head.") for name in trainable)
    assert {"v_head.summary.weight", "v_head.summary.bias"} == set(model.state_dict())
    model.save_pretrained(tmp_path)
    assert {"adapter_model.safetensors", "v_head.safetensors"} <= set(os.listdir(tmp_path))
    reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path), is_trainable=True)
    assert reloaded.is_peft_model and reloaded.is_resuming_training
    torch.testing.assert_close(reloaded.v_head.summary.weight, model.v_head.summary.weight)
    model.eval(), reloaded.eval()
    torch.testing.assert_close(reloaded(IDS)[0], model(IDS)[0])


def test_seq2seq_value_head_model(tmp_path):
    path = get_tiny_model_path("t5")
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(path).eval()
    decoder_ids = torch.tensor([[0, 7, 8], [0, 9, 10]])
    lm_logits, _, value = model(IDS, decoder_input_ids=decoder_ids)
    assert lm_logits.shape[:2] == (2, 3) and value.shape == (2, 3)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(str(tmp_path)).eval()
    torch.testing.assert_close(reloaded(IDS, decoder_input_ids=decoder_ids)[2], value)
    assert model.generate(IDS, max_new_tokens=2, do_sample=False).shape[0] == 2
