# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Train an outcome reward model (Bradley-Terry) on a paired preference dataset.

Full training:

```bash
python examples/scripts/reward_modeling.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/ultrafeedback_binarized \
    --per_device_train_batch_size 8 \
    --learning_rate 1.0e-5 \
    --max_length 2048 \
    --eval_strategy steps \
    --eval_steps 50 \
    --output_dir Qwen2.5-0.5B-Reward
```

LoRA (the new score head is trained in full, through `modules_to_save`):

```bash
python examples/scripts/reward_modeling.py ... --use_peft --lora_task_type SEQ_CLS --learning_rate 1.0e-4
```

Offline, in seconds, with the tiny test model and data shipped with trl:

```bash
python examples/scripts/reward_modeling.py --tiny --output_dir /tmp/tiny-rm --max_steps 10 --report_to none
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import load_dataset

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config
from trl.trainer.reward_config import RewardConfig
from trl.trainer.reward_trainer import RewardTrainer
from trl.trainer.utils import compute_accuracy


@dataclass
class ExampleArguments:
    tiny: bool = field(default=False, metadata={"help": "Use trl's offline tiny model and preference data."})


def main() -> None:
    parser = TrlParser((ScriptArguments, RewardConfig, ModelConfig, ExampleArguments))
    script_args, training_args, model_args, example_args = parser.parse_args_and_config()

    if example_args.tiny:
        from trl.testing import get_dataset_path, get_tiny_model_path

        model_args.model_name_or_path = get_tiny_model_path("qwen2-seq-cls")
        script_args.dataset_name, script_args.dataset_config = get_dataset_path(), "standard_preference"
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "revision": model_args.model_revision}
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)

    trainer = RewardTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        compute_metrics=compute_accuracy,
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    if training_args.eval_strategy != "no":
        trainer.log_metrics("eval", trainer.evaluate())
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    main()
