"""The generation layer: interface types, the transformers backend, weight export, guards of the vLLM backends."""

import copy
import importlib.util
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from trl.generation import (
    GenerationResult,
    SamplingParams,
    TransformersBackend,
    build_generation_backend,
    inference_param_name,
    iter_inference_weights,
)
from trl.generation.base import cut_at_eos, sanitize_logprob
from trl.generation.transformers_backend import left_pad
from trl.testing import get_tiny_model_path


PROMPTS = [[5, 17, 300, 42, 9], [801, 33], [7, 7, 7, 100]]
EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2")).eval()


@pytest.fixture
def backend(model):
    return TransformersBackend(model)


def hf_greedy(model, prompt, max_new_tokens, **kwargs):
    """Greedy `generate` on one unpadded prompt, the reference the backend must match."""
    input_ids = torch.tensor([prompt])
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=EOS, pad_token_id=PAD, **kwargs
    )
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
    return out[0, len(prompt) :].tolist()


def forward_logprobs(model, prompt, completion, temperature):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1]
    logps = torch.log_softmax(logits / temperature, dim=-1)
    return logps.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


# ------------------------------------------------------------------------------------------------ interface types


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"max_tokens": 0}, {"temperature": -0.1}, {"top_p": 0.0}, {"min_p": 1.5}, {"repetition_penalty": 0}],
)
def test_sampling_params_rejects_invalid_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


def test_generation_result_checks_alignment_and_reports_truncation():
    result = GenerationResult(
        completion_ids=[[1, 2], [3]], finish_reasons=["stop", "length"], logprobs=[[-1, -2], [-3]]
    )
    assert result.truncated == [False, True]
    assert len(result) == 2
    with pytest.raises(ValueError, match="one value per completion token"):
        GenerationResult(completion_ids=[[1, 2]], finish_reasons=["stop"], logprobs=[[-1.0]])
    with pytest.raises(ValueError, match="finish_reasons"):
        GenerationResult(completion_ids=[[1, 2]], finish_reasons=[])


def test_cut_at_eos():
    assert cut_at_eos([4, 5, 2, 0, 0], {2}, 5) == ([4, 5, 2], "stop")
    assert cut_at_eos([4, 9, 5, 2], {2, 9}, 4) == ([4, 9], "stop")  # the first of several EOS ids
    assert cut_at_eos([4, 5, 6], {2}, 3) == ([4, 5, 6], "length")
    assert cut_at_eos([4, 5], {2}, 3) == ([4, 5], "stop")  # stopped early by something other than EOS


def test_left_pad():
    input_ids, attention_mask = left_pad([[1, 2, 3], [4]], pad_token_id=0)
    assert input_ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_sanitize_logprob():
    assert sanitize_logprob(-1.5) == -1.5
    assert sanitize_logprob(float("nan")) is None
    assert sanitize_logprob(float("-inf")) is None
    assert sanitize_logprob(None) is None


# ------------------------------------------------------------------------------------------- transformers backend


def test_greedy_matches_generate_on_each_unpadded_prompt(model, backend):
    result = backend.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=10))
    expected = [hf_greedy(model, prompt, 10) for prompt in PROMPTS]
    assert result.completion_ids == expected
    assert result.prompt_ids == PROMPTS
    assert result.logprobs is None


def test_generation_config_translates_sampling_params(backend):
    sampling = SamplingParams(temperature=0.7, top_p=0.9, top_k=-1, min_p=0.0, repetition_penalty=1.2, max_tokens=7)
    config = backend.generation_config(sampling)
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 0.7, 0.9, 0)
    assert (config.min_p, config.repetition_penalty, config.max_new_tokens) == (None, 1.2, 7)
    assert (config.use_cache, config.eos_token_id, config.pad_token_id) == (True, [EOS], PAD)
    greedy = backend.generation_config(SamplingParams(temperature=0, top_k=5), {"no_repeat_ngram_size": 2})
    assert greedy.do_sample is False and greedy.no_repeat_ngram_size == 2


