import os


# Nothing in the suite may reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# One intra-op thread per xdist worker: the suite runs two workers on two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402


torch.set_num_threads(1)
