"""Agent training: tool-call parsing, the tool runner, the multi-turn loop and its tool_mask, environments,
rollout_func, and GRPO training with tools, environments, rollout_func and streaming datasets on the tiny models."""

import asyncio
import contextlib
import time
import warnings

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
    in_header = parse_harmony(
        '<|start|>assistant to=functions.add<|channel|>commentary json<|message|>{"a": 1}<|call|>'
    )
    assert in_header.calls == [call("add", a=1)]
    assert parse_harmony("It is 15.").message["content"] == "It is 15."
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
        AgentRollout(Args(), tools=[add], rollout_func=lambda prompts, trainer: {})
    with pytest.raises(ValueError, match="list of Python functions"):
        AgentRollout(Args(), tools=["add"])
    agent = AgentRollout(Args(), tools=[add])
    with pytest.raises(ValueError, match="conversational prompts"):
        agent.prepare([{"prompt": "What is 2 + 3?"}])


# ------------------------------------------------------------------------------------- training end to end
class ScriptedFirstTurn:
    """Wraps a generation backend: the first turn of every other completion is a fixed text (a tool call the tiny
    random model would not write by itself); every other turn is sampled from the model."""

    def __init__(self, backend, tokenizer, text, every=2):
        self.backend, self.turn, self.every = backend, ids(tokenizer, text), every
        self.provides_logprobs = backend.provides_logprobs
        self.first_prompts = set()

    def generate(self, prompt_ids, sampling):
        result = self.backend.generate(prompt_ids, sampling)
        fresh = [tuple(p) not in self.first_prompts for p in prompt_ids]
        if sampling.n > 1 or all(fresh):  # a first turn: the prompts come straight from the dataset
            self.first_prompts.update(tuple(p) for p in prompt_ids)
            for index in range(0, len(result.completion_ids), self.every):
                result.completion_ids[index] = list(self.turn)
                result.finish_reasons[index] = "stop"
        return result

    def sync_weights(self, model):
        self.backend.sync_weights(model)

    def close(self):
        self.backend.close()


@contextlib.contextmanager
def quiet():
    """Silence the experimental warning (emitted once per process, see test_experimental_warning_once)."""
    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        yield


def test_experimental_warning_once(monkeypatch):
    from trl.agent import agent_rollout
    from trl.import_utils import TRLExperimentalWarning

    monkeypatch.setattr(agent_rollout, "_WARNED", set())
    with pytest.warns(TRLExperimentalWarning, match="`environment_factory` is experimental") as caught:
        agent_rollout.warn_experimental("environment_factory")
        agent_rollout.warn_experimental("environment_factory")
    assert len([w for w in caught if issubclass(w.category, TRLExperimentalWarning)]) == 1


def math_dataset(n=8):
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + 3?"}], "answer": str(a + 3)} for a in range(n)]
    return Dataset.from_list(rows)


def answer_reward(completions, answer, **kwargs):
    return [float(answer_ in completion[-1]["content"]) for completion, answer_ in zip(completions, answer)]


def agent_config(tmp_path, **overrides):
    from trl import GRPOConfig

    values = dict(
        output_dir=str(tmp_path / "out"), report_to="none", max_steps=2, per_device_train_batch_size=4,
        num_generations=4, max_completion_length=48, logging_steps=1, save_strategy="no", learning_rate=1e-2,
        seed=0, gradient_checkpointing=False,
    )  # fmt: skip
    values.update(overrides)
    return GRPOConfig(**values)


def scripted(trainer, text):
    trainer.rollout.backend = ScriptedFirstTurn(trainer.rollout.backend, trainer.processing_class, text)
    return trainer


def logged(trainer, key):
    return [row[key] for row in trainer.state.log_history if key in row]


def calculator_trainer(tmp_path, **overrides):
    from trl import GRPOTrainer
    from trl.testing import get_tiny_model_path

    with quiet():
        trainer = GRPOTrainer(
            get_tiny_model_path("qwen2"), reward_funcs=answer_reward, args=agent_config(tmp_path, **overrides),
            train_dataset=math_dataset(), tools=[add],
        )  # fmt: skip
    return scripted(trainer, '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>')