def test_stops_at_eos_and_keeps_it(model):
    free_runs = [hf_greedy(model, prompt, 10) for prompt in PROMPTS]
    eos = free_runs[0][3]  # pretend a token the first prompt produces is the EOS token
    backend = TransformersBackend(model, eos_token_id=eos)
    result = backend.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=10))
    stop = free_runs[0].index(eos)
    assert result.completion_ids[0] == free_runs[0][: stop + 1]
    assert result.finish_reasons[0] == "stop"
    for row in (1, 2):  # these rows never produce it: they use the whole budget and are flagged as truncated
        assert eos not in free_runs[row]
        assert result.completion_ids[row] == free_runs[row]
        assert result.truncated[row]


def test_truncation_flag(backend):
    result = backend.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=4))
    assert [len(c) for c in result.completion_ids] == [4, 4, 4]
    assert result.truncated == [True, True, True]
    assert result.finish_reasons == ["length"] * 3


def test_n_completions_are_prompt_major(model, backend):
    greedy = backend.generate(PROMPTS[:2], SamplingParams(n=2, temperature=0, max_tokens=6))
    first, second = hf_greedy(model, PROMPTS[0], 6), hf_greedy(model, PROMPTS[1], 6)
    assert greedy.completion_ids == [first, first, second, second]
    sampled = backend.generate(PROMPTS[:2], SamplingParams(n=3, max_tokens=6, generation_kwargs={"seed": 0}))
    assert len(sampled) == 6
    assert len({tuple(c) for c in sampled.completion_ids[:3]}) == 3  # independent samples of one prompt


def test_seed_makes_sampling_reproducible_without_touching_global_rng(backend):
    sampling = SamplingParams(n=2, max_tokens=8, generation_kwargs={"seed": 123})
    torch.manual_seed(0)
    first = backend.generate(PROMPTS, sampling).completion_ids
    after_first = torch.rand(3)
    torch.manual_seed(0)
    second = backend.generate(PROMPTS, sampling).completion_ids
    assert first == second
    assert torch.equal(torch.rand(3), after_first)  # the global RNG advanced exactly as without a seeded call
    other = backend.generate(PROMPTS, SamplingParams(n=2, max_tokens=8, generation_kwargs={"seed": 124}))
    assert other.completion_ids != first


@pytest.mark.parametrize("kwargs", [{"top_k": 1}, {"min_p": 1.0}, {"top_p": 1e-6}])
def test_truncating_sampling_params_reduce_to_greedy(backend, kwargs):
    greedy = backend.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=8)).completion_ids
    sampled = backend.generate(PROMPTS, SamplingParams(temperature=1.0, max_tokens=8, **kwargs)).completion_ids
    assert sampled == greedy


def test_repetition_penalty_is_applied(model, backend):
    penalised = backend.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=10, repetition_penalty=3.0))
    expected = [hf_greedy(model, prompt, 10, repetition_penalty=3.0) for prompt in PROMPTS]
    assert penalised.completion_ids == expected
    # The third prompt loops (484, 35, 484, 35, ...) without the penalty.
    assert penalised.completion_ids[2] != hf_greedy(model, PROMPTS[2], 10)


