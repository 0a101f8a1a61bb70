"""Writes the bundled test datasets (`trl/testing/data/datasets/`) deterministically.

Run `python trl/testing/data/make_datasets.py` after editing this file and commit its output. Every row is a simple
question whose correct answer can be checked by a rule (sums, word counts, animal legs, colours, capitals). Good
answers are short and fluent; rejected / negative answers repeat one nonsense word, so that even a tiny reward model
can learn to tell them apart.
"""

import json
import random
from pathlib import Path


OUTPUT_DIR = Path(__file__).resolve().parent / "datasets"
NUM_TRAIN, NUM_TEST = 48, 8
SEED = 0

LEGS = {"dog": 4, "cat": 4, "bird": 2, "spider": 8, "ant": 6, "horse": 4, "duck": 2, "fish": 0, "bee": 6, "cow": 4}
COLOURS = {
    "the sky": "blue",
    "grass": "green",
    "a banana": "yellow",
    "snow": "white",
    "a strawberry": "red",
    "coal": "black",
    "an orange": "orange",
    "a plum": "purple",
}
CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Japan": "Tokyo",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Peru": "Lima",
}
WORDS = ("apple", "tree", "sun", "river", "book", "stone", "cloud", "bread", "lamp", "door", "bird", "moon")
NONSENSE = ("zzz", "blorp", "qux", "glarb", "wug")
SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer in one short sentence.", "Be brief and correct.")


def make_question(rng: random.Random) -> tuple[str, str]:
    """Returns one `(question, answer sentence)` pair; the answer sentence has no leading space."""
    kind = rng.choice(("sum", "sum", "count", "legs", "colour", "capital"))
    if kind == "sum":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return f"What is {a} plus {b}?", f"The answer is {a + b}."
    if kind == "count":
        words = rng.sample(WORDS, rng.randint(2, 5))
        return f'How many words are in "{" ".join(words)}"?', f"The answer is {len(words)}."
    if kind == "legs":
        animal = rng.choice(sorted(LEGS))
        article = "an" if animal[0] in "aeiou" else "a"
        return f"How many legs does {article} {animal} have?", f"The answer is {LEGS[animal]}."
    if kind == "colour":
        thing = rng.choice(sorted(COLOURS))
        return f"What color is {thing}?", f"It is {COLOURS[thing]}."
    country = rng.choice(sorted(CAPITALS))
    return f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}."


def make_bad_answer(rng: random.Random) -> str:
    return " ".join([rng.choice(NONSENSE)] * rng.randint(3, 6)) + "."


def conversation_prefix(rng: random.Random, index: int) -> list[dict]:
    """Leading messages of a conversational prompt: an optional system turn and, every third row, an earlier exchange."""
    messages = []
    if index % 3 == 0:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    if index % 3 == 1:
        question, answer = make_question(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def paired_row(config: str, prompt, good, bad, index: int, text_key: str) -> dict:
    """A row of a `PAIRED_CONFIGS` format from a prompt and a good and a bad answer (strings or message lists); the
    language-modeling row holds `prompt + good` under `text_key`."""
    if config == "language_modeling":
        return {text_key: prompt + good}
    if config == "prompt_only":
        return {"prompt": prompt}
    if config == "prompt_completion":
        return {"prompt": prompt, "completion": good}
    if config == "preference":
        return {"prompt": prompt, "chosen": good, "rejected": bad}
    if config == "implicit_prompt_preference":
        return {"chosen": prompt + good, "rejected": prompt + bad}
    if config == "unpaired_preference":
        label = index % 2 == 0
        return {"prompt": prompt, "completion": good if label else bad, "label": label}
    raise ValueError(config)


def standard_rows(config: str, rng: random.Random, index: int) -> dict:
    question, answer = make_question(rng)
    good, bad = " " + answer, " " + make_bad_answer(rng)
    return paired_row(config, question, good, bad, index, "text")


def conversational_rows(config: str, rng: random.Random, index: int) -> dict:
    prefix = conversation_prefix(rng, index)
    question, answer = make_question(rng)
    good, bad = [assistant(answer)], [assistant(make_bad_answer(rng))]
    return paired_row(config, [*prefix, user(question)], good, bad, index, "messages")


def stepwise_row(rng: random.Random, index: int) -> dict:
    """Adds three numbers in steps; odd rows contain one wrong step, which and every later step are labelled False."""
    a, b, c = (rng.randint(1, 9) for _ in range(3))
    first, total = a + b, a + b + c
    wrong_step = None if index % 2 == 0 else rng.randint(0, 2)
    if wrong_step == 0:
        first += 1
    steps = [f"{a} plus {b} is {first}.", f"{first} plus {c} is {first + c}.", f"The answer is {first + c}."]
    if wrong_step == 1:
        steps[1:] = [f"{first} plus {c} is {first + c + 2}.", f"The answer is {first + c + 2}."]
    if wrong_step == 2:
        steps[2] = f"The answer is {total - 1}."
    labels = [wrong_step is None or step < wrong_step for step in range(3)]
    return {"prompt": f"What is {a} plus {b} plus {c}?", "completions": steps, "labels": labels}


TOOLS = {
    "add_numbers": (
        "Adds two integers.",
        {"a": ("integer", "The first number."), "b": ("integer", "The second number.")},
    ),
    "get_weather": ("Returns today's weather in a city.", {"city": ("string", "The city name.")}),
    "set_timer": ("Starts a timer.", {"minutes": ("integer", "Duration in minutes.")}),
}
WEATHER = ("sunny", "cloudy", "rainy", "windy")


def tool_schema(name: str) -> dict:
    description, parameters = TOOLS[name]
    properties = {key: {"type": kind, "description": text} for key, (kind, text) in parameters.items()}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": list(parameters)},
        },
    }


