"""The data readers' public names in one place: ``from irpo_jax.data import readers``.

Each concern lives in its own module; this one only gathers their public names for the CLIs and
callers that read data (``readers.train_records``, ``readers.eval_sets``, ``readers.load_image``,
...), so those keep one import. Code inside ``irpo_jax.data`` imports from the owning module.

* :mod:`irpo_jax.tasks` -- task names and ids, the test sets' names (``TEST_SETS``, ``ood5``);
* :mod:`irpo_jax.data.records` -- :class:`Record` (a pair by path), :class:`ScanReport`,
  :class:`DataError`, paired folders, :func:`fingerprint`;
* :mod:`irpo_jax.data.images` -- decoding, ``crop_img`` and the official noise;
* :mod:`irpo_jax.data.config` -- the data config's keys and defaults, resolved once into a
  :class:`DataConfig` (:func:`resolve_data_config`; :func:`resolve_config`: as a plain dict);
* :mod:`irpo_jax.data.train_set` -- the training pairs of the AdaIR layout, scanned; the mixture;
* :mod:`irpo_jax.data.eval_sets` -- the test sets and their seeded noise;
  :mod:`irpo_jax.data.ood_sets` -- the out-of-domain releases;
* :mod:`irpo_jax.data.manifest` -- the mining manifest (the hard set): format, writer, reader.
"""

from __future__ import annotations

from irpo_jax.data.config import (
    OFFICIAL_REPEATS,
    DataConfig,
    default_data_config,
    resolve_config,
    resolve_data_config,
)
from irpo_jax.data.eval_sets import EvalSet, eval_sets
from irpo_jax.data.images import (
    OFFICIAL_SIGMAS,
    add_official_noise,
    crop_img,
    cropped_size,
    load_image,
    to_float01,
    to_uint8_domain,
)
from irpo_jax.data.manifest import MANIFEST_KIND, read_manifest, records_from_manifest
from irpo_jax.data.records import (
    IMAGE_EXTENSIONS,
    DataError,
    Record,
    ScanReport,
    fingerprint,
    paired_folder_records,
    relative_to_root,
)
from irpo_jax.data.train_set import mixture_indices, train_records
from irpo_jax.tasks import OOD_SETS, SET_GROUPS, TASK_IDS, TEST_SETS, expand_set_names

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_KIND",
    "OFFICIAL_REPEATS",
    "OFFICIAL_SIGMAS",
    "OOD_SETS",
    "SET_GROUPS",
    "TASK_IDS",
    "TEST_SETS",
    "DataConfig",
    "DataError",
    "EvalSet",
    "Record",
    "ScanReport",
    "add_official_noise",
    "crop_img",
    "cropped_size",
    "default_data_config",
    "eval_sets",
    "expand_set_names",
    "fingerprint",
    "load_image",
    "mixture_indices",
    "paired_folder_records",
    "read_manifest",
    "records_from_manifest",
    "relative_to_root",
    "resolve_config",
    "resolve_data_config",
    "to_float01",
    "to_uint8_domain",
    "train_records",
]
