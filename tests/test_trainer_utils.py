import asyncio
import functools
import json
import math

import pytest
import torch
from transformers import Qwen2Config

from trl.trainer.utils import (
    RepeatSampler,
    RunningMoments,
    cap_exp,
    compute_accuracy,
    compute_flops_per_token,
    compute_mfu,
    disable_dropout_in_model,
    empty_cache,
    entropy_from_logits,
    exact_div,
    first_true_indices,
    flush_left,
    flush_right,
    get_callable_name,
    hash_module,
    identity,
    is_async_callable,
    masked_mean,
    masked_var,
    masked_whiten,
    nanmax,
    nanmin,
    nanstd,
    pad,
    pad_to_length,
    remove_none_values,
    selective_log_softmax,
    shuffle_sequence_dict,
    split_tensor_dict,
    truncate_right,
    use_adapter,
)


# ------------------------------------------------------------------------------------------------- padding
def test_pad_right_left_and_multiple():
    tensors = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    assert torch.equal(pad(tensors), torch.tensor([[1, 2, 3], [4, 5, 0]]))
    assert torch.equal(pad(tensors, padding_side="left"), torch.tensor([[1, 2, 3], [0, 4, 5]]))
    assert torch.equal(
        pad(tensors, padding_value=-1, pad_to_multiple_of=4), torch.tensor([[1, 2, 3, -1], [4, 5, -1, -1]])
    )
    two_dim = pad([torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5]])])
    assert torch.equal(two_dim, torch.tensor([[[1, 2], [3, 4]], [[5, 0], [0, 0]]]))
    with pytest.raises(ValueError, match="padding_side"):
        pad(tensors, padding_side="middle")


def test_pad_to_length():
    assert torch.equal(pad_to_length(torch.tensor([[1, 2]]), 4, pad_value=9), torch.tensor([[1, 2, 9, 9]]))
    assert torch.equal(pad_to_length(torch.tensor([[1], [2]]), 3, pad_value=0, dim=0), torch.tensor([[1], [2], [0]]))
    already = torch.tensor([[1, 2, 3]])
    assert pad_to_length(already, 2, pad_value=0) is already


def test_flush_left():
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    values = torch.tensor([[0, 0, 2, 3, 4], [0, 5, 6, 0, 0]])
    new_mask, new_values = flush_left(mask, values)
    assert torch.equal(new_mask, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert torch.equal(new_values, torch.tensor([[2, 3, 4], [5, 6, 0]]))
    assert torch.equal(flush_left(mask), new_mask)  # the mask alone when no tensors are given


def test_flush_right():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]])
    values = torch.tensor([[1, 2, 0, 0], [0, 3, 4, 0]])
    new_mask, new_values = flush_right(mask, values)
    assert torch.equal(new_mask, torch.tensor([[1, 1], [1, 1]]))
    assert torch.equal(new_values, torch.tensor([[1, 2], [3, 4]]))


def test_first_true_indices_and_truncate_right():
    bools = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    assert torch.equal(first_true_indices(bools), torch.tensor([1, 3, 0]))
    ids, mask = truncate_right(torch.tensor([[5, 2, 7, 8], [1, 3, 4, 6]]), stop_token_id=2, pad_token_id=0)
    assert torch.equal(ids, torch.tensor([[5, 2, 0, 0], [1, 3, 4, 6]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]))


# ---------------------------------------------------------------------------------------------- statistics
def test_nanstd_is_bessel_corrected_and_ignores_nan():
    # [1, 2, 4]: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 14/3, / (3 - 1) = 7/3.
    value = nanstd(torch.tensor([1.0, 2.0, float("nan"), 4.0]))
    torch.testing.assert_close(value, torch.tensor(math.sqrt(7 / 3)))
    # Row 0: [1, 3] -> variance 2; row 1: a single value -> NaN.
    rows = nanstd(torch.tensor([[1.0, float("nan"), 3.0], [float("nan"), float("nan"), 2.0]]), dim=1)
    torch.testing.assert_close(rows[0], torch.tensor(math.sqrt(2.0)))
    assert torch.isnan(rows[1])
    assert nanstd(torch.ones(2, 3), dim=1, keepdim=True).shape == (2, 1)


def test_nanmin_nanmax():
    values = torch.tensor([float("nan"), 3.0, -1.0])
    assert nanmin(values).item() == -1.0 and nanmax(values).item() == 3.0
    assert torch.isnan(nanmin(torch.tensor([float("nan")]))) and torch.isnan(nanmax(torch.tensor([float("nan")])))