def test_generation_kwargs_override_and_unknown_keys(backend):
    greedy = backend.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=6)).completion_ids
    forced = backend.generate(PROMPTS, SamplingParams(max_tokens=6, generation_kwargs={"do_sample": False}))
    assert forced.completion_ids == greedy
    with pytest.raises(ValueError, match=r"Unknown generation_kwargs \['presence_penalty'\]"):
        backend.generate(PROMPTS, SamplingParams(generation_kwargs={"presence_penalty": 0.5}))


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_match_a_forward_pass(model, backend, temperature):
    sampling = SamplingParams(n=2, temperature=temperature, max_tokens=6, return_logprobs=True)
    sampling.generation_kwargs["seed"] = 3
    result = backend.generate(PROMPTS, sampling)
    scale = temperature or 1.0
    for index, (completion, logprobs) in enumerate(zip(result.completion_ids, result.logprobs)):
        expected = forward_logprobs(model, PROMPTS[index // 2], completion, scale)
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-4, rtol=1e-4)


def test_logprobs_stop_at_the_eos_token(model):
    free_run = hf_greedy(model, PROMPTS[0], 8)
    backend = TransformersBackend(model, eos_token_id=free_run[2])
    result = backend.generate(PROMPTS[:1], SamplingParams(temperature=0, max_tokens=8, return_logprobs=True))
    assert len(result.logprobs[0]) == len(result.completion_ids[0]) == free_run.index(free_run[2]) + 1


def test_max_batch_size_gives_the_same_completions(model):
    sampling = SamplingParams(n=2, temperature=0, max_tokens=6)
    whole = TransformersBackend(model).generate(PROMPTS, sampling)
    chunked = TransformersBackend(model, max_batch_size=2).generate(PROMPTS, sampling)
    assert chunked.completion_ids == whole.completion_ids


def test_train_mode_is_restored_and_no_graph_is_built(model):
    model.train()
    try:
        TransformersBackend(model).generate(PROMPTS[:1], SamplingParams(max_tokens=3, return_logprobs=True))
        assert model.training
    finally:
        model.eval()


class _Wrapper(torch.nn.Module):
    """Stands for DDP: holds the model as `.module` and has no `generate`."""

    def __init__(self, module):
        super().__init__()
        self.module = module


class _FakeAccelerator:
    def __init__(self):
        self.calls = 0

    def unwrap_model(self, model):
        self.calls += 1
        return model.module


def test_model_is_unwrapped_through_the_accelerator(model):
    accelerator = _FakeAccelerator()
    backend = TransformersBackend(_Wrapper(model), accelerator=accelerator)
    result = backend.generate(PROMPTS[:1], SamplingParams(temperature=0, max_tokens=5))
    assert result.completion_ids == [hf_greedy(model, PROMPTS[0], 5)]
    assert accelerator.calls >= 1


def test_sync_weights_switches_to_the_new_model(model):
    backend = TransformersBackend(model)
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for param in perturbed.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    backend.sync_weights(perturbed)
    result = backend.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=6))
    assert result.completion_ids == [hf_greedy(perturbed, prompt, 6) for prompt in PROMPTS]
    assert result.completion_ids != [hf_greedy(model, prompt, 6) for prompt in PROMPTS]


def test_missing_eos_and_bad_prompts_raise(model):
    plain = copy.deepcopy(model)
    plain.generation_config.eos_token_id = None
    with pytest.raises(ValueError, match="eos_token_id"):
        TransformersBackend(plain)
    backend = TransformersBackend(model)
    with pytest.raises(ValueError, match="at least one token"):
        backend.generate([[1, 2], []], SamplingParams())
    with pytest.raises(ValueError, match="tokenize text prompts"):
        backend.generate(["hello"], SamplingParams())


# ------------------------------------------------------------------------------------------------ weight export


@pytest.mark.parametrize(
    ("name", "is_peft", "expected"),
    [
        ("model.layers.0.self_attn.q_proj.weight", False, "model.layers.0.self_attn.q_proj.weight"),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
            True,
            "model.layers.0.self_attn.q_proj.weight",
        ),
        ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", True, None),
        ("base_model.model.score.modules_to_save.default.weight", True, "score.weight"),
        ("base_model.model.score.original_module.weight", True, None),
        (
            "_fsdp_wrapped_module.model._checkpoint_wrapped_module.embed_tokens.weight",
            False,
            "model.embed_tokens.weight",
        ),
        ("_orig_mod.lm_head.weight", False, "lm_head.weight"),
    ],
)
def test_inference_param_name(name, is_peft, expected):
    assert inference_param_name(name, is_peft) == expected


