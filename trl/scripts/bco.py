# /// script
# dependencies = [
#     "trl",
#     "peft",
# ]
# ///
"""
Binary Classifier Optimization from the command line: `trl bco ...` or `python trl/scripts/bco.py ...`.

It takes the unpaired (or paired) preference data of `trl kto`:

```bash
trl bco --model_name_or_path Qwen/Qwen2-0.5B-Instruct --dataset_name trl-lib/kto-mix-14k --output_dir Qwen2-0.5B-BCO
```

Underlying distribution matching needs an embedding function, which a command line cannot pass: use
`examples/scripts/bco.py --embedding_model ...` or build the [`BCOTrainer`] in Python.
"""

from __future__ import annotations

from trl.scripts.parser import parse_script_args
from trl.scripts.training_script import script_entry_points


# `make_parser()`: `(ScriptArguments, BCOConfig, ModelConfig, DatasetMixtureConfig)`; `main(...)` trains a [`BCOTrainer`].
COMMAND, DESCRIPTION, make_parser, main = script_entry_points("bco")

if __name__ == "__main__":
    main(*parse_script_args(make_parser()))
