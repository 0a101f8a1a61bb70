"""Tests of the reference reward functions in `trl.rewards`, on hand-written completions with exact rewards.

`math_verify` is not a test dependency: the accuracy rewards are tested with a fake verifier that compares the
content of the last `\\boxed{}` with the gold string, which exercises everything but the symbolic comparison.
"""

import math
import pickle
import re

import pytest

from trl.import_utils import is_math_verify_available
from trl.rewards import (
    accuracy_reward,
    accuracy_rewards,
    completion_text,
    get_cosine_scaled_reward,
    get_repetition_penalty_reward,
    get_soft_overlong_punishment,
    reasoning_accuracy_reward,
    think_format_reward,
)


def conversational(text):
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------------------- completion text


def test_completion_text_formats():
    assert completion_text("plain") == "plain"
    assert completion_text(conversational("hi")) == "hi"
    tool_turns = [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": [{"type": "text", "text": "The answer"}, {"type": "text", "text": " is 42"}]},
    ]
    assert completion_text(tool_turns) == "The answer is 42"
    assert completion_text([]) == ""


# ------------------------------------------------------------------------------------------------------ format


def test_think_format_reward():
    completions = [
        "<think>\nreasoning\n</think>\nanswer",  # valid
        "<think>\nreasoning\nanswer",  # never closed
        "answer <think>late</think>",  # does not start with <think>
        "<think>a<think>b</think></think>",  # nested
        "<think></think>",  # empty reasoning, nothing after: still the format
        "<think>one</think> then <think>two</think>",  # a second block reopens <think>
    ]
    assert think_format_reward(completions) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert think_format_reward([conversational("<think>x</think>y"), conversational("y")]) == [1.0, 0.0]


# ------------------------------------------------------------------------------------------------ other rewards


def test_soft_overlong_punishment():
    """L_max = 100, L_cache = 20: ≤ 80 → 0; 90 → (80 − 90)/20 = −0.5; 100 → −1; 101 → −1 (beyond)."""
    reward = get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=20)
    lengths = [10, 80, 81, 90, 100, 101]
    assert reward(completion_ids=[[0] * n for n in lengths]) == [0.0, 0.0, -0.05, -0.5, -1.0, -1.0]
    assert reward.__name__ == "soft_overlong_punishment_reward"
    assert pickle.loads(pickle.dumps(reward))(completion_ids=[[0] * 90]) == [-0.5]
    hard = get_soft_overlong_punishment(max_completion_len=5, soft_punish_cache=0)
    assert hard(completion_ids=[[0] * 5, [0] * 6]) == [0.0, -1.0]
    with pytest.raises(ValueError, match="soft_punish_cache"):
        get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=20)


def test_repetition_penalty_reward_over_token_ids():
    """The reference's example: bigrams of [1, 2, 3, 4] are all distinct → 0; [5, 5, 5, 5, 5] has 1 distinct of 4
    → −1·(1 − 1/4) = −0.75. Trigrams of [7, 8, 9, 7, 8, 9]: 3 distinct of 4 → −0.5·0.25 = −0.125. Fewer ids than n
    → 0."""
    reward = get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0)
    assert reward([[1, 2, 3, 4], [5, 5, 5, 5, 5], [], [3]]) == pytest.approx([0.0, -0.75, 0.0, 0.0])
    assert get_repetition_penalty_reward(3, -0.5)([[7, 8, 9, 7, 8, 9]]) == pytest.approx([-0.125])
    assert reward.__name__ == "repetition_penalty_reward"
    with pytest.raises(ValueError, match="max_penalty"):
        get_repetition_penalty_reward(max_penalty=0.5)


def test_repetition_penalty_reward_takes_the_trainers_keywords():
    """The trainers call every reward with keywords; this one reads `completion_ids` (lists or tensor rows)."""
    import torch

    reward = get_repetition_penalty_reward(ngram_size=2)
    scores = reward(prompts=["p"], completions=["a a a"], completion_ids=[torch.tensor([5, 5, 5, 5, 5])])
    assert scores == pytest.approx([-0.75])
    with pytest.raises(TypeError, match="completion_ids"):
        reward(["a b a b"])  # texts are not token ids


# --------------------------------------------------------------------------------------------------- accuracy


BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


def fake_verifier(caller):
    """Gold parses unless it contains "???"; the answer is the content of the first \\boxed{}; equal strings match."""
    return accuracy_rewards._MathVerifier(
        parse_gold=lambda text: [] if "???" in text else [text.strip()],
        parse_answer=lambda text: BOXED.findall(text)[:1],
        verify=lambda gold, answer: bool(answer) and gold[0] == answer[0],
    )


@pytest.fixture
def fake_math_verify(monkeypatch):
    monkeypatch.setattr(accuracy_rewards, "_load_math_verifier", fake_verifier)


def test_accuracy_reward(fake_math_verify):
    """Correct, wrong, no LaTeX answer (0.0), and an unparseable gold (None: skipped)."""
    completions = [
        conversational(r"So the answer is \boxed{\frac{1}{3}}"),
        conversational(r"So the answer is \boxed{\frac{1}{2}}"),
        conversational("one third"),
        conversational(r"\boxed{7}"),
    ]
    solutions = [r"\frac{1}{3}", r"\frac{1}{3}", r"\frac{1}{3}", "???"]
    logged = {}
    rewards = accuracy_reward(completions, solutions, log_extra=lambda name, values: logged.update({name: values}))
    assert rewards == [1.0, 0.0, 0.0, None]
    assert logged["solution"] == solutions
    assert logged["gold_parsed"][3] == "[unparseable]" and logged["answer_parsed"][2] == "[unparseable]"
    assert accuracy_reward([r"\boxed{2}"], ["2"], prompts=["1+1?"], trainer_state=None) == [1.0]
    with pytest.raises(ValueError, match="one solution each"):
        accuracy_reward([r"\boxed{2}"], ["2", "3"])


def test_reasoning_accuracy_reward(fake_math_verify):
    """Only the text after the last `</think>` counts; unfinished reasoning scores 0.0 even with a right box."""
    completions = [
        r"<think>maybe \boxed{2}</think> The answer is \boxed{\frac{1}{3}}",
        r"<think>maybe \boxed{\frac{1}{3}}</think> The answer is \boxed{2}",
        r"<think>reasoning with \boxed{\frac{1}{3}} but no end",
        r"<think>a</think> b </think> \boxed{\frac{1}{3}}",
    ]
    assert reasoning_accuracy_reward(completions, [r"\frac{1}{3}"] * 4) == [1.0, 0.0, 0.0, 1.0]
    custom = reasoning_accuracy_reward([r"[END] \boxed{5}"], ["5"], reasoning_delimiters=["</think>", "[END]"])
    assert custom == [1.0]
    assert reasoning_accuracy_reward([r"<think>x</think>\boxed{5}"], ["???"]) == [None]


def test_cosine_scaled_reward(fake_math_verify):
    """max_len 100. Length 50: cos(π/2) = 0 → correct 0.5 + 0.5·0.5 = 0.75, wrong −0.5 − 0.5·0.5 = −0.75.
    Length 0: correct 1.0, wrong −1.0. Length 25: weight (1 + cos(π/4))/2. Beyond max_len: clamped to the end."""
    reward = get_cosine_scaled_reward(max_len=100)
    completions = [r"\boxed{1}", r"\boxed{2}", r"\boxed{1}", r"\boxed{2}", r"\boxed{1}", r"\boxed{1}", r"\boxed{1}"]
    lengths = [50, 50, 0, 0, 25, 300, 1]
    solutions = ["1"] * 6 + ["???"]
    rewards = reward(completions, solutions, [[0] * n for n in lengths])
    weight = (1 + math.cos(math.pi / 4)) / 2
    assert rewards[:6] == pytest.approx([0.75, -0.75, 1.0, -1.0, 0.5 + 0.5 * weight, 0.5])
    assert rewards[6] is None
    assert reward.__name__ == "cosine_scaled_reward"


@pytest.mark.skipif(is_math_verify_available(), reason="math_verify is installed")
def test_accuracy_rewards_name_the_install_command_without_math_verify():
    for reward in (accuracy_reward, reasoning_accuracy_reward):
        with pytest.raises(ImportError, match=re.escape("pip install 'trl[math_verify]'")):
            reward([r"\boxed{1}"], ["1"])
