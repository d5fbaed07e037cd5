"""The one exception of the training library: a run that cannot start or must stop.

Its own module so that every part of :mod:`irpo_jax.training` can raise it without importing the
package's public names (which import those parts).
"""


class TrainingError(RuntimeError):
    """A run that cannot start or must stop; the message says why and what to do."""
