"""Data: the AdaIR dataset layout, its readers and pipelines, synthetic degradations, demo set.

Submodules are imported explicitly (``from irpo_jax.data import degradations``) so that importing
the package stays cheap; nothing here imports jax or torch at import time. Task and test-set
names come from :mod:`irpo_jax.tasks`.

* ``records`` -- a pair by path (``Record``), ``ScanReport``, ``DataError``, paired folders.
* ``images`` -- decoding, the official ``crop_img`` and the denoise sets' noise.
* ``config`` -- the data config: its keys, defaults and checks, resolved once into a
  ``DataConfig``; where its paths point.
* ``train_set`` -- the training pairs of the AdaIR layout, scanned; the epoch mixture.
* ``eval_sets`` -- the test sets (whole, seeded noise); ``ood_sets`` -- the out-of-domain releases.
* ``manifest`` -- the mining manifest (the hard set): its format, writer and reader.
* ``readers`` -- the public names of the modules above in one place, for the CLIs.
* ``pipeline`` -- the grain training iterator and the evaluation batches.
* ``degradations`` -- pure-numpy noise, rain, haze, motion blur and low-light models.
* ``demo`` -- ``python -m irpo_jax.data.demo --out DIR`` writes a small five-task set made from
  the photographs bundled with scikit-image, in exactly the official AdaIR folder layout;
  ``minibench`` -- the mini-IRPO benchmark set.
* ``prepare`` -- ``python -m irpo_jax.data.prepare``: the official downloads into the layout
  (``releases``: each set's structure; ``archives``: zip/tar/7z/rar as one tree).
"""
