# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Align a chat model with CPO, or its reference-free variants SimPO / CPO-SimPO / AlphaPO, on paired preferences.

CPO (NLL on the chosen answers + a sigmoid preference loss on summed log-probs):

```bash
python examples/scripts/cpo.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/ultrafeedback_binarized \
    --learning_rate 5.0e-7 \
    --beta 0.1 \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 8 \
    --max_length 1024 \
    --eval_strategy steps \
    --eval_steps 50 \
    --output_dir Qwen2.5-0.5B-CPO
```

SimPO (`--loss_type simpo --cpo_alpha 0.0 --simpo_gamma 0.5 --beta 2.0`), CPO-SimPO (`--loss_type simpo
--cpo_alpha 0.5`), AlphaPO (`--loss_type alphapo --alpha 0.25`), LoRA (`--use_peft --lora_r 32 --lora_alpha 16`).

Offline, in seconds, with the tiny test model and data shipped with trl:

```bash
python examples/scripts/cpo.py --tiny --output_dir /tmp/tiny-cpo --max_steps 5 --report_to none
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import load_dataset

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config
from trl.trainer.cpo_config import CPOConfig
from trl.trainer.cpo_trainer import CPOTrainer


@dataclass
class ExampleArguments:
    tiny: bool = field(default=False, metadata={"help": "Use trl's offline tiny model and preference data."})


def main() -> None:
    parser = TrlParser((ScriptArguments, CPOConfig, ModelConfig, ExampleArguments))
    script_args, training_args, model_args, example_args = parser.parse_args_and_config()
    if example_args.tiny:
        from trl.testing import get_dataset_path, get_tiny_model_path

        model_args.model_name_or_path = get_tiny_model_path("qwen2")
        script_args.dataset_name, script_args.dataset_config = get_dataset_path(), "conversational_preference"
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "revision": model_args.model_revision}
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    evaluate = training_args.eval_strategy != "no"

    trainer = CPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if evaluate else None,
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    if evaluate:
        trainer.log_metrics("eval", trainer.evaluate())
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    main()
