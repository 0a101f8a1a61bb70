# /// script
# dependencies = [
#     "trl",
# ]
# ///
"""Agent training demo: a tiny model learns to answer sums with a calculator tool, offline on CPU.

1. **Before**: a tiny random model (`trl.testing`, hidden size 128) never calls the tool: 0% correct.
2. **SFT warm start** on synthetic tool-call traces (user question → `add` call → tool result → answer), kept short
   so the model calls the tool but still often copies the numbers or the result wrongly.
3. **GRPO with `tools=[add]`**: the model's turns are generated, its `<tool_call>` parsed, `add` run, the result
   appended as a `tool` message and generation continued; only the model's tokens are trained (`tool_mask`). The
   reward is a rule: 1 when the final answer holds the right sum.

The fraction of correct answers on 128 held-out sums (with the tool; greedy, and sampled at temperature 1) is printed
after each stage. One run of the defaults on a shared CPU (about 1 minute when the CPU is free):

| stage | greedy | sampled |
|---|---|---|
| before training | 0% | 0% |
| after the SFT warm start (200 steps) | 52% | 14% |
| after GRPO with the tool (40 steps) | 48% | 20% |

The SFT warm start is what teaches the tool format; 40 GRPO steps on 4 prompts each move the sampled accuracy by
a few points only (the training reward stays near 0.2), so treat this as a demonstration of the loop, not of
GRPO's gains. `--sft_steps 300` already gives about 100% greedy (84% sampled at temperature 0.7).

```bash
python examples/scripts/grpo_agent.py
python examples/scripts/grpo_agent.py --sft_steps 300 --grpo_steps 80
```
"""

import argparse
import random

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from trl.agent import ToolRunner, run_tool_loop, tool_schemas
from trl.generation.base import SamplingParams
from trl.generation.transformers_backend import TransformersBackend
from trl.testing import get_tiny_model_path


# A compact ChatML template with tool calls: the tiny tokenizer's own template lists the full JSON schemas in a long
# system turn (about 200 tokens), which makes every step several times slower on CPU. The calls are written, and
# parsed back, as ChatML `<tool_call>` JSON blocks.
COMPACT_TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools: "
    "{%- for tool in tools %} {{ (tool.function or tool).name }}{%- endfor %}<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}<|im_start|>assistant\n{{ message.content or '' }}"
    "{%- for tool_call in message.tool_calls or [] %}{%- set call = tool_call.function or tool_call %}"
    '<tool_call>\n{"name": "{{ call.name }}", "arguments": {{ call.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "<|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


def question(a: int, b: int) -> list[dict]:
    return [{"role": "user", "content": f"What is {a} + {b}?"}]


MAX_NUMBER = 9  # operands in [0, MAX_NUMBER]: few enough for the tiny model to learn to copy them into the call


def sums(count: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(0, MAX_NUMBER), rng.randint(0, MAX_NUMBER)) for _ in range(count)]


def sft_traces(count: int, seed: int) -> Dataset:
    """Conversations where the assistant calls `add` and reports its result."""
    rows = []
    for a, b in sums(count, seed):
        call = {"type": "function", "function": {"name": "add", "arguments": {"a": a, "b": b}}}
        messages = [
            *question(a, b),
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "add", "content": str(a + b)},
            {"role": "assistant", "content": f"The answer is {a + b}."},
        ]
        rows.append({"messages": messages, "tools": tool_schemas([add])})
    return Dataset.from_list(rows)


def correct_answer(completions, answer, **kwargs):
    """1.0 when the final assistant message holds the right sum."""
    return [
        float(f"answer is {target}" in completion[-1]["content"]) for completion, target in zip(completions, answer)
    ]


def accuracy(model, tokenizer, pairs: list[tuple[int, int]], temperature: float = 0.0) -> float:
    """Fraction of tool-using rollouts (greedy, or sampled at `temperature` with a fixed seed) whose final answer is
    the right sum."""
    torch.manual_seed(0)
    backend = TransformersBackend(
        model.eval(), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    schemas = tool_schemas([add])

    def generate(prompt_ids, num_generations, max_tokens):
        sampling = SamplingParams(n=num_generations, temperature=temperature, max_tokens=max_tokens)
        result = backend.generate(prompt_ids, sampling)
        return result.completion_ids, [reason == "length" for reason in result.finish_reasons], None

    prompts = [question(a, b) for a, b in pairs]
    prompt_ids = [
        tokenizer.apply_chat_template(p, tools=schemas, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        for p in prompts
    ]
    result = run_tool_loop(
        tokenizer, prompts, prompt_ids, generate, ToolRunner([add]), max_completion_length=64, max_iterations=2,
        eos_token_ids=[tokenizer.eos_token_id], schemas_per_rollout=[schemas] * len(prompts),
    )  # fmt: skip
    rewards = correct_answer(result.completions, [a + b for a, b in pairs])
    model.train()
    return sum(rewards) / len(rewards)


def report(stage: str, model, tokenizer, pairs) -> dict[str, float]:
    scores = {"greedy": accuracy(model, tokenizer, pairs), "sampled": accuracy(model, tokenizer, pairs, 1.0)}
    print(f"{stage}: {scores['greedy']:.0%} correct (greedy), {scores['sampled']:.0%} (sampled at temperature 1)")
    return scores


def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    path = get_tiny_model_path("qwen2", size="small")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = COMPACT_TOOL_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(path)
    held_out = sums(args.eval_size, seed=1234)
    scores = {"before": report("before training", model, tokenizer, held_out)}

    sft = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=f"{args.output_dir}/sft",
            max_steps=args.sft_steps,
            per_device_train_batch_size=16,
            learning_rate=3e-3,
            logging_steps=50,
            save_strategy="no",
            report_to="none",
            seed=0,
            gradient_checkpointing=False,
        ),  # fmt: skip
        train_dataset=sft_traces(2000, seed=0),
        processing_class=tokenizer,
    )
    sft.train()
    sft.save_model(f"{args.output_dir}/sft")  # GRPO starts from this checkpoint
    scores["after SFT"] = report("after the SFT warm start", sft.model, tokenizer, held_out)

    prompts = [{"prompt": question(a, b), "answer": a + b} for a, b in sums(512, seed=1)]
    grpo = GRPOTrainer(
        model=f"{args.output_dir}/sft",
        reward_funcs=correct_answer,
        args=GRPOConfig(
            output_dir=f"{args.output_dir}/grpo",
            max_steps=args.grpo_steps,
            per_device_train_batch_size=32,
            num_generations=8,
            max_completion_length=64,
            max_tool_calling_iterations=2,
            learning_rate=1e-4,
            beta=0.0,
            temperature=1.0,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            seed=0,
            gradient_checkpointing=False,
        ),  # fmt: skip
        train_dataset=Dataset.from_list(prompts),
        processing_class=tokenizer,
        tools=[add],
    )
    grpo.train()
    scores["after GRPO"] = report("after GRPO with the calculator tool", grpo.model, tokenizer, held_out)
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft_steps", type=int, default=200)
    parser.add_argument("--grpo_steps", type=int, default=40)
    parser.add_argument("--eval_size", type=int, default=128)
    parser.add_argument("--output_dir", default="tiny-grpo-agent")
    scores = main(parser.parse_args())