def tool_calling_row(rng: random.Random, index: int) -> dict:
    name = sorted(TOOLS)[index % len(TOOLS)]
    if name == "add_numbers":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        question, arguments, result, answer = (
            f"Add {a} and {b}.",
            {"a": a, "b": b},
            str(a + b),
            f"{a} plus {b} is {a + b}.",
        )
    elif name == "get_weather":
        city, weather = rng.choice(sorted(CAPITALS.values())), rng.choice(WEATHER)
        question, arguments, result, answer = (
            f"What is the weather like in {city}?",
            {"city": city},
            weather,
            f"It is {weather} in {city} today.",
        )
    else:
        minutes = rng.randint(1, 30)
        question, arguments, result = f"Set a timer for {minutes} minutes.", {"minutes": minutes}, "started"
        answer = f"Your {minutes} minute timer has started."
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    messages = [
        user(question),
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": name, "content": result},
        assistant(answer),
    ]
    # Offer a second, unused tool in every other row so the model has to pick.
    other = sorted(TOOLS)[(index + 1) % len(TOOLS)]
    tools = [tool_schema(name)] + ([tool_schema(other)] if index % 2 else [])
    return {"messages": messages, "tools": tools}


PAIRED_CONFIGS = (
    "language_modeling",
    "prompt_only",
    "prompt_completion",
    "preference",
    "implicit_prompt_preference",
    "unpaired_preference",
)


def build_configs() -> dict[str, list[dict]]:
    configs = {}
    num_rows = NUM_TRAIN + NUM_TEST
    for config in PAIRED_CONFIGS:
        # A seed per config keeps each file stable when another config's generator changes.
        rng = random.Random(f"{SEED}-standard-{config}")
        configs[f"standard_{config}"] = [standard_rows(config, rng, i) for i in range(num_rows)]
        rng = random.Random(f"{SEED}-conversational-{config}")
        configs[f"conversational_{config}"] = [conversational_rows(config, rng, i) for i in range(num_rows)]
    rng = random.Random(f"{SEED}-stepwise")
    configs["standard_stepwise_supervision"] = [stepwise_row(rng, i) for i in range(num_rows)]
    rng = random.Random(f"{SEED}-tool-calling")
    configs["conversational_tool_calling"] = [tool_calling_row(rng, i) for i in range(num_rows)]
    return configs


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


def readme(config_names: list[str]) -> str:
    lines = ["---", "configs:"]
    for name in config_names:
        lines += [f"- config_name: {name}", "  data_files:"]
        for split in ("train", "test"):
            lines += [f"  - split: {split}", f"    path: {name}/{split}.jsonl"]
    lines += [
        "---",
        "",
        "# trl testing datasets",
        "",
        "Tiny datasets in every TRL dataset format, generated by `../make_datasets.py` (do not edit by hand).",
        f"Each config has {NUM_TRAIN} train rows and {NUM_TEST} test rows. Load one offline with",
        '`datasets.load_dataset(trl.testing.get_dataset_path(), "standard_preference")`.',
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    configs = build_configs()
    for name, rows in configs.items():
        write_jsonl(OUTPUT_DIR / name / "train.jsonl", rows[:NUM_TRAIN])
        write_jsonl(OUTPUT_DIR / name / "test.jsonl", rows[NUM_TRAIN:])
    (OUTPUT_DIR / "README.md").write_text(readme(sorted(configs)), encoding="utf-8")


if __name__ == "__main__":
    main()
