# /// script
# dependencies = [
#     "trl",
# ]
# ///
"""Online DPO on the tiny offline test model, judged by a rule ("prefer completions with more even token ids").

`python examples/scripts/online_dpo.py` trains for a few steps on CPU, offline. Swap `OnlineDPOTrainer` for
`NashMDTrainer` or `XPOTrainer` (and their configs) to try the other two methods.
"""

from trl import OnlineDPOConfig, OnlineDPOTrainer
from trl.judges import RewardModelJudge
from trl.testing import get_tiny_model_path, load_test_dataset


def even_share(completions, **kwargs):
    return [sum(ord(ch) % 2 == 0 for ch in text) / max(len(text), 1) for text in completions]


if __name__ == "__main__":
    trainer = OnlineDPOTrainer(
        model=get_tiny_model_path("qwen2"),
        judge=RewardModelJudge(even_share),
        args=OnlineDPOConfig(
            output_dir="tiny-OnlineDPO",
            max_steps=10,
            per_device_train_batch_size=4,  # prompts; each one is sampled as a pair
            max_new_tokens=8,
            learning_rate=1e-2,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
        ),  # fmt: skip
        train_dataset=load_test_dataset("standard_prompt_only"),
    )
    trainer.train()
