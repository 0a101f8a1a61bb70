"""Unit tests of the rollout shared by the online trainers: its pieces (`trl.trainer.rollout_utils`,
`trl.trainer.reward_scoring`) and the `Rollout` object (`trl.trainer.rollout_engine`), without a Trainer."""

import asyncio
import functools
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerState

from trl.generation import TransformersBackend
from trl.kernels import token_logps
from trl.testing import get_tiny_model_path
from trl.trainer.checkpoint_state import load_state, save_state
from trl.trainer.reward_scoring import RewardScorer, _run_async
from trl.trainer.rollout_engine import Rollout, trim_padding
from trl.trainer.rollout_utils import (
    GenerationBuffer,
    GenerationRNG,
    PhaseTimer,
    RolloutSampler,
    decode_completions,
    pad_rows,
    policy_inputs,
    render_prompts,
    tokenize_prompts,
)
from trl.trainer.utils import print_prompt_completions_sample


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(get_tiny_model_path("qwen2"))


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2")).eval()


# ------------------------------------------------------------------------------------------------- timing, RNG
def test_phase_timer_accumulates_and_pops_every_phase():
    timer = PhaseTimer()
    with timer("generate"):
        pass
    with timer("generate"):
        pass
    timer.seconds["score"] += 0.5
    assert timer.total() == pytest.approx(0.5, abs=0.01)
    seconds = timer.pop()
    assert list(seconds) == ["generate", "score", "reference", "train", "weight_sync"]
    assert seconds["score"] == 0.5 and seconds["reference"] == 0.0 and seconds["generate"] >= 0.0
    assert timer.total() == 0.0


def test_generation_rng_is_its_own_stream_and_restores():
    global_state = torch.get_rng_state()
    rng = GenerationRNG(seed=3, process_index=0, device=torch.device("cpu"))
    saved = rng.state_dict()
    with rng():
        first = torch.rand(4)
    with rng():
        second = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), global_state), "the global random state moved"
    assert not torch.equal(first, second), "the stream did not advance"
    rng.load_state_dict(saved)
    with rng():
        assert torch.equal(torch.rand(4), first)
    other = GenerationRNG(seed=3, process_index=1, device=torch.device("cpu"))
    with other():
        assert not torch.equal(torch.rand(4), first), "two processes share a stream"


def test_rollout_sampler_repeats_groups_and_depends_only_on_seed_and_epoch():
    sampler = RolloutSampler(range(6), mini_repeat_count=2, batch_size=2, repeat_count=2, seed=5)
    order = list(sampler)
    assert len(order) == len(sampler) == 3 * 2 * 2 * 2
    # Each chunk of 2 prompts, each prompt twice in a row, the chunk twice.
    for start in range(0, len(order), 8):
        chunk = order[start : start + 8]
        assert chunk[:4] == chunk[4:]
        assert chunk[0] == chunk[1] and chunk[2] == chunk[3] and chunk[0] != chunk[2]
    assert sorted(set(order)) == list(range(6))
    assert list(sampler) == order, "the same epoch must replay the same order"
    sampler.set_epoch(1)
    assert list(sampler) != order
    replay = RolloutSampler(range(6), mini_repeat_count=2, batch_size=2, repeat_count=2, seed=5)
    replay.set_epoch(1)
    assert list(replay) == list(sampler)
    unshuffled = RolloutSampler(range(4), mini_repeat_count=2, batch_size=2, shuffle=False)
    assert list(unshuffled) == [0, 0, 1, 1, 2, 2, 3, 3]


# --------------------------------------------------------------------------------------- prompts, completions
def test_render_prompts_applies_the_chat_template_to_conversations_only(tokenizer):
    messages = [{"role": "user", "content": "What is 2 plus 2?"}]
    texts = render_prompts([{"prompt": "The sky is"}, {"prompt": messages}], tokenizer)
    assert texts[0] == "The sky is"
    assert texts[1] == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert texts[1].endswith("<|im_start|>assistant\n")


