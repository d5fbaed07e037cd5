"""Data: the AdaIR dataset layout, its readers and pipelines, synthetic degradations, demo set.

Submodules are imported explicitly (``from irpo_jax.data import degradations``) so that importing
the package stays cheap; nothing here imports jax or torch at import time.

* ``degradations`` -- pure-numpy noise, rain, haze, motion blur and low-light models.
* ``demo`` -- ``python -m irpo_jax.data.demo --out DIR`` writes a small five-task set made from
  the photographs bundled with scikit-image, in exactly the official AdaIR folder layout.
"""