def test_iter_inference_weights_plain_model(model):
    exported = dict(iter_inference_weights(model))
    assert exported.keys() == dict(model.named_parameters()).keys()
    # No copies: the tensors share the model's storage.
    assert all(exported[name].data_ptr() == param.data_ptr() for name, param in model.named_parameters())


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft")
def test_iter_inference_weights_merges_lora_and_restores_the_adapter(model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        before = peft_model(ids).logits
    merged_reference = copy.deepcopy(peft_model).merge_and_unload()
    exported = {name: tensor.clone() for name, tensor in iter_inference_weights(peft_model)}
    assert exported.keys() == dict(model.named_parameters()).keys()
    for name, param in merged_reference.named_parameters():
        torch.testing.assert_close(exported[name], param.data)
    q_name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(exported[q_name], dict(model.named_parameters())[q_name])  # the LoRA delta is in
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, before)  # unmerged again


# ------------------------------------------------------------------------------------------------ vLLM guards


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_colocate_backend_without_vllm_names_the_install_command():
    from trl.generation import VLLMGeneration

    with pytest.raises(ImportError, match=r"vLLM is not installed. Please install it with `pip install trl\[vllm\]`"):
        VLLMGeneration("any-model")


def test_build_generation_backend_follows_the_config(model):
    backend = build_generation_backend(SimpleNamespace(use_vllm=False), model, pad_token_id=PAD, eos_token_id=[EOS, 7])
    assert isinstance(backend, TransformersBackend)
    assert (backend.pad_token_id, backend.eos_token_ids) == (PAD, [EOS, 7])
    assert isinstance(
        build_generation_backend(SimpleNamespace(), model), TransformersBackend
    )  # use_vllm off by default
    with pytest.raises(ValueError, match="`vllm_mode` must be 'server' or 'colocate', got 'remote'"):
        build_generation_backend(SimpleNamespace(use_vllm=True, vllm_mode="remote"), model)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_build_generation_backend_colocate_without_vllm(model):
    with pytest.raises(ImportError, match=r"pip install trl\[vllm\]"):
        build_generation_backend(SimpleNamespace(use_vllm=True, vllm_mode="colocate"), model)


def test_vllm_sampling_kwargs():
    from trl.generation.vllm_generation import vllm_sampling_kwargs

    sampling = SamplingParams(n=4, temperature=0.9, top_k=20, max_tokens=32, return_logprobs=True)
    sampling.generation_kwargs.update(seed=3, temperature=0.5)
    assert vllm_sampling_kwargs(sampling) == {
        "n": 4,
        "temperature": 0.5,  # generation_kwargs win
        "top_p": 1.0,
        "top_k": 20,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "max_tokens": 32,
        "logprobs": 0,
        "seed": 3,
    }
    assert vllm_sampling_kwargs(SamplingParams())["logprobs"] is None


def test_sampled_token_logprobs_reads_vllm_outputs():
    import math

    from trl.generation.vllm_generation import sampled_token_logprobs

    entry = SimpleNamespace
    sample = SimpleNamespace(
        token_ids=[4, 9, 1],
        logprobs=[{4: entry(logprob=-0.5), 7: entry(logprob=-2.0)}, {9: entry(logprob=float("nan"))}, None],
    )
    values = sampled_token_logprobs(sample)
    assert values[0] == -0.5 and math.isnan(values[1]) and math.isnan(values[2])
    assert all(math.isnan(v) for v in sampled_token_logprobs(SimpleNamespace(token_ids=[1, 2], logprobs=None)))


def test_extras_path_reexports_the_client():
    from trl.extras.vllm_client import VLLMClient as Legacy
    from trl.generation.vllm_client import VLLMClient

    assert Legacy is VLLMClient
