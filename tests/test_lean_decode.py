"""The lean decode loop of the transformers backend: the same tokens, log-probs and sampling distribution as
`model.generate`, and the rule that sends other models to `generate`."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from trl.generation import SamplingParams, TransformersBackend
from trl.generation.lean_decode import SamplerSettings, TokenSampler, lean_decode_unsupported_reason
from trl.testing import get_tiny_model_path


LEAN_ARCHS = ("qwen2", "llama", "qwen3", "phi3")
FALLBACK_ARCHS = ("gpt2", "gemma2", "qwen3-moe")
# Different lengths (left padding), one very short prompt, repeated tokens.
PROMPTS = [[5, 17, 300, 42, 9, 77, 12], [801, 33], [7, 7, 7, 100], [64, 65, 66, 67, 68, 69, 70, 71, 72, 73]]


def _load(arch):
    return AutoModelForCausalLM.from_pretrained(get_tiny_model_path(arch)).eval()


@pytest.fixture(scope="module")
def qwen2():
    return _load("qwen2")


def _pair(model, **kwargs):
    return TransformersBackend(model, decode_loop="generate", **kwargs), TransformersBackend(
        model, decode_loop="lean", **kwargs
    )


def chi_square_critical(df: int, z: float = 3.719) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at normal score `z` (3.719: p = 1e-4)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square_two_sample(a: torch.Tensor, b: torch.Tensor, min_count: int = 10) -> tuple[float, int]:
    """Homogeneity statistic of two count vectors; sparse categories are pooled. Returns (statistic, df)."""
    a, b = a.double(), b.double()
    keep = (a + b) >= min_count
    a = torch.cat([a[keep], a[~keep].sum()[None]])
    b = torch.cat([b[keep], b[~keep].sum()[None]])
    nonzero = (a + b) > 0
    a, b = a[nonzero], b[nonzero]
    na, nb = a.sum(), b.sum()
    total = a + b
    expected_a, expected_b = total * na / (na + nb), total * nb / (na + nb)
    stat = (((a - expected_a) ** 2) / expected_a + ((b - expected_b) ** 2) / expected_b).sum().item()
    return stat, max(len(a) - 1, 1)


# ------------------------------------------------------------------------------------------------ the fallback rule


@pytest.mark.parametrize("arch", LEAN_ARCHS)
def test_llama_family_archs_use_the_lean_loop(arch):
    model = _load(arch)
    assert lean_decode_unsupported_reason(model) is None
    backend = TransformersBackend(model)
    backend.generate(PROMPTS[:1], SamplingParams(max_tokens=2))
    assert backend.last_decode_loop == "lean"


@pytest.mark.parametrize("arch", FALLBACK_ARCHS)
def test_other_archs_fall_back_to_generate(arch):
    model = _load(arch)
    assert lean_decode_unsupported_reason(model) is not None
    backend = TransformersBackend(model)
    backend.generate(PROMPTS[:1], SamplingParams(max_tokens=2))
    assert backend.last_decode_loop == "generate"
    with pytest.raises(ValueError, match="decode_loop='lean'"):
        TransformersBackend(model, decode_loop="lean").generate(PROMPTS[:1], SamplingParams(max_tokens=2))


def test_fallback_conditions(qwen2):
    eager = copy.deepcopy(qwen2)
    eager.config._attn_implementation = "eager"
    assert "sdpa" in lean_decode_unsupported_reason(eager)
    hooked = copy.deepcopy(qwen2)
    hooked.model.layers[0].mlp.register_forward_hook(lambda *args: None)
    assert "hooks" in lean_decode_unsupported_reason(hooked)
    wrapped = copy.deepcopy(qwen2)
    wrapped.model.layers[0].self_attn.q_proj = torch.nn.Sequential(wrapped.model.layers[0].self_attn.q_proj)
    assert lean_decode_unsupported_reason(wrapped) is not None
    assert "training" in lean_decode_unsupported_reason(copy.deepcopy(qwen2).train())
    # Extra generation kwargs need `generate`; `seed` and `cache_implementation` do not.
    backend = TransformersBackend(qwen2)
    backend.generate(PROMPTS[:1], SamplingParams(max_tokens=2, generation_kwargs={"no_repeat_ngram_size": 2}))
    assert backend.last_decode_loop == "generate"
    backend.generate(PROMPTS[:1], SamplingParams(max_tokens=2, generation_kwargs={"seed": 1}))
    assert backend.last_decode_loop == "lean"
    # The switch forces the old path.
    forced = TransformersBackend(qwen2, decode_loop="generate")
    forced.generate(PROMPTS[:1], SamplingParams(max_tokens=2))
    assert forced.last_decode_loop == "generate"
    with pytest.raises(ValueError, match="decode_loop"):
        TransformersBackend(qwen2, decode_loop="fast")


def test_lora_model_falls_back():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_load("qwen2"), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert lean_decode_unsupported_reason(model.get_base_model()) is not None


# ---------------------------------------------------------------------------------------------- greedy invariance


@pytest.mark.parametrize("arch", LEAN_ARCHS)
@pytest.mark.parametrize("prompts", [PROMPTS, [PROMPTS[0]] * 3], ids=["left-padded", "unpadded"])
def test_greedy_tokens_and_logprobs_identical_to_generate(arch, prompts):
    reference, lean = _pair(_load(arch))
    sampling = SamplingParams(n=2, temperature=0.0, max_tokens=12, return_logprobs=True)
    expected, got = reference.generate(prompts, sampling), lean.generate(prompts, sampling)
    assert lean.last_decode_loop == "lean"
    assert got.completion_ids == expected.completion_ids
    assert got.finish_reasons == expected.finish_reasons
    # Same kernels on the same inputs: the log-probs are bitwise equal.
    assert got.logprobs == expected.logprobs


def test_greedy_stops_at_eos_like_generate(qwen2):
    # Make the EOS token of each row the greedy choice at a different step: the EOS id is a token greedy decoding
    # reaches, so rows finish at different lengths and the loop stops once all have.
    reference = TransformersBackend(qwen2, decode_loop="generate", eos_token_id=[1])
    free = reference.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=10)).completion_ids
    eos = [free[0][3], free[2][5]]
    reference, lean = _pair(qwen2, eos_token_id=eos)
    sampling = SamplingParams(temperature=0.0, max_tokens=10, return_logprobs=True)
    expected, got = reference.generate(PROMPTS, sampling), lean.generate(PROMPTS, sampling)
    assert got.completion_ids == expected.completion_ids
    assert got.finish_reasons == expected.finish_reasons
    assert got.logprobs == expected.logprobs
    assert "stop" in got.finish_reasons


@pytest.mark.parametrize("max_tokens", [1, 2, 7])
def test_greedy_max_new_tokens(qwen2, max_tokens):
    reference, lean = _pair(qwen2)
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    assert lean.generate(PROMPTS, sampling).completion_ids == reference.generate(PROMPTS, sampling).completion_ids


def test_greedy_repetition_penalty_identical_to_generate(qwen2):
    reference, lean = _pair(qwen2)
    sampling = SamplingParams(temperature=0.0, max_tokens=12, repetition_penalty=1.7)
    assert lean.generate(PROMPTS, sampling).completion_ids == reference.generate(PROMPTS, sampling).completion_ids


def test_max_batch_size_and_bf16(qwen2):
    reference, lean = _pair(copy.deepcopy(qwen2).to(torch.bfloat16), max_batch_size=3)
    sampling = SamplingParams(n=2, temperature=0.0, max_tokens=8, return_logprobs=True)
    expected, got = reference.generate(PROMPTS, sampling), lean.generate(PROMPTS, sampling)
    assert got.completion_ids == expected.completion_ids
    assert got.logprobs == expected.logprobs


# ----------------------------------------------------------------------------------------------- sampling invariance

SAMPLING_CASES = {
    "plain": {},
    "temperature": {"temperature": 0.7},
    "top_k": {"top_k": 5},
    "top_p": {"top_p": 0.6},
    "min_p": {"min_p": 0.2},
    "repetition_penalty": {"repetition_penalty": 3.0},
    "combined": {"temperature": 1.3, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.5},
}


def _hf_processors(settings: SamplerSettings, prompt_ignore_length=None):
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty, prompt_ignore_length))
    if settings.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k:
        processors.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        processors.append(TopPLogitsWarper(settings.top_p))
    if settings.min_p:
        processors.append(MinPLogitsWarper(settings.min_p))
    return processors


@pytest.mark.parametrize("case", SAMPLING_CASES)
def test_sampler_filters_equal_transformers_processors(case):
    settings = SamplerSettings(**SAMPLING_CASES[case])
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=generator) * 3
    prompt = torch.randint(0, 50, (64, 6), generator=generator)
    mask = torch.ones_like(prompt)
    mask[:8, :2] = 0  # left padding, ignored by the penalty
    sampler = TokenSampler(settings, prompt, mask, 50)
    expected = _hf_processors(settings, (mask != 0).int().argmax(dim=1))(prompt, logits.clone())
    assert torch.equal(sampler.filtered_scores(logits), expected)


@pytest.mark.parametrize("case", SAMPLING_CASES)
def test_sampler_draws_from_the_filtered_softmax(case):
    """Goodness of fit of the one-uniform-per-row sampler to softmax(filtered scores), and never a filtered token."""
    settings = SamplerSettings(**SAMPLING_CASES[case])
    generator = torch.Generator().manual_seed(1)
    row = torch.randn(1, 40, generator=generator) * 2
    rows = 40_000
    prompt = torch.tensor([[3, 9, 9, 27]]).expand(rows, -1)
    sampler = TokenSampler(settings, prompt, torch.ones_like(prompt), 40)
    probs = torch.softmax(sampler.filtered_scores(row.expand(rows, -1))[0], dim=-1).double()
    torch.manual_seed(0)
    counts = torch.bincount(sampler(row.expand(rows, -1).clone()), minlength=40).double()
    assert (counts[probs == 0] == 0).all()
    keep = probs * rows >= 5
    expected = torch.cat([probs[keep], probs[~keep].sum()[None]]) * rows
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
    nonzero = expected > 0
    stat = (((observed - expected)[nonzero] ** 2) / expected[nonzero]).sum().item()
    assert stat < chi_square_critical(max(int(nonzero.sum()) - 1, 1))


@pytest.fixture(scope="module")
def peaked():
    """The tiny model with a sharpened LM head, so that top-k / top-p / min-p cut a real distribution."""
    model = _load("qwen2")
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model


@pytest.mark.parametrize("case", SAMPLING_CASES)
def test_sampled_tokens_have_generate_distribution(peaked, case):
    """Chi-square homogeneity of the first two sampled tokens, lean loop vs `generate`, same settings."""
    reference, lean = _pair(peaked)
    sampling = SamplingParams(n=1500, max_tokens=2, **SAMPLING_CASES[case])
    prompts = [PROMPTS[1], PROMPTS[2]]
    torch.manual_seed(0)
    expected = reference.generate(prompts, sampling).completion_ids
    torch.manual_seed(1)
    got = lean.generate(prompts, sampling).completion_ids
    assert lean.last_decode_loop == "lean"
    vocab = peaked.config.vocab_size
    for position in range(2):
        for prompt in range(2):
            rows = slice(prompt * 1500, (prompt + 1) * 1500)

            def counts(completions, rows=rows, position=position):
                tokens = [c[position] if len(c) > position else vocab for c in completions[rows]]
                return torch.bincount(torch.tensor(tokens), minlength=vocab + 1)

            stat, df = chi_square_two_sample(counts(expected), counts(got))
            assert stat < chi_square_critical(df), (case, position, prompt, stat, df)


def test_sampled_logprobs_match_the_sampling_distribution(peaked):
    """The lean loop's log-probs equal those recomputed by a full forward pass, as the generate path's do."""
    backend = TransformersBackend(peaked, decode_loop="lean")
    result = backend.generate(PROMPTS[:2], SamplingParams(n=2, temperature=0.8, max_tokens=6, return_logprobs=True))
    for i, (completion, logps) in enumerate(zip(result.completion_ids, result.logprobs, strict=True)):
        prompt = PROMPTS[:2][i // 2]
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = peaked(ids).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits / 0.8, dim=-1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(logps), expected, atol=1e-4, rtol=1e-4)


def test_seed_reproducible_and_global_rng_untouched(qwen2):
    backend = TransformersBackend(qwen2, decode_loop="lean")
    sampling = SamplingParams(n=3, max_tokens=6, generation_kwargs={"seed": 7})
    state = torch.random.get_rng_state()
    first = backend.generate(PROMPTS, sampling).completion_ids
    assert torch.equal(torch.random.get_rng_state(), state)
    assert backend.generate(PROMPTS, sampling).completion_ids == first


@pytest.mark.parametrize("arch", LEAN_ARCHS)
def test_matmul_attention_greedy_tokens_match_generate(arch):
    """`lean_attention="matmul"`: the same maths as the sdpa kernel, rounded differently (log-probs to 1e-5)."""
    model = _load(arch)
    reference = TransformersBackend(model, decode_loop="generate")
    lean = TransformersBackend(model, decode_loop="lean", lean_attention="matmul")
    for prompts in (PROMPTS, [PROMPTS[0]] * 3):
        sampling = SamplingParams(n=2, temperature=0.0, max_tokens=12, return_logprobs=True)
        expected, got = reference.generate(prompts, sampling), lean.generate(prompts, sampling)
        assert got.completion_ids == expected.completion_ids
        for a, b in zip(got.logprobs, expected.logprobs, strict=True):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="lean_attention"):
        TransformersBackend(model, lean_attention="flash")