def test_tokenize_prompts_adds_no_special_tokens_and_keeps_the_end(tokenizer):
    ids = tokenize_prompts(["one two three four"], tokenizer)
    assert ids == [tokenizer("one two three four", add_special_tokens=False)["input_ids"]]
    assert tokenize_prompts(["one two three four"], tokenizer, max_prompt_length=2) == [ids[0][-2:]]


def test_decode_completions_follows_the_prompt_format(tokenizer):
    ids = tokenizer([" It is blue.", "Paris"], add_special_tokens=False)["input_ids"]
    ids[0] = ids[0] + [tokenizer.eos_token_id]  # special tokens are dropped
    standard = decode_completions(["What color?", "Capital?"], ids, tokenizer)
    assert standard == [" It is blue.", "Paris"]
    user = [{"role": "user", "content": "Capital?"}]
    continued = user + [{"role": "assistant", "content": "The capital is "}]
    conversational = decode_completions([user, continued], ids, tokenizer)
    assert conversational[0] == [{"role": "assistant", "content": " It is blue."}]
    assert conversational[1] == [{"role": "assistant", "content": "The capital is Paris"}]


def test_pad_rows_left_and_right():
    values, mask = pad_rows([[1, 2], [3], []], 0, "right", torch.long, "cpu")
    assert values.tolist() == [[1, 2], [3, 0], [0, 0]] and mask.tolist() == [[1, 1], [1, 0], [0, 0]]
    values, mask = pad_rows([[1, 2], [3]], -1, "left", torch.long, "cpu")
    assert values.tolist() == [[1, 2], [-1, 3]] and mask.tolist() == [[1, 1], [0, 1]]


def test_policy_inputs_hand_built():
    prompt_ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    completion_ids = torch.tensor([[11, 12, 0], [13, 0, 0]])
    completion_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    inputs = policy_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    assert inputs["input_ids"].tolist() == [[0, 5, 6, 11, 12], [7, 8, 9, 13, 0]]
    assert inputs["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert inputs["position_ids"].tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 3]]
    # Position t predicts token t + 1: positions 2 and 3 predict the completion tokens.
    assert inputs["logits_to_keep_B_L"].tolist() == [
        [False, False, True, True, False],
        [False, False, True, False, False],
    ]
    assert inputs["completion_ids"].tolist() == [[11, 12], [13, 0]]
    # A prompt column that is padding in every row is dropped; pad_to_multiple_of rounds the width up.
    trimmed = policy_inputs(
        torch.tensor([[0, 0, 5], [0, 6, 7]]), torch.tensor([[0, 0, 1], [0, 1, 1]]), completion_ids, completion_mask, 4
    )
    assert trimmed["input_ids"].tolist() == [[0, 5, 11, 12], [6, 7, 13, 0]]
    assert trimmed["logits_to_keep_B_L"][:, 1].tolist() == [True, True]


def _scored(inputs):
    # The rollout's call into the one forward: the completion mask covers the last columns of the rows.
    return {key: inputs[key] for key in ("input_ids", "attention_mask", "position_ids", "completion_mask")}


def test_completion_logps_match_a_full_log_softmax_and_ignore_padding(model):
    prompt_ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    completion_ids = torch.tensor([[11, 12], [13, 0]])
    completion_mask = torch.tensor([[1, 1], [1, 0]])
    inputs = policy_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    with torch.no_grad():
        token = token_logps(model, _scored(inputs), temperature=0.7, return_entropy=True)
        logps, entropies = token.logps, token.entropy
        full = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], position_ids=inputs["position_ids"]
        ).logits
    logprobs = torch.log_softmax(full / 0.7, dim=-1)
    expected = [
        [logprobs[0, 2, 11], logprobs[0, 3, 12]],
        [logprobs[1, 2, 13], torch.tensor(0.0)],
    ]
    torch.testing.assert_close(logps, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    expected_entropy = -(logprobs.exp() * logprobs).sum(-1)[0, 2]
    torch.testing.assert_close(entropies[0, 0], expected_entropy, atol=1e-5, rtol=1e-5)
    assert entropies[1, 1] == 0
    # Row 0 alone, without its left padding, gives the same log-probs (position ids count real tokens).
    alone = policy_inputs(prompt_ids[:1, 1:], prompt_mask[:1, 1:], completion_ids[:1], completion_mask[:1])
    with torch.no_grad():
        alone_logps = token_logps(model, _scored(alone), temperature=0.7).logps
    torch.testing.assert_close(alone_logps, logps[:1], atol=1e-5, rtol=1e-5)


def test_trim_padding_drops_shared_padding_of_every_per_token_tensor():
    part = {
        "prompt_ids": torch.tensor([[0, 0, 5], [0, 6, 7]]),
        "prompt_mask": torch.tensor([[0, 0, 1], [0, 1, 1]]),
        "completion_ids": torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]]),
        "completion_mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]),
        "completion_lengths": torch.tensor([2, 1]),
        "ref_logps": torch.zeros(2, 4),
        "advantages": torch.tensor([1.0, -1.0]),
    }
    trimmed = trim_padding(part)
    assert trimmed["prompt_ids"].tolist() == [[0, 5], [6, 7]]
    assert trimmed["completion_ids"].shape == (2, 2) and trimmed["ref_logps"].shape == (2, 2)
    assert torch.equal(trimmed["advantages"], part["advantages"])