def test_masked_mean_var_whiten():
    assert masked_mean(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1, 0, 1, 0])).item() == 2.0
    rows = masked_mean(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1, 1], [0, 1]]), axis=1)
    assert torch.equal(rows, torch.tensor([1.5, 4.0]))
    # [1, 2, 3]: population variance 2/3, unbiased 1.
    values, mask = torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    torch.testing.assert_close(masked_var(values, mask), torch.tensor(1.0))
    torch.testing.assert_close(masked_var(values, mask, unbiased=False), torch.tensor(2 / 3))
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(values, torch.tensor([1.0, 0.0, 0.0, 0.0]))

    torch.manual_seed(0)
    values = torch.randn(4, 6) * 5 + 3
    mask = (torch.rand(4, 6) > 0.3).float()
    whitened = masked_whiten(values, mask)
    torch.testing.assert_close(masked_mean(whitened, mask), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked_var(whitened, mask), torch.tensor(1.0), atol=1e-5, rtol=0)
    unshifted = masked_whiten(values, mask, shift_mean=False)
    torch.testing.assert_close(masked_mean(unshifted, mask), masked_mean(values, mask))


def test_cap_exp_and_exact_div():
    capped = cap_exp(torch.tensor([0.0, 1000.0]))
    assert capped[0].item() == 1.0 and torch.isfinite(capped[1])
    torch.testing.assert_close(cap_exp(torch.tensor([2.0]), cap=1.0), torch.tensor([math.e]))
    assert exact_div(12, 4) == 3
    with pytest.raises(ValueError, match="inexact division"):
        exact_div(10, 4, "batch")


def test_running_moments_matches_all_values_seen(tmp_path):
    moments = RunningMoments()
    # Batch [1, 2, 3]: mean 2, std 1. Batch [4, 5]: mean 4.5, std sqrt(1/2).
    batch_mean, batch_std = moments.update(torch.tensor([1.0, 2.0, 3.0]))
    assert (batch_mean, batch_std) == pytest.approx((2.0, 1.0))
    batch_mean, batch_std = moments.update(torch.tensor([4.0, 5.0]))
    assert (batch_mean, batch_std) == pytest.approx((4.5, math.sqrt(0.5)))
    # All of [1..5]: mean 3, population variance 2, Bessel-corrected std sqrt(2.5).
    assert (moments.mean, moments.var, moments.std, moments.count) == pytest.approx((3.0, 2.0, math.sqrt(2.5), 5.0))
    path = tmp_path / "moments.json"
    moments.save_to_json(str(path))
    assert json.loads(path.read_text())["mean"] == pytest.approx(3.0)
    assert RunningMoments.load_from_json(None, str(path)).state_dict() == pytest.approx(moments.state_dict())


