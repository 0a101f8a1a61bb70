"""Unstable trainers and features. Their API may change without a deprecation cycle.

Importing this package warns once with [`TRLExperimentalWarning`]; set `TRL_EXPERIMENTAL_SILENCE=1` to silence it.
It also keeps the import paths of the reference library's experimental trainers that trl ships as stable ones
(`trl.experimental.cpo`, `trl.experimental.orpo`, `trl.experimental.ppo`).
"""

import os
import warnings


class TRLExperimentalWarning(UserWarning):
    """Warning emitted when `trl.experimental` is imported."""


if os.environ.get("TRL_EXPERIMENTAL_SILENCE", "0").lower() not in ("1", "true", "yes"):
    warnings.warn(
        "You are importing from trl.experimental: these APIs may change or disappear without notice. Set "
        "TRL_EXPERIMENTAL_SILENCE=1 to silence this warning.",
        TRLExperimentalWarning,
        stacklevel=2,
    )
