"""Trainers and configurations, one pair per method (`<method>_config.py`, `<method>_trainer.py`)."""

from typing import TYPE_CHECKING

from ..import_utils import install_lazy_module


# The package's public names, written once: each `from .submodule import Name` line below is read by
# `install_lazy_module` (trl/import_utils.py), which imports the submodule when the name is first used.
if TYPE_CHECKING:
    from .base_config import _BaseConfig
    from .base_trainer import BaseTrainer
    from .bco_config import BCOConfig
    from .bco_trainer import BCOTrainer
    from .callbacks import (
        BEMACallback,
        LogCompletionsCallback,
        RichProgressCallback,
        SyncRefModelCallback,
        WeaveCallback,
        WinRateCallback,
    )
    from .collators import (
        DataCollatorForLanguageModeling,
        DataCollatorForPreference,
        DataCollatorForRewardPreference,
        DataCollatorForUnpairedPreference,
    )
    from .cpo_config import CPOConfig
    from .cpo_trainer import CPOTrainer
    from .distillation_config import DistillationConfig
    from .distillation_trainer import DistillationTrainer
    from .dpo_config import DPOConfig, FDivergenceConstants, FDivergenceType
    from .dpo_trainer import DPOTrainer
    from .gkd_config import GKDConfig
    from .gkd_trainer import GKDTrainer
    from .grpo_config import GRPOConfig
    from .grpo_trainer import GRPOTrainer
    from .judges import *  # noqa: F403  (the names of `trl.judges.__all__`)
    from .kto_config import KTOConfig
    from .kto_trainer import KTOTrainer
    from .model_config import ModelConfig
    from .nash_md_config import NashMDConfig
    from .nash_md_trainer import NashMDTrainer
    from .online_dpo_config import OnlineDPOConfig
    from .online_dpo_trainer import OnlineDPOTrainer
    from .orpo_config import ORPOConfig
    from .orpo_trainer import ORPOTrainer
    from .peft_utils import get_kbit_device_map, get_peft_config, get_quantization_config
    from .ppo_config import PPOConfig
    from .ppo_trainer import PPOTrainer
    from .prm_config import PRMConfig
    from .prm_trainer import PRMTrainer
    from .reward_config import RewardConfig
    from .reward_trainer import RewardTrainer
    from .rloo_config import RLOOConfig
    from .rloo_trainer import RLOOTrainer
    from .sft_config import SFTConfig
    from .sft_trainer import SFTTrainer
    from .utils import add_fused_lm_head, disable_dropout_in_model, ensure_master_addr_port
    from .xpo_config import XPOConfig
    from .xpo_trainer import XPOTrainer
else:
    install_lazy_module(globals())
