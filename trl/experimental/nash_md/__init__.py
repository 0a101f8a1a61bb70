"""Nash-MD under the reference library's experimental path; the trainer is stable in trl (`trl.NashMDTrainer`)."""

from ...models.geometric_mixture import GeometricMixtureWrapper
from ...trainer.nash_md_config import NashMDConfig
from ...trainer.nash_md_trainer import NashMDTrainer


__all__ = ["GeometricMixtureWrapper", "NashMDConfig", "NashMDTrainer"]
