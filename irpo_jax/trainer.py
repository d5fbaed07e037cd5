"""Deprecated alias of :mod:`irpo_jax.training`, the training library's one import.

``from irpo_jax import trainer`` keeps working (the same names, the same objects) but warns once,
at the first import: write ``from irpo_jax import training`` instead.
"""

import warnings

from irpo_jax.training import *  # noqa: F401,F403 - the alias's whole point
from irpo_jax.training import __all__  # noqa: F401

# stacklevel 2: the warning names the importing line (the import machinery's frames are skipped).
warnings.warn(
    "irpo_jax.trainer is deprecated: import irpo_jax.training instead (`from irpo_jax import training`), "
    "which has the same names",
    DeprecationWarning,
    stacklevel=2,
)
