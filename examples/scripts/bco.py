# /// script
# dependencies = [
#     "trl[scikit]",
#     "peft",
# ]
# ///
"""
Align a chat model with BCO on unpaired preference data, optionally with underlying distribution matching (UDM).

Full training:

```bash
python examples/scripts/bco.py \
    --model_name_or_path Qwen/Qwen2-0.5B-Instruct \
    --dataset_name trl-lib/kto-mix-14k \
    --learning_rate 5.0e-7 \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 4 \
    --output_dir Qwen2-0.5B-BCO
```

With UDM, when the prompts of thumbs-up and thumbs-down data come from different distributions (needs
`pip install trl[scikit]`): prompts are embedded with the mean of the last hidden states of an encoder.

```bash
python examples/scripts/bco.py ... --embedding_model nomic-ai/nomic-embed-text-v1.5 --prompt_sample_size 512
```

Offline, in seconds, with the tiny test model and data shipped with trl:

```bash
python examples/scripts/bco.py --tiny --output_dir /tmp/tiny-bco --max_steps 5 --report_to none
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from datasets import load_dataset
from transformers import AutoModel, AutoTokenizer

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config
from trl.trainer.bco_config import BCOConfig
from trl.trainer.bco_trainer import BCOTrainer


@dataclass
class ExampleArguments:
    tiny: bool = field(default=False, metadata={"help": "Use trl's offline tiny model and unpaired preference data."})
    embedding_model: str | None = field(
        default=None, metadata={"help": "Encoder whose mean-pooled hidden states embed the prompts (enables UDM)."}
    )


def mean_pooled_embeddings(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the last hidden states over the real tokens: one vector per prompt."""
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def main() -> None:
    parser = TrlParser((ScriptArguments, BCOConfig, ModelConfig, ExampleArguments))
    script_args, training_args, model_args, example_args = parser.parse_args_and_config()

    if example_args.tiny:
        from trl.testing import get_dataset_path, get_tiny_model_path

        model_args.model_name_or_path = get_tiny_model_path("qwen2")
        script_args.dataset_name, script_args.dataset_config = get_dataset_path(), "conversational_unpaired_preference"
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "revision": model_args.model_revision}
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)

    udm = {}
    if example_args.embedding_model is not None:
        encoder = AutoModel.from_pretrained(example_args.embedding_model, trust_remote_code=True).eval()
        udm = {
            "embedding_func": partial(mean_pooled_embeddings, encoder.to(training_args.device)),
            "embedding_tokenizer": AutoTokenizer.from_pretrained(example_args.embedding_model),
        }
    trainer = BCOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        peft_config=get_peft_config(model_args),
        **udm,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    if training_args.eval_strategy != "no":
        trainer.log_metrics("eval", trainer.evaluate())
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    main()
