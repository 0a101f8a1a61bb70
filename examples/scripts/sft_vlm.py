# /// script
# dependencies = [
#     "trl[vlm]",
#     "peft",
# ]
# ///
"""
Supervised fine-tuning of a vision-language model on image conversations.

Without arguments it trains the tiny offline Qwen2-VL of `trl.testing` for a few steps on CPU, on a generated dataset
whose rows ask for the colour of a picture. With a real model and dataset:

```bash
python examples/scripts/sft_vlm.py \
    --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct \
    --dataset_name HuggingFaceH4/llava-instruct-mix-vsft \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 8 \
    --max_steps 1000 \
    --output_dir Qwen2.5-VL-3B-SFT

# LoRA on the language model only (the vision tower stays frozen)
python examples/scripts/sft_vlm.py --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct \
    --dataset_name HuggingFaceH4/llava-instruct-mix-vsft --use_peft --output_dir Qwen2.5-VL-3B-SFT-LoRA
```

The dataset must be conversational (`messages`, or `prompt` + `completion`) with an `images` (or `image`) column;
[`SFTTrainer`] renders and processes each batch on the fly with the model's processor.
"""

import argparse

from transformers import AutoModelForImageTextToText, AutoProcessor

from trl import SFTConfig, SFTTrainer


def parse_args():
    parser = argparse.ArgumentParser(prog="sft_vlm.py")
    parser.add_argument("--model_name_or_path", default=None, help="Default: the tiny offline Qwen2-VL.")
    parser.add_argument("--dataset_name", default=None, help="Default: a tiny generated image dataset.")
    parser.add_argument("--output_dir", default="tiny-SFT-VLM")
    parser.add_argument("--max_steps", type=int, default=10)
    parser.add_argument("--learning_rate", type=float, default=None)
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--use_peft", action="store_true", help="LoRA on the language model's projections.")
    return parser.parse_args()


def load_model_and_data(args):
    if args.model_name_or_path is None:
        from trl.testing import build_tiny_vision_dataset, load_tiny_vlm

        model, processor = load_tiny_vlm("qwen2-vl")
        return model, processor, build_tiny_vision_dataset("conversational_language_modeling", num_rows=32)
    from datasets import load_dataset

    model = AutoModelForImageTextToText.from_pretrained(args.model_name_or_path, dtype="auto")
    processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    return model, processor, load_dataset(args.dataset_name, split="train")


if __name__ == "__main__":
    args = parse_args()
    model, processor, dataset = load_model_and_data(args)
    tiny = args.model_name_or_path is None
    peft_config = None
    if args.use_peft:
        from peft import LoraConfig

        # Only the language model's attention projections: the names of the vision tower's layers differ.
        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=args.output_dir,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            learning_rate=args.learning_rate or (1e-3 if tiny else 2e-5),
            max_length=None,  # never truncate image tokens; the collator raises if a limit would cut an image
            logging_steps=1 if tiny else 10,
            report_to="none" if tiny else "all",
            save_strategy="no" if tiny else "steps",
            gradient_checkpointing=not tiny,
        ),
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(args.output_dir)
