"""The path of KTO in the reference library's experimental namespace (1.x moved KTO back to stable and keeps this
path as a shim); here it is the stable `trl.KTOTrainer`."""

from ...trainer.kto_config import KTOConfig
from ...trainer.kto_trainer import KTOTrainer


__all__ = ["KTOConfig", "KTOTrainer"]
