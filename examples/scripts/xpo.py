# /// script
# dependencies = [
#     "trl",
# ]
# ///
"""XPO on the tiny offline test model, scored by a reward function ("more even token ids is better").

`python examples/scripts/xpo.py` trains for a few steps on CPU, offline. A judge (`judge=...`, e.g.
`trl.judges.PairRMJudge()`) or a reward model (`reward_funcs="path/or/id"`) takes the reward function's place.
"""

from trl import XPOConfig, XPOTrainer
from trl.testing import get_tiny_model_path, load_test_dataset


def even_share(completions, **kwargs):
    return [sum(ord(ch) % 2 == 0 for ch in text) / max(len(text), 1) for text in completions]


if __name__ == "__main__":
    trainer = XPOTrainer(
        model=get_tiny_model_path("qwen2"),
        reward_funcs=even_share,
        args=XPOConfig(
            output_dir="tiny-XPOTrainer",
            max_steps=10,
            per_device_train_batch_size=4,  # prompts; each one is sampled as a pair
            max_new_tokens=8,
            alpha=1e-5,  # weight of the exploration bonus on the reference samples
            learning_rate=1e-2,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
        ),  # fmt: skip
        train_dataset=load_test_dataset("standard_prompt_only"),
    )
    trainer.train()
