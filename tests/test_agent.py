"""Agent training: tool-call parsing, the tool runner, the multi-turn loop and its tool_mask, environments,
rollout_func, and GRPO training with tools, environments, rollout_func and streaming datasets on the tiny models."""

import asyncio
import time

import pytest

from trl.agent import (
    AgentRollout,
    EnvironmentPool,
    ToolRunner,
    environment_tools,
    format_tool_result,
    parse_harmony,
    parse_turn,
    run_tool_loop,
    tool_schemas,
    tool_timeout,
    validate_rollout_output,
)
from trl.testing.tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def chatml():
    return build_tiny_tokenizer("chatml")


@pytest.fixture(scope="module")
def llama3():
    return build_tiny_tokenizer("llama3")


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


async def slow_echo(text: str) -> str:
    """Echo a text after a short wait.

    Args:
        text: What to echo.
    """
    await asyncio.sleep(0.3)
    return text


def explode(x: int) -> str:
    """Always fails.

    Args:
        x: Anything.
    """
    raise RuntimeError(f"boom {x}")


@tool_timeout(0.2)
def hang(x: int) -> str:
    """Sleeps past its timeout.

    Args:
        x: Anything.
    """
    time.sleep(1.5)
    return "late"


def as_object(x: int) -> dict:
    """Returns a dict and not text.

    Args:
        x: Anything.
    """
    return {"value": x, "items": [1, 2]}