# ---------------------------------------------------------------------------------------------------- rewards
def constant_one(completions, **kwargs):
    return [1.0] * len(completions)


def test_reward_scorer_sync_async_none_and_keywords():
    seen = {}

    def sometimes(completions, answer, trainer_state, **kwargs):
        seen.update(kwargs, answer=answer, trainer_state=trainer_state)
        return [1.0, None, 0.5]

    async def later(completions, completion_ids, **kwargs):
        await asyncio.sleep(0)
        return [0, len(completion_ids[1]), None]

    scorer = RewardScorer([sometimes, later, functools.partial(constant_one)], reward_weights=[1.0, 2.0, 0.5])
    assert scorer.names == ["sometimes", "later", "constant_one"]
    assert scorer.weights.tolist() == [1.0, 2.0, 0.5]
    state = TrainerState()
    rewards = scorer.score(
        ["a", "b", "c"], ["x", "y", "z"], [[1], [1, 2], [3]], {"answer": [1, 2, 3]}, trainer_state=state
    )
    expected = torch.tensor([[1.0, 0.0, 1.0], [float("nan"), 2.0, 1.0], [0.5, float("nan"), 1.0]])
    torch.testing.assert_close(rewards, expected, equal_nan=True)
    assert seen["answer"] == [1, 2, 3] and seen["trainer_state"] is state
    assert seen["prompts"] == ["a", "b", "c"] and seen["completion_ids"] == [[1], [1, 2], [3]]


def test_reward_scorer_checks_lengths():
    with pytest.raises(ValueError, match="one weight per reward function"):
        RewardScorer([constant_one], reward_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="reward_processing_classes"):
        RewardScorer([constant_one], reward_processing_classes=[None, None])
    with pytest.raises(ValueError, match="returned 1 values for 2 completions"):
        RewardScorer([lambda completions, **kw: [1.0]]).score(["a", "b"], ["x", "y"], [[1], [2]], {})


