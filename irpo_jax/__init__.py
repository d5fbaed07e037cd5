"""irpo-jax: IRPO (GRPO post-training for all-in-one image restoration) on a Flax port of AdaIR.

Public entry points:

* :func:`load_model` -- a converted or trained model directory -> a ready restorer;
* ``python -m torch_bridge.convert_adair`` -- official PyTorch checkpoints <-> model directories.

Importing this package loads nothing heavy; submodules are imported on first use.
"""

__version__ = "0.1.0"


def load_model(path):
    """Load a model directory (converted or trained) into a :class:`irpo_jax.checkpointing.Restorer`.

    ``load_model(path)(batch)`` restores a float NHWC RGB batch in [0, 1]; the output is the
    model's raw float32 output, not clipped.
    """
    from irpo_jax.checkpointing import load_model as _load

    return _load(path)