def call(name, **arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# --------------------------------------------------------------------------------------------------- parsing
def test_schemas_come_from_type_hints_and_docstrings():
    (schema,) = tool_schemas([add])
    assert schema["function"]["name"] == "add"
    assert schema["function"]["parameters"]["properties"]["a"] == {
        "type": "integer",
        "description": "The first integer.",
    }

    def undocumented(a):
        return a

    with pytest.raises(ValueError, match="type hints for every argument"):
        tool_schemas([undocumented])


def test_parse_qwen_llama3_and_harmony_calls(chatml, llama3):
    turn = parse_turn(
        chatml, ids(chatml, '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>')
    )
    assert turn.calls == [call("add", a=2, b=3)] and turn.malformed == 0
    turn = parse_turn(llama3, ids(llama3, '{"name": "add", "parameters": {"a": 1, "b": 4}}<|eot_id|>'))
    assert turn.calls == [call("add", a=1, b=4)] and turn.malformed == 0
    harmony = parse_harmony(
        "<|channel|>analysis<|message|>I should add.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.add <|constrain|>json<|message|>{"a": 7, "b": 8}<|call|>'
    )
    assert harmony.calls == [call("add", a=7, b=8)] and harmony.message["content"] == ""
    final = parse_harmony("<|channel|>final<|message|>It is 15.<|return|>")
    assert final.calls == [] and final.message["content"] == "It is 15."
    broken = parse_harmony("<|channel|>commentary to=functions.add <|constrain|>json<|message|>{oops<|call|>")
    assert broken.calls == [] and broken.malformed == 1


def test_malformed_calls_are_counted_and_kept_as_text(chatml, llama3):
    turn = parse_turn(chatml, ids(chatml, 'ok <tool_call>{"name": "add", "arguments": {"a": 2</tool_call><|im_end|>'))
    assert turn.calls == [] and turn.malformed == 1 and "<tool_call>" in turn.message["content"]
    plain = parse_turn(chatml, ids(chatml, "The answer is 5<|im_end|>"))
    assert plain.calls == [] and plain.malformed == 0 and plain.message["content"] == "The answer is 5"
    bad_json = parse_turn(llama3, ids(llama3, '{"name": "add", "parameters": {"a": <|eot_id|>'))
    assert bad_json.calls == [] and bad_json.malformed == 1


# ---------------------------------------------------------------------------------------------- tool runner
def test_runner_handles_errors_timeouts_non_text_and_unknown_tools():
    runner = ToolRunner([add, explode, hang, as_object])
    start = time.perf_counter()
    [results] = runner.run(
        [[call("add", a=2, b=3), call("explode", x=1), call("hang", x=0), call("as_object", x=4), call("nope"),
          {"function": {"name": "add", "arguments": "a=1"}}]]
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    assert [r.content for r in results[:2]] == ["5", "Error: RuntimeError: boom 1"]
    assert results[2].content == "Error: tool 'hang' timed out after 0.2 s." and results[2].failed
    assert results[3].content == '{"value": 4, "items": [1, 2]}' and not results[3].failed
    assert results[4].failed and "unknown tool 'nope'" in results[4].content
    assert results[5].failed and "must be a JSON object" in results[5].content
    assert [r.failed for r in results] == [False, True, True, False, True, True]
    assert elapsed < 1.0  # the hanging call was abandoned at its timeout
    assert format_tool_result(None) == "" and format_tool_result(object).startswith("<class")


def test_async_tools_of_a_batch_run_concurrently():
    runner = ToolRunner([slow_echo, add])
    start = time.perf_counter()
    results = runner.run([[call("slow_echo", text="a")], [call("slow_echo", text="b"), call("add", a=1, b=1)]])
    assert time.perf_counter() - start < 0.55  # three calls, two of them 0.3 s waits, run together
    assert [[r.content for r in row] for row in results] == [["a"], ["b", "2"]]


# ---------------------------------------------------------------------------------------------- tool loop
TOOL_TURN = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>'
ANSWER_TURN = "The answer is 5<|im_end|>"
PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


class ScriptedGenerate:
    """Plays fixed turns: the k-th call answers every prompt with `turns[k]`; records what it was given."""

    def __init__(self, tokenizer, *turns):
        self.turns = [ids(tokenizer, turn) for turn in turns]
        self.calls = []

    def __call__(self, prompt_ids, num_generations, max_tokens):
        self.calls.append((prompt_ids, num_generations, max_tokens))
        turn = self.turns[min(len(self.calls) - 1, len(self.turns) - 1)]
        count = len(prompt_ids) * (num_generations if len(self.calls) == 1 else 1)
        return [turn[:max_tokens] for _ in range(count)], [len(turn) > max_tokens] * count, None


def render(tokenizer, messages, generation):
    return tokenizer.apply_chat_template(
        messages, tools=tool_schemas([add]), add_generation_prompt=generation, tokenize=False
    )


def test_tool_mask_marks_exactly_the_model_tokens(chatml):
    prompt_ids = ids(chatml, render(chatml, PROMPT, True))
    generate = ScriptedGenerate(chatml, TOOL_TURN, ANSWER_TURN)
    result = run_tool_loop(
        chatml, [PROMPT, PROMPT], [prompt_ids, prompt_ids], generate, ToolRunner([add]), num_generations=2,
        max_completion_length=200, eos_token_ids=[chatml.eos_token_id], schemas_per_rollout=[tool_schemas([add])] * 2,
    )  # fmt: skip
    tool_ids, answer_ids = ids(chatml, TOOL_TURN), ids(chatml, ANSWER_TURN)
    glue = ids(chatml, "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    for completion, mask in zip(result.completion_ids, result.tool_mask, strict=True):
        assert completion == tool_ids + glue + answer_ids
        assert mask == [1] * len(tool_ids) + [0] * len(glue) + [1] * len(answer_ids)
        for token, flag in zip(completion, mask, strict=True):  # token by token: glue tokens are never the model's
            assert flag == (token in tool_ids or token in answer_ids) or token in glue
    # The trained sequence is the template's rendering of the whole conversation, token for token.
    conversation = PROMPT + result.completions[0]
    assert prompt_ids + result.completion_ids[0] == ids(chatml, render(chatml, conversation, False).rstrip("\n"))
    assert [m["role"] for m in result.completions[0]] == ["assistant", "tool", "assistant"]
    assert result.completions[0][1] == {"role": "tool", "name": "add", "content": "5"}
    # The first turn is generated per group, the second from prompt + completion so far, with the budget left.
    assert generate.calls[0][1] == 2 and generate.calls[1][0][0] == prompt_ids + tool_ids + glue
    assert generate.calls[1][2] == 200 - len(tool_ids) - len(glue)
    assert (result.tool_calls, result.tool_failures, result.malformed, result.iterations) == (2, 0, 0, [1, 1])
    assert result.truncated == [False, False]


def test_llama3_glue_and_iteration_limit(llama3):
    tool_turn = '{"name": "add", "parameters": {"a": 2, "b": 3}}<|eot_id|>'
    prompt_ids = ids(llama3, render(llama3, PROMPT, True))
    result = run_tool_loop(
        llama3, [PROMPT], [prompt_ids], ScriptedGenerate(llama3, tool_turn), ToolRunner([add]),
        max_completion_length=300, max_iterations=2, eos_token_ids=[llama3.eos_token_id],
        schemas_per_rollout=[tool_schemas([add])],
    )  # fmt: skip
    turn = ids(llama3, tool_turn)
    glue = ids(
        llama3,
        "<|start_header_id|>ipython<|end_header_id|>\n\n5<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    )
    assert result.completion_ids[0] == turn + glue + turn + glue + turn  # stops after 2 tool rounds
    assert result.tool_mask[0] == [1] * len(turn) + [0] * len(glue) + [1] * len(turn) + [0] * len(glue) + [1] * len(
        turn
    )
    assert result.iterations == [2] and result.tool_calls == 2


def test_budget_truncates_and_malformed_calls_train_as_text(chatml):
    prompt_ids = ids(chatml, render(chatml, PROMPT, True))
    tool_ids = ids(chatml, TOOL_TURN)
    short = run_tool_loop(
        chatml, [PROMPT], [prompt_ids], ScriptedGenerate(chatml, TOOL_TURN, ANSWER_TURN), ToolRunner([add]),
        max_completion_length=len(tool_ids) + 3, eos_token_ids=[chatml.eos_token_id],
    )  # fmt: skip
    assert len(short.completion_ids[0]) == len(tool_ids) + 3 and short.truncated == [True]
    assert short.tool_mask[0] == [1] * len(tool_ids) + [0, 0, 0]
    malformed = '<tool_call>{"name": "add", "arguments": {"a": 2</tool_call><|im_end|>'
    result = run_tool_loop(
        chatml, [PROMPT], [prompt_ids], ScriptedGenerate(chatml, malformed), ToolRunner([add]),
        max_completion_length=100, eos_token_ids=[chatml.eos_token_id],
    )  # fmt: skip
    assert result.completion_ids[0] == ids(chatml, malformed) and result.tool_mask[0] == [1] * len(
        result.completion_ids[0]
    )
    assert (result.malformed, result.tool_calls) == (1, 0)


# ------------------------------------------------------------------------------------------- environments
class GuessTheNumber:
    """Find a secret number with `guess`; the reward is 1 when found."""

    def __init__(self):
        self.secret, self.found, self.guesses = None, False, 0

    def reset(self, secret: int = 3, **kwargs) -> str:
        self.secret, self.found, self.guesses = int(secret), False, 0
        return "I picked a number between 0 and 9."

    def guess(self, number: int) -> str:
        """Guess the secret number.

        Args:
            number: Your guess.
        """
        self.guesses += 1
        self.found = number == self.secret
        return "correct" if self.found else ("higher" if number < self.secret else "lower")

    def get_reward(self) -> float:
        return 1.0 if self.found else 0.0

    def _helper(self):
        return None


def test_environment_pool_resets_one_instance_per_rollout_and_exposes_public_methods():
    pool = EnvironmentPool(GuessTheNumber)
    assert [tool.__name__ for tool in environment_tools(pool.instances[None][0])] == ["guess"]
    rows = [{"prompt": [{"role": "user", "content": "Play."}], "secret": s} for s in (1, 2, 3)]
    started, envs = pool.start(rows)
    assert len({id(env) for env in envs}) == 3 and [env.secret for env in envs] == [1, 2, 3]
    assert started[0]["prompt"][-1]["content"] == "Play.\n\nI picked a number between 0 and 9."
    assert [schema["function"]["name"] for schema in started[0]["tools"]] == ["guess"]
    assert rows[0]["prompt"][-1]["content"] == "Play."  # the dataset rows are not modified
    envs[1].guess(2)
    reward = pool.reward_function(None)
    assert reward.__name__ == "GuessTheNumber" and reward(environments=envs) == [0.0, 1.0, 0.0]
    _, again = pool.start(rows[:2])
    assert again == envs[:2] and not again[1].found  # reused and reset between rollouts


def test_environment_failures_fail_the_rollout():
    class Broken(GuessTheNumber):
        def reset(self, secret: int = 3, **kwargs):
            if secret == 2:
                raise RuntimeError("no table")
            return super().reset(secret)

        def get_reward(self):
            if self.secret == 3:
                raise ValueError("lost")
            return 0.5

    pool = EnvironmentPool(Broken)
    rows = [{"prompt": [{"role": "user", "content": "Play."}], "secret": s} for s in (1, 2, 3)]
    with pytest.warns(UserWarning, match="counts as failed"):
        _, envs = pool.start(rows)
        rewards = pool.reward_function(None)(environments=envs)
    assert rewards == [0.5, None, None] and pool.failed_rows(envs) == [False, True, True] and pool.failures == 2


def test_environment_dict_selects_by_column():
    class Other(GuessTheNumber):
        pass

    pool = EnvironmentPool({"a": GuessTheNumber, "b": Other})
    rows = [{"prompt": [{"role": "user", "content": ""}], "environment": name} for name in ("a", "b", "b")]
    _, envs = pool.start(rows)
    assert [type(env).__name__ for env in envs] == ["GuessTheNumber", "Other", "Other"]
    with pytest.raises(ValueError, match="an `environment` column"):
        pool.start([{"prompt": "x", "environment": "c"}])


# ------------------------------------------------------------------------------------------- rollout_func
def test_rollout_func_output_is_validated():
    good = {"prompt_ids": [[1, 2]], "completion_ids": [[3, 4, 5]], "logprobs": [[-1.0, -2.0, -3.0]], "score": [1]}
    assert validate_rollout_output(good, 1, 2)["completion_ids"] == [[3, 4]]
    with pytest.raises(ValueError, match="must return a dict"):
        validate_rollout_output([[1]], 1, 8)
    with pytest.raises(ValueError, match="no 'completion_ids'"):
        validate_rollout_output({"prompt_ids": [[1]]}, 1, 8)
    with pytest.raises(ValueError, match=r"one entry per prompt \(2\), got 1"):
        validate_rollout_output({"prompt_ids": [[1]], "completion_ids": [[1]]}, 2, 8)
    with pytest.raises(ValueError, match="one value per completion token"):
        validate_rollout_output({"prompt_ids": [[1]], "completion_ids": [[1, 2]], "logprobs": [[0.0]]}, 1, 8)
    with pytest.raises(ValueError, match="list of token ids"):
        validate_rollout_output({"prompt_ids": [["a"]], "completion_ids": [[1]]}, 1, 8)


def test_agent_rollout_rejects_bad_combinations(chatml):
    class Args:
        max_completion_length, max_tool_calling_iterations, chat_template_kwargs = 8, None, None

    with pytest.raises(ValueError, match="cannot be combined"):
        AgentRollout(Args(), chatml, tools=[add], rollout_func=lambda prompts, trainer: {})
    with pytest.raises(ValueError, match="list of Python functions"):
        AgentRollout(Args(), chatml, tools=["add"])
    agent = AgentRollout(Args(), chatml, tools=[add])
    with pytest.raises(ValueError, match="conversational prompts"):
        agent.prepare([{"prompt": "What is 2 + 3?"}])