def test_reward_model_scores_prompt_plus_completion():
    path = get_tiny_model_path("qwen2-seq-cls")
    scorer = RewardScorer(path)
    assert scorer.names == [path.rstrip("/").split("/")[-1]]
    prompts = ["What color is the sky?", [{"role": "user", "content": "Hi"}]]
    completions = [" It is blue, very blue.", [{"role": "assistant", "content": "Hello"}]]
    rewards = scorer.score(prompts, completions, [[1], [2]], {})
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = [prompts[0] + completions[0], tokenizer.apply_chat_template(prompts[1] + completions[1], tokenize=False)]
    with torch.no_grad():
        expected = [
            model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0] for text in texts
        ]
    # Scored together (padded) or alone, each completion gets the same score.
    torch.testing.assert_close(rewards[:, 0], torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_run_async_works_inside_a_running_event_loop():
    async def value(x):
        return x

    async def outer():
        return _run_async([value(1), value(2)])

    assert asyncio.run(outer()) == [1, 2]
    assert _run_async([value(3)]) == [3]


# ----------------------------------------------------------------------------------------- buffer and tables
def test_generation_buffer_normaliser_counts_the_optimizer_step_tokens():
    buffer = GenerationBuffer()
    buffer.fill([{"x": torch.zeros(1)}, {"x": torch.ones(1)}], [10.0, 20.0])
    # steps_per_generation=2, num_iterations=2: the cycle's micro-steps hold 10, 20, 10, 20 tokens.
    assert [buffer.normaliser(p, cycle=4, gradient_accumulation_steps=2) for p in range(4)] == [30, 30, 30, 30]
    assert buffer.normaliser(3, cycle=4, gradient_accumulation_steps=4) == 60
    assert buffer.normaliser(1, cycle=4, gradient_accumulation_steps=1) == 20
    # An optimizer step spanning several generation batches: estimated from this one's mean per micro-step.
    assert buffer.normaliser(0, cycle=4, gradient_accumulation_steps=3) == pytest.approx(45.0)
    restored = GenerationBuffer()
    restored.load_state_dict(buffer.state_dict(), "cpu")
    assert restored.tokens == [10.0, 20.0] and torch.equal(restored.slices[1]["x"], torch.ones(1))


def test_print_prompt_completions_sample(capsys):
    print_prompt_completions_sample(
        ["Why?", "How?"], ["Because.", "Like so."], {"accuracy": [1.0, 0.5]}, [0.25, -0.25], step=7
    )
    output = capsys.readouterr().out
    assert "Step 7" in output and "Because." in output and "Like so." in output and "0.50" in output
    print_prompt_completions_sample(["Why?", "How?"], ["Because.", "Like so."], {"r": [1.0, 0.5]}, None, 1, 1)
    output = capsys.readouterr().out
    assert ("Because." in output) != ("Like so." in output)


# ------------------------------------------------------------------------------------- the Rollout object
def rollout_args(**overrides):
    """The config fields a Rollout reads, without a TrainingArguments (the Rollout needs no Trainer)."""
    values = dict(
        num_generations=4, num_generations_eval=2, steps_per_generation=2, num_iterations=1,
        gradient_accumulation_steps=2, chat_template_kwargs=None, max_prompt_length=None, generation_kwargs=None,
        cache_implementation=None, use_vllm=False, temperature=1.0, top_p=1.0, top_k=0, min_p=None,
        repetition_penalty=1.0, max_completion_length=6, mask_truncated_completions=False, seed=0,
    )  # fmt: skip
    values.update(overrides)
    return SimpleNamespace(**values)


def completion_length(completion_ids, **kwargs):
    return [float(len(ids)) for ids in completion_ids]


PROMPT_ROWS = [{"prompt": "The sky is"}] * 4 + [{"prompt": "Two plus two"}] * 4


def make_rollout(model, tokenizer, **overrides):
    ref_logps = lambda batch: torch.full(batch["completion_ids"].shape, -1.0)  # noqa: E731
    old_logps = lambda batch: torch.full(batch["completion_ids"].shape, -2.0)  # noqa: E731
    return Rollout(
        rollout_args(**overrides), model, tokenizer, RewardScorer(completion_length),
        old_logps_fn=old_logps, ref_logps_fn=ref_logps,
    )  # fmt: skip


def test_rollout_produces_a_scored_batch_without_a_trainer(model, tokenizer):
    rollout = make_rollout(model, tokenizer)
    batch = rollout.produce(PROMPT_ROWS, "train", with_old_logps=True)
    tensors = batch.tensors
    lengths_B = tensors["completion_lengths"]
    assert tensors["prompt_ids"].shape[0] == tensors["completion_ids"].shape[0] == 8
    assert tensors["completion_ids"].shape[1] == int(lengths_B.max()) <= 6
    assert torch.equal(tensors["completion_mask"].sum(dim=1), lengths_B)
    # Left-padded prompts: every row ends with its last prompt token; rows of a group hold the same prompt.
    assert tensors["prompt_mask"][:, -1].all() and torch.equal(tensors["prompt_ids"][0], tensors["prompt_ids"][3])
    # The reward function saw exactly the completions of the batch.
    torch.testing.assert_close(batch.rewards_B_F, lengths_B.float().view(8, 1))
    assert batch.num_generations == 4 and batch.prompts[:4] == ["The sky is"] * 4 and len(batch.completions) == 8
    # Truncated: the whole budget used without an EOS token.
    eos_ids = set(rollout.backend.eos_token_ids)
    for ids, length, truncated in zip(tensors["completion_ids"].tolist(), lengths_B.tolist(), batch.truncated):
        assert truncated == (length == 6 and ids[length - 1] not in eos_ids)
    # Log-probs come from the callables, per completion token.
    assert torch.equal(tensors["old_logps"], torch.full_like(tensors["old_logps"], -2.0))
    assert tensors["ref_logps"].shape == tensors["completion_ids"].shape
    metrics = rollout.metrics["train"]
    assert metrics["completions/mean_length"] == [pytest.approx(lengths_B.float().mean().item())]
    assert metrics["num_tokens"] == [float(tensors["prompt_mask"].sum() + lengths_B.sum())]
    assert set(rollout.timer.seconds) == {"weight_sync", "generate", "score", "reference"}
    # Without being asked, no old log-probs (on-policy training needs no extra forward pass).
    assert "old_logps" not in rollout.produce(PROMPT_ROWS, "train").tensors


def test_rollout_eval_mode_uses_num_generations_eval_and_truncated_masks(model, tokenizer):
    rollout = make_rollout(model, tokenizer, mask_truncated_completions=True, max_completion_length=2)
    batch = rollout.produce([{"prompt": "The sky is"}] * 2, "eval")
    assert batch.num_generations == 2 and "num_tokens" not in rollout.metrics["eval"]
    truncated_B = torch.tensor(batch.truncated)
    assert truncated_B.any()
    assert not batch.tensors["completion_mask"][truncated_B].any()


def test_rollout_buffer_serves_micro_batches_with_the_step_token_count(model, tokenizer):
    rollout = make_rollout(model, tokenizer)
    assert rollout.cycle == 2 and rollout.on_policy and rollout.needs_generation()
    tensors = rollout.produce(PROMPT_ROWS, "train").tensors
    rollout.fill_buffer({**tensors, "advantages": torch.arange(8.0)})
    first, second = rollout.next_micro_batch(), rollout.next_micro_batch()
    assert rollout.step == 2 and rollout.needs_generation()
    # The two micro-batches split the shuffled rows; each is normalised by the whole optimizer step's tokens.
    assert sorted(torch.cat([first["advantages"], second["advantages"]]).tolist()) == list(range(8))
    assert first["num_items_in_batch"] == second["num_items_in_batch"] == float(tensors["completion_mask"].sum())


def test_rollout_state_round_trips_through_the_checkpoint_files_and_resumes_exactly(model, tokenizer, tmp_path):
    torch.manual_seed(0)
    rollout = make_rollout(model, tokenizer, steps_per_generation=4, gradient_accumulation_steps=4)
    rollout.fill_buffer({**rollout.produce(PROMPT_ROWS, "train").tensors, "advantages": torch.arange(8.0)})
    rollout.next_micro_batch()
    save_state(rollout.state_dict(), str(tmp_path), "rollout")  # safetensors + JSON: refuses anything else
    resumed = make_rollout(model, tokenizer, steps_per_generation=4, gradient_accumulation_steps=4)
    resumed.load_state_dict(load_state(str(tmp_path), "rollout"))
    assert resumed.step == 1 and resumed.total_train_tokens == rollout.total_train_tokens
    for _ in range(3):
        expected, got = rollout.next_micro_batch(), resumed.next_micro_batch()
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[key], got[key]) for key in expected if key != "num_items_in_batch")
    # The generation random stream continues where it was: the next batch's completions are the same.
    next_ids = rollout.produce(PROMPT_ROWS, "train").tensors["completion_ids"]
    assert torch.equal(resumed.produce(PROMPT_ROWS, "train").tensors["completion_ids"], next_ids)