def test_calculator_tool_trains_and_only_model_tokens_are_trained(tmp_path):
    import torch

    trainer = calculator_trainer(tmp_path, beta=0.1, steps_per_generation=2, gradient_accumulation_steps=1)
    trainer.train()
    assert logged(trainer, "tools/call_frequency")[0] == pytest.approx(0.5)  # every other completion calls add
    assert logged(trainer, "tools/failure_frequency")[0] == 0.0 and "kl" in trainer.state.log_history[0]
    tokenizer = trainer.processing_class
    response_ids = ids(tokenizer, "<tool_response>\n5\n</tool_response>")
    reference = trainer.ref_model  # frozen: its log-probs can be recomputed after training
    checked = 0
    for part in trainer.rollout.buffer.slices:
        attention, tool_mask, mask = part["completion_attention_mask"], part["tool_mask"], part["completion_mask"]
        assert torch.equal(mask, attention * tool_mask)
        for row in range(mask.shape[0]):
            completion = part["completion_ids"][row][attention[row].bool()].tolist()
            trained = tool_mask[row][attention[row].bool()].tolist()
            text = tokenizer.decode(completion)
            if "<tool_response>" not in text:
                assert set(trained) == {1}
                continue
            start = next(i for i in range(len(completion)) if completion[i : i + len(response_ids)] == response_ids)
            assert trained[start : start + len(response_ids)] == [0] * len(response_ids)  # tool result: masked
            assert trained[0] == 1 and completion[: len(ids(tokenizer, "<tool_call>"))] == ids(
                tokenizer, "<tool_call>"
            )
            # The reference log-probs are those of the trained tokens given the whole sequence, tool results included.
            prompt = part["prompt_ids"][row][part["prompt_mask"][row].bool()].tolist()
            with torch.no_grad():
                logits = reference(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
            logps = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
            old = part["ref_logps"][row][attention[row].bool()]
            keep = torch.tensor(trained).bool()
            torch.testing.assert_close(old[keep], logps[keep], atol=1e-4, rtol=1e-4)
            checked += 1
    assert checked >= 1


def test_tool_errors_timeouts_and_malformed_calls_do_not_stop_training(tmp_path):
    from trl import GRPOTrainer
    from trl.testing import get_tiny_model_path

    with quiet():
        trainer = GRPOTrainer(
            get_tiny_model_path("qwen2"), reward_funcs=answer_reward, args=agent_config(tmp_path, max_steps=1, max_completion_length=128, log_completions=True),
            train_dataset=math_dataset(), tools=[explode, hang, as_object],
        )  # fmt: skip
    calls = "".join(
        f'<tool_call>\n{{"name": "{name}", "arguments": {{"x": 1}}}}\n</tool_call>'
        for name in ("explode", "hang", "as_object")
    )
    scripted(trainer, calls + "<|im_end|>")
    trainer.train()
    assert logged(trainer, "tools/call_frequency") == [1.5]  # 3 calls in every other completion
    assert logged(trainer, "tools/failure_frequency") == [pytest.approx(2 / 3)]  # raise + timeout; non-text is fine

    with quiet():
        trainer = GRPOTrainer(
            get_tiny_model_path("qwen2"), reward_funcs=answer_reward, args=agent_config(tmp_path, max_steps=1),
            train_dataset=math_dataset(), tools=[add],
        )  # fmt: skip
    scripted(trainer, '<tool_call>{"name": "add", "arguments": {"a": 2</tool_call><|im_end|>')
    trainer.train()
    assert logged(trainer, "tools/malformed_frequency") == [0.5] and logged(trainer, "tools/call_frequency") == [0.0]
    for part in trainer.rollout.buffer.slices:  # the malformed turn is trained as text
        assert torch_equal(part["completion_mask"], part["completion_attention_mask"])


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


class Game(GuessTheNumber):
    """Guess-the-number with a secret per row; the reward comes from the environment."""


def test_guess_the_number_environment_trains_without_reward_funcs(tmp_path):
    from datasets import Dataset

    from trl import GRPOTrainer
    from trl.testing import get_tiny_model_path

    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "Guess."}], "secret": s % 4} for s in range(8)]
    )
    with quiet():
        trainer = GRPOTrainer(
            get_tiny_model_path("qwen2"), args=agent_config(tmp_path), train_dataset=dataset, environment_factory=Game
        )  # fmt: skip
    scripted(trainer, '<tool_call>\n{"name": "guess", "arguments": {"number": 3}}\n</tool_call><|im_end|>')
    trainer.train()
    assert trainer.reward_scorer.names == ["Game"]
    rewards = logged(trainer, "rewards/Game/mean")
    assert len(rewards) == 2 and all(0.0 <= r <= 0.5 for r in rewards)
    assert logged(trainer, "environments/failed_rollouts") == [0, 0]
    pool = trainer.agent.environments
    assert len(pool.instances[None]) == 4  # one per rollout of the generation batch
    assert sum(env.guesses for env in pool.instances[None]) >= 1


