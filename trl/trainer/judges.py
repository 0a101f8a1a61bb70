"""The judges under the reference library's `trl.trainer.judges` path (defined in [`trl.judges`])."""

from ..judges import *  # noqa: F403
from ..judges import __all__  # noqa: F401