def test_rollout_builds_its_backend_with_the_one_factory_and_takes_a_judge(model, tokenizer):
    from trl.judges import RewardModelJudge
    from trl.trainer.judge_scoring import JudgeScorer

    rollout = make_rollout(model, tokenizer)
    assert isinstance(rollout.backend, TransformersBackend) and rollout.backend.model is model
    assert tokenizer.eos_token_id in rollout.backend.eos_token_ids
    judge = RewardModelJudge(lambda completions, **kw: [float(len(c)) for c in completions])
    with pytest.raises(ValueError, match="either a judge or a reward_scorer"):
        Rollout(rollout_args(), model, tokenizer, RewardScorer(completion_length), judge=judge)
    assert isinstance(Rollout(rollout_args(), model, tokenizer, None, judge=judge).reward_scorer, JudgeScorer)


def test_rollout_warns_when_no_reward_function_scores_a_completion(model, tokenizer):
    rollout = Rollout(rollout_args(), model, tokenizer, RewardScorer(lambda completions, **kw: [None] * 8))
    with pytest.warns(UserWarning, match="All reward functions returned None for 8 of 8 completions"):
        batch = rollout.produce(PROMPT_ROWS, "train")
    assert torch.isnan(batch.rewards_B_F).all()


# ------------------------------------------------------------------------------ LogCompletionsCallback
def test_log_completions_callback_generates_for_eval_prompts_without_a_rollout(model, tokenizer, capsys, monkeypatch):
    from datasets import Dataset
    from transformers import GenerationConfig

    from trl.trainer.callbacks import LogCompletionsCallback

    monkeypatch.delenv("TRL_QUIET", raising=False)
    eval_dataset = Dataset.from_dict({"prompt": ["The sky is", "Two plus two", "Unused"]})
    trainer = SimpleNamespace(
        eval_dataset=eval_dataset, processing_class=tokenizer, model_wrapped=model, accelerator=None
    )
    config = GenerationConfig(max_new_tokens=3, do_sample=False)
    callback = LogCompletionsCallback(trainer, generation_config=config, num_prompts=2, freq=2)
    args = SimpleNamespace(eval_steps=None, logging_steps=1, report_to=[], num_completions_to_print=None)
    state = SimpleNamespace(global_step=1, is_world_process_zero=True)
    callback.on_step_end(args, state, None)
    assert capsys.readouterr().out == ""  # not a multiple of freq
    state.global_step = 2
    table = callback._generate(2)
    assert table["prompt"] == ["The sky is", "Two plus two"] and len(table["completion"]) == 2
    callback.on_step_end(args, state, None)
    output = capsys.readouterr().out
    assert "Step 2" in output and "Two plus two" in output and "Unused" not in output
    with pytest.raises(ValueError, match="eval_dataset"):
        LogCompletionsCallback(SimpleNamespace(eval_dataset=None))