def test_environment_failures_get_zero_advantage_and_are_counted(tmp_path):
    from trl import GRPOTrainer
    from trl.testing import get_tiny_model_path

    class Flaky(GuessTheNumber):
        def reset(self, **kwargs):
            raise RuntimeError("table unavailable")

    with quiet():
        trainer = GRPOTrainer(
            get_tiny_model_path("qwen2"), args=agent_config(tmp_path, max_steps=1), environment_factory=Flaky,
            reward_funcs=lambda completions, **kw: [1.0] * len(completions),
        )  # fmt: skip
    with pytest.warns(UserWarning, match=r"Flaky.reset\(\) raised RuntimeError: table unavailable"):
        trainer.train()  # no train_dataset: reset() would supply the prompts; every rollout fails
    assert logged(trainer, "environments/failed_rollouts") == [4]
    for part in trainer.rollout.buffer.slices:
        assert part["advantages"].abs().sum() == 0 and part["completion_mask"].sum() == 0


def test_rloo_trains_with_the_calculator_tool_on_a_stream(tmp_path):
    from trl import RLOOConfig, RLOOTrainer
    from trl.testing import get_tiny_model_path

    args = RLOOConfig(
        output_dir=str(tmp_path / "rloo"), report_to="none", max_steps=1, per_device_train_batch_size=4,
        num_generations=4, max_completion_length=48, logging_steps=1, save_strategy="no", seed=0,
        gradient_checkpointing=False, beta=0.05,
    )  # fmt: skip
    with quiet():
        trainer = RLOOTrainer(
            get_tiny_model_path("qwen2"), reward_funcs=answer_reward, args=args,
            train_dataset=math_dataset().to_iterable_dataset(), tools=[add],  # streaming, too
        )  # fmt: skip
    scripted(trainer, '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>')
    trainer.train()
    assert logged(trainer, "tools/call_frequency") == [0.5] and "kl" in trainer.state.log_history[0]
    part = trainer.rollout.buffer.slices[0]
    assert torch_equal(part["completion_mask"], part["completion_attention_mask"] * part["tool_mask"])


# ------------------------------------------------------------------------------------------- rollout_func
def test_rollout_func_trains_and_its_fields_reach_the_rewards(tmp_path):
    from trl import GRPOTrainer
    from trl.testing import get_tiny_model_path, load_test_dataset

    seen = []

    def rollout_func(prompts, trainer):
        tokenizer = trainer.processing_class
        prompt_ids = [tokenizer(prompt)["input_ids"] for prompt in prompts]
        completion_ids = [ids(tokenizer, " one two") + [tokenizer.eos_token_id] for _ in prompts]
        return {
            "prompt_ids": prompt_ids, "completion_ids": completion_ids,
            "logprobs": [[-1.0] * len(c) for c in completion_ids], "judge_score": list(range(len(prompts))),
        }  # fmt: skip

    def score(completions, judge_score, **kwargs):
        seen.append(list(completions))
        return [float(value) for value in judge_score]

    with quiet():
        trainer = GRPOTrainer(
            get_tiny_model_path("qwen2"), reward_funcs=score, args=agent_config(tmp_path),
            train_dataset=load_test_dataset("standard_prompt_only"), rollout_func=rollout_func,
        )  # fmt: skip
    trainer.train()
    assert seen and all(completion == " one two" for completion in seen[0])
    assert logged(trainer, "rewards/score/mean") == [1.5, 1.5]  # 0..3 in each group of 4
    assert all(row["loss"] == row["loss"] for row in trainer.state.log_history if "loss" in row)  # finite

    def bad(prompts, trainer):
        return {"prompt_ids": [[1]], "completion_ids": [[2]]}

    with quiet():
        trainer = GRPOTrainer(
            get_tiny_model_path("qwen2"), reward_funcs=score, args=agent_config(tmp_path, max_steps=1),
            train_dataset=load_test_dataset("standard_prompt_only"), rollout_func=bad,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"one entry per prompt \(4\), got 1"):
        trainer.train()


