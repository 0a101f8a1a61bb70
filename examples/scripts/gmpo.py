# /// script
# dependencies = [
#     "trl",
# ]
# ///
"""GMPO (Geometric-Mean Policy Optimization, arXiv 2507.20673) on the tiny offline test model, with a rule reward
("prefer even token ids").

`python examples/scripts/gmpo.py` trains for a few steps on CPU, offline, and prints the logged reward. For a real
run, swap in a model, a prompt dataset and a reward of your own, e.g.:

```python
from datasets import load_dataset
from trl.rewards import accuracy_reward

trainer = GMPOTrainer(
    "Qwen/Qwen2.5-0.5B-Instruct",
    reward_funcs=accuracy_reward,
    args=GMPOConfig(output_dir="Qwen2.5-0.5B-GMPO", num_generations=8, max_completion_length=1024),
    train_dataset=load_dataset("trl-lib/DeepMath-103K", split="train"),
)
```

GMPOConfig takes every GRPOConfig field; `epsilon` (default 0.4) is a log-space clip range, so token ratios are
clipped to `(exp(-0.4), exp(0.4))` as in the paper.
"""

from trl.experimental.gmpo import GMPOConfig, GMPOTrainer
from trl.testing import get_tiny_model_path, load_test_dataset


def even_tokens(completion_ids, **kwargs):
    """Fraction of even token ids in each completion: a rule a tiny random model learns in a few steps."""
    return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]


if __name__ == "__main__":
    trainer = GMPOTrainer(
        model=get_tiny_model_path("qwen2"),
        reward_funcs=even_tokens,
        args=GMPOConfig(
            output_dir="tiny-GMPO",
            max_steps=10,
            per_device_train_batch_size=8,  # completions: 2 prompts × num_generations
            num_generations=4,
            max_completion_length=8,
            learning_rate=0.1,
            logging_steps=1,
            gradient_checkpointing=False,
            report_to="none",
            save_strategy="no",
        ),
        train_dataset=load_test_dataset("standard_prompt_only"),
    )
    trainer.train()
    print("reward per step:", [round(row["reward"], 3) for row in trainer.state.log_history if "reward" in row])