def test_compute_accuracy_pairs_and_tokens():
    predictions = [[2.0, 1.0], [0.0, 3.0], [1.0, 1.0], [5.0, 4.0]]  # the tie (row 2) is left out
    with pytest.warns(UserWarning, match="same reward"):
        result = compute_accuracy((predictions, [0, 0, 0, 0]))
    assert result["accuracy"] == pytest.approx(2 / 3)
    token_logits = [[[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]]  # argmax 1, 0, 1
    assert compute_accuracy((token_logits, [[1, 1, -100]]))["accuracy"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ batches
def test_split_tensor_dict():
    batch = {"a": torch.arange(6).view(6, 1), "b": None, "c": torch.tensor(3.0), "d": list("abcdef")}
    parts = split_tensor_dict(batch, 3)
    assert [part["a"].flatten().tolist() for part in parts] == [[0, 1], [2, 3], [4, 5]]
    assert [part["d"] for part in parts] == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert all(part["b"] is None and part["c"].item() == 3.0 for part in parts)
    with pytest.raises(ValueError, match="inexact"):
        split_tensor_dict(batch, 4)


def test_shuffle_sequence_dict_applies_one_permutation():
    batch = {"a": torch.arange(5), "b": torch.arange(5) * 10, "c": list("vwxyz"), "d": None}
    torch.manual_seed(7)
    shuffled = shuffle_sequence_dict(batch)
    torch.manual_seed(7)
    permutation = torch.randperm(5)
    assert torch.equal(shuffled["a"], permutation)
    assert torch.equal(shuffled["b"], permutation * 10)
    assert shuffled["c"] == ["vwxyz"[i] for i in permutation.tolist()]
    assert shuffled["d"] is None


def test_remove_none_values():
    example = {"a": 1, "b": None, "messages": [{"role": "user", "tool_calls": None}, {"role": "assistant"}]}
    assert remove_none_values(example) == {"a": 1, "messages": [{"role": "user"}, {"role": "assistant"}]}
    assert remove_none_values([{"x": None, "y": [1, None]}]) == [{"y": [1, None]}]


def test_repeat_sampler_without_shuffle():
    # 5 indices, chunks of 2 ([0, 1], [2, 3]; the incomplete [4] is dropped), each chunk twice, each index twice.
    sampler = RepeatSampler(range(5), mini_repeat_count=2, batch_size=2, repeat_count=2, shuffle=False)
    expected = [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    assert list(sampler) == expected
    assert len(sampler) == len(expected)


def test_repeat_sampler_with_seed():
    sampler = RepeatSampler(range(7), mini_repeat_count=3, batch_size=3, repeat_count=1, seed=42)
    permutation = torch.randperm(7, generator=torch.Generator().manual_seed(42)).tolist()
    chunks = [permutation[0:3], permutation[3:6]]
    expected = [index for chunk in chunks for index in chunk for _ in range(3)]
    assert list(sampler) == expected
    assert len(sampler) == 18
    assert list(RepeatSampler(range(7), mini_repeat_count=3, batch_size=3, seed=42)) == expected


# --------------------------------------------------------------------------------------------------- models
def test_disable_dropout_and_empty_cache():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    disable_dropout_in_model(model)
    assert [module.p for module in model if isinstance(module, torch.nn.Dropout)] == [0, 0]
    empty_cache()


def test_hash_module():
    torch.manual_seed(0)
    first = torch.nn.Linear(3, 2)
    torch.manual_seed(0)
    second = torch.nn.Linear(3, 2)
    assert hash_module(first) == hash_module(second)
    with torch.no_grad():
        second.bias[0] += 1e-3
    assert hash_module(first) != hash_module(second)
    assert len(hash_module(first.to(torch.bfloat16))) == 64


def test_use_adapter_switches_and_restores():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(4, 4))
    inputs = torch.randn(2, 4)
    base_output = base(inputs).detach()
    config = peft.LoraConfig(target_modules=["0"], r=2, init_lora_weights=False)
    model = peft.get_peft_model(base, config)
    model.add_adapter("ref", peft.LoraConfig(target_modules=["0"], r=2, init_lora_weights=False))
    default_output = model(inputs).detach()
    trainable = {name: param.requires_grad for name, param in model.named_parameters()}
    with use_adapter(model, None):
        torch.testing.assert_close(model(inputs), base_output)
    with use_adapter(model, "ref"):
        ref_output = model(inputs).detach()
    assert not torch.allclose(ref_output, default_output) and not torch.allclose(ref_output, base_output)
    assert model.active_adapter == "default"
    assert {name: param.requires_grad for name, param in model.named_parameters()} == trainable
    torch.testing.assert_close(model(inputs), default_output)
    with pytest.raises(ValueError, match="not loaded"):
        with use_adapter(model, "missing"):
            pass


# ------------------------------------------------------------------------------------------------ callables
class _Scorer:
    def __call__(self, x):
        return x


class _AsyncScorer:
    async def __call__(self, x):
        return x


async def _async_reward(x):
    return x


def _reward(x, scale=1):
    return x


def test_identity_and_callable_names():
    assert identity(obj := object()) is obj
    assert get_callable_name(_reward) == "_reward"
    assert get_callable_name(functools.partial(_reward, scale=2)) == "_reward"
    assert get_callable_name(_Scorer()) == "_Scorer"
    assert get_callable_name(lambda x: x) == "<lambda>"


def test_is_async_callable():
    assert is_async_callable(_async_reward)
    assert is_async_callable(functools.partial(_async_reward))
    assert is_async_callable(_AsyncScorer())
    assert not is_async_callable(_reward) and not is_async_callable(_Scorer())
    assert asyncio.run(_async_reward(1)) == 1


# ----------------------------------------------------------------------------------------------- throughput
def test_compute_flops_per_token_on_known_config():
    config = Qwen2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    # d=32, h=4, h_kv=2, d_head=8, d_ff=64, L=2, V=64.
    # Attention 32*32 + 2*32*16 + 32*32 = 3072; MLP 3*32*64 = 6144; per layer 9216, two layers 18432.
    # LM head 32*64 = 2048, N = 20480, 6N = 122880. Attention term 12*2*4*8*16 = 12288 at seq_len 16.
    assert compute_flops_per_token(config, seq_len=16) == 135168
    assert compute_flops_per_token(config, seq_len=32) - compute_flops_per_token(config, seq_len=16) == 12288


def test_compute_mfu_formula():
    # 1e9 FLOPs/token * 1000 tokens/s = 1e12 FLOP/s over 2 devices of 1e12 peak each: 50%.
    assert compute_mfu(10**9, 1000.0, world_size=2, peak_flops_per_device=1e12) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="peak_flops_per_device"):
        compute_mfu(10**9, 1000.0, world_size=1, peak_flops_per_device=0.0)


def test_log_prob_helpers_are_exported():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    torch.testing.assert_close(selective_log_softmax(logits, torch.tensor([1])), torch.tensor([math.log(0.75)]))
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([0.5623351446]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cap_exp_stays_finite(dtype):
    assert torch.isfinite(cap_exp(torch.tensor([1e4], dtype=dtype))).all()


def test_generation_turns_activation_checkpointing_off_and_back_on_without_deprecation_warnings():
    import warnings

    from transformers import AutoModelForCausalLM

    from trl.models.utils import disable_gradient_checkpointing
    from trl.testing import get_tiny_model_path

    model = AutoModelForCausalLM.from_pretrained(get_tiny_model_path())
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with disable_gradient_checkpointing(model, {"use_reentrant": False}):
            assert not model.is_activation_checkpointing
        assert model.is_activation_checkpointing
    assert not [w for w in caught if "deprecated" in str(w.message)]