# ---------------------------------------------------------------------------------------------- streaming
def test_repeated_stream_follows_the_sampler_order_and_reshuffles_each_epoch():
    from datasets import Dataset

    from trl.trainer.rollout_utils import RolloutSampler
    from trl.trainer.streaming import RepeatedStream

    rows = [{"i": i} for i in range(6)]
    stream = iter(RepeatedStream(rows, mini_repeat_count=2, batch_size=3, repeat_count=2))
    first = [next(stream)["i"] for _ in range(48)]
    sampler = list(RolloutSampler(rows, mini_repeat_count=2, batch_size=3, repeat_count=2, shuffle=False))
    assert first == sampler + sampler  # the second epoch starts over
    shuffled = Dataset.from_list([{"i": i} for i in range(64)]).to_iterable_dataset().shuffle(seed=0, buffer_size=64)
    stream = iter(RepeatedStream(shuffled, mini_repeat_count=1, batch_size=64, repeat_count=1))
    epochs = [[next(stream)["i"] for _ in range(64)] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(64)) and epochs[0] != epochs[1]


def streaming_trainer(tmp_path, seen, **overrides):
    from trl import GRPOTrainer
    from trl.testing import get_tiny_model_path, load_test_dataset

    def count(prompts, completion_ids, **kwargs):
        seen.append(prompts[0])
        return [sum(t % 2 == 0 for t in row) / max(len(row), 1) for row in completion_ids]

    stream = load_test_dataset("standard_prompt_only").to_iterable_dataset()
    args = agent_config(tmp_path, max_completion_length=8, **overrides)
    return GRPOTrainer(get_tiny_model_path("qwen2"), reward_funcs=count, args=args, train_dataset=stream)


def test_streaming_dataset_trains_and_resumes_exactly(tmp_path):
    from datasets import Dataset

    from trl import GRPOConfig, GRPOTrainer
    from trl.testing import get_tiny_model_path

    with pytest.raises(ValueError, match="set max_steps"):
        GRPOTrainer(
            get_tiny_model_path("qwen2"), reward_funcs=answer_reward, train_dataset=math_dataset().to_iterable_dataset(),
            args=GRPOConfig(output_dir=str(tmp_path / "x"), report_to="none", num_generations=4, per_device_train_batch_size=4),
        )  # fmt: skip
    assert isinstance(math_dataset(), Dataset)
    full_seen, resumed_seen = [], []
    full = streaming_trainer(tmp_path / "full", full_seen, max_steps=4, save_strategy="steps", save_steps=2)
    full.train()
    resumed = streaming_trainer(tmp_path / "resumed", resumed_seen, max_steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "out" / "checkpoint-2"))
    assert resumed_seen == full_seen[2:]  # the stream continues where the interrupted run was

    def history(trainer):  # the resumed state holds the first two steps' logs, read from the checkpoint
        return [(row["step"], row["loss"], row["reward"]) for row in trainer.state.log_history if "loss" in row]

    assert len(history(full)) == 4 and history(resumed) == history(full)


def test_paged_generation_names_the_fix():
    from trl import GRPOConfig

    with (
        pytest.raises(ValueError, match="Leave it False"),
        pytest.warns(FutureWarning, match="use_transformers_paged"),
    ):
        GRPOConfig(output_dir="unused", report_to="none", use_transformers_paged=True)


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_names_import_tools_and_environments(tmp_path, monkeypatch):
    from trl.agent.cli import agent_trainer_kwargs, import_object, split_names

    assert split_names("a:f, b:g") == split_names(["a:f", "b:g"]) == split_names(["a:f,b:g"]) == ["a:f", "b:g"]
    (tmp_path / "my_agent_tools.py").write_text(
        "def add(a: int, b: int) -> int:\n    '''Add.\n\n    Args:\n        a: A.\n        b: B.\n    '''\n"
        "    return a + b\n\n\nclass Env:\n    def reset(self, **kwargs):\n        return None\n\n\nVALUE = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    kwargs = agent_trainer_kwargs("my_agent_tools:add", "my_agent_tools:Env")
    assert [tool.__name__ for tool in kwargs["tools"]] == ["add"] and kwargs["environment_factory"].__name__ == "Env"
    assert import_object("my_agent_tools.add", "tool")(2, 3) == 5
    assert agent_trainer_kwargs(None, None) == {}
    with pytest.raises(ValueError, match="no module named 'missing_module'"):
        import_object("missing_module:add", "tool")
    with pytest.raises(ValueError, match="has no attribute 'mul'"):
        import_object("my_agent_tools:mul", "tool")
    with pytest.raises(ValueError, match="not functions"):
        agent_trainer_kwargs("my_agent_tools:VALUE", None)
