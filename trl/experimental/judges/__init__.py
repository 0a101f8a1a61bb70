"""The judges under the reference library's 1.x path `trl.experimental.judges` (defined in [`trl.judges`])."""

from ...judges import *  # noqa: F403
from ...judges import __all__  # noqa: F401
