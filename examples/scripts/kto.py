# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Align a chat model with KTO on unpaired preference data (thumbs up / thumbs down per completion).

Full training:

```bash
python examples/scripts/kto.py \
    --model_name_or_path Qwen/Qwen2-0.5B-Instruct \
    --dataset_name trl-lib/kto-mix-14k \
    --learning_rate 5.0e-7 \
    --beta 0.1 \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 4 \
    --eval_strategy steps \
    --eval_steps 50 \
    --output_dir Qwen2-0.5B-KTO
```

Paired preference data (`prompt`, `chosen`, `rejected`) works too: it is unpaired automatically. With an unbalanced
dataset, set `--desirable_weight` / `--undesirable_weight` (the trainer warns and suggests values).

LoRA (no copy of the model is kept as reference: the adapter is disabled for the reference pass):

```bash
python examples/scripts/kto.py ... --use_peft --lora_r 32 --lora_alpha 16 --learning_rate 5.0e-6
```

Offline, in seconds, with the tiny test model and data shipped with trl:

```bash
python examples/scripts/kto.py --tiny --output_dir /tmp/tiny-kto --max_steps 5 --report_to none
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import load_dataset

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config
from trl.trainer.kto_config import KTOConfig
from trl.trainer.kto_trainer import KTOTrainer


@dataclass
class ExampleArguments:
    tiny: bool = field(default=False, metadata={"help": "Use trl's offline tiny model and unpaired preference data."})


def main() -> None:
    parser = TrlParser((ScriptArguments, KTOConfig, ModelConfig, ExampleArguments))
    script_args, training_args, model_args, example_args = parser.parse_args_and_config()

    if example_args.tiny:
        from trl.testing import get_dataset_path, get_tiny_model_path

        model_args.model_name_or_path = get_tiny_model_path("qwen2")
        script_args.dataset_name, script_args.dataset_config = get_dataset_path(), "conversational_unpaired_preference"
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "revision": model_args.model_revision}
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)

    trainer = KTOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
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
