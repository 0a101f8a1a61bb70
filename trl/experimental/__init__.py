"""Unstable trainers and features. Their API may change without a deprecation cycle.

Importing this package warns once with [`TRLExperimentalWarning`]; set `TRL_EXPERIMENTAL_SILENCE=1` to silence it.
It also keeps the import paths of the reference library's experimental trainers that trl ships as stable ones
(`trl.experimental.cpo`, `trl.experimental.orpo`, `trl.experimental.kto`, `trl.experimental.bco`, ...).
Stable code that wraps an experimental module imports it inside `suppress_experimental_warning()`.
"""

import os
import warnings

from ..import_utils import TRLExperimentalWarning, suppress_experimental_warning


__all__ = ["TRLExperimentalWarning", "suppress_experimental_warning"]

# The package body runs once per process, so the warning is emitted once however many submodules are imported.
if os.environ.get("TRL_EXPERIMENTAL_SILENCE", "0").lower() not in ("1", "true", "yes"):
    warnings.warn(
        "You are importing from trl.experimental: these APIs may change or disappear without notice. Set "
        "TRL_EXPERIMENTAL_SILENCE=1 to silence this warning.",
        TRLExperimentalWarning,
        stacklevel=2,
    )
