"""The data section of a config: its keys and defaults, and where its paths point.

:func:`default_data_config` is the documented data config (every key with its meaning);
:func:`resolve_data_config` merges a user's dict or ConfigDict over it, checks the values and
returns a frozen :class:`DataConfig`, once per run: the readers, the training iterator, mining and
the trainer take that object as it is instead of resolving the config again
(:func:`resolve_config` is the same as a plain dict). :func:`data_root`, :func:`under` and
:func:`list_dir` turn its paths into folders.
Paths are relative to ``data.root`` unless absolute. ``LISTS`` (``data.list_dir``) is by default
``ROOT/data_dir`` (the demo set) or, failing that, ``ROOT/../data_dir`` (the official checkout,
where ``data/`` and ``data_dir/`` are siblings).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from irpo_jax.data.images import OFFICIAL_SIGMAS
from irpo_jax.data.records import DataError
from irpo_jax.tasks import TASK_IDS, TASKS, TEST_SETS

__all__ = [
    "OFFICIAL_REPEATS",
    "DataConfig",
    "data_root",
    "default_data_config",
    "list_dir",
    "resolve_config",
    "resolve_data_config",
    "under",
]

# Per-task repetition factors of the official all-in-one epoch (adair-spec.md 10.2); denoise is
# repeated x3 for each sigma, so every clean image appears 9 times per epoch.
OFFICIAL_REPEATS = {"denoise": 3, "derain": 120, "dehaze": 1, "deblur": 5, "lowlight": 20}


def default_data_config(root: str = "") -> Any:
    """The data section of a training/mining config, with the official five-task mixture.

    Returns an ``ml_collections.ConfigDict`` (plain dicts with any subset of these keys are
    accepted too; see :func:`resolve_data_config`). Paths are relative to ``root`` unless absolute.

    Args:
      root: the AdaIR data root (holds ``Train/`` and ``test/``), e.g. a demo set's ``--out``.
    """
    import ml_collections

    c = ml_collections.ConfigDict()
    c.root = str(root)  # AdaIR data root holding Train/ and test/ (the demo set's --out)
    # Folder with the noisy/ rainy/ hazy/ list files; "" = ROOT/data_dir, else ROOT/../data_dir.
    c.list_dir = ""
    c.tasks = tuple(TASKS)  # tasks in the training mixture (names of irpo_jax.tasks.TASKS)
    c.sigmas = OFFICIAL_SIGMAS  # denoise noise levels (0..255 units); a record per image and sigma
    c.repeats = dict(OFFICIAL_REPEATS)  # per-task repetitions per epoch (denoise: per sigma)
    c.train_dirs = {  # per-task training folders, relative to root
        "denoise": "Train/Denoise",
        "derain": "Train/Derain",
        "dehaze": "Train/Dehaze",
        "deblur": "Train/Deblur",
        "lowlight": "Train/Enhance",
    }
    c.list_files = {  # official name lists, relative to list_dir; a missing one = all files
        "denoise": "noisy/denoise.txt",
        "derain": "rainy/rainTrain.txt",
        "dehaze": "hazy/hazy_outside.txt",
    }
    # Extra paired folders (input/ + target/, same names) mixed into training:
    # [{"name": "mydata", "path": "/data/mine", "task": "derain", "repeat": 1}, ...]
    c.paired_train = []
    c.test_dirs = {name: folder for name, (_, folder, _) in TEST_SETS.items()}  # relative to root
    c.eval_sets = ("sots", "rain100l", "bsd68", "gopro", "lol")  # five-task protocol
    # Extra paired evaluation folders (OOD sets, own data): {"rrshid": {"path": ..., "task": ...}}
    c.eval_paired = {}
    c.test_noise_seed = 0  # np.random.seed of the official BSD68/Urban100 noise stream
    c.patch_size = 128  # training crop side (pixels)
    c.crop_base = 16  # crop_img(base): every image is first cropped to a multiple of this
    c.augment = "flips"  # "flips" (IRPO: random h/v flips), "official" (AdaIR modes 1-7), "none"
    c.validate = "header"  # pre-training scan: "header" (fast), "decode" (every pixel), "none"
    c.worker_count = -1  # grain worker processes; -1 = auto (min(8, cpu_count - 1)), 0 = in-process
    c.worker_buffer_size = 2  # batches buffered per worker
    c.read_threads = 4  # decoding threads per process (PIL releases the GIL while decoding)
    c.max_skips = 16  # consecutive unreadable samples tolerated before a sample fails loudly
    c.manifest = ""  # mining manifest (python -m irpo_jax.mine): train only on its selected pairs
    c.manifest_allow_other_root = False  # accept a manifest mined under a different data root
    return c


def _to_plain(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return {k: (_to_plain(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    raise TypeError(f"a data config must be a dict or ConfigDict, got {type(cfg).__name__}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data section of a config, resolved once: defaults filled in, names and values checked.

    :func:`resolve_data_config` makes one from a user's dict or ConfigDict; the readers, the
    training iterator, mining and the trainer take it as it is (resolving a :class:`DataConfig`
    again returns it unchanged), so a run reads its data config in one place. The fields are
    the keys of :func:`default_data_config`, whose comments say what each means; their values
    are the user's, unconverted, so :meth:`as_dict` is exactly the plain dict
    :func:`resolve_config` has always returned. Frozen: derive a variant with
    ``dataclasses.replace`` and treat the dicts and lists inside as read-only.
    """

    root: str  # AdaIR data root holding Train/ and test/
    list_dir: str  # folder of the official list files; "" = ROOT/data_dir, else ROOT/../data_dir
    tasks: tuple[str, ...]  # tasks in the training mixture (names of irpo_jax.tasks.TASKS)
    sigmas: Sequence[int]  # denoise noise levels (0..255 units)
    repeats: dict[str, int]  # per-task (and paired_train set) repetitions per epoch
    train_dirs: dict[str, str]  # per-task training folders, relative to root
    list_files: dict[str, str]  # official name lists, relative to list_dir
    paired_train: Sequence[Mapping[str, Any]]  # extra paired training folders
    test_dirs: dict[str, str]  # per-test-set folders, relative to root
    eval_sets: Sequence[str]  # the sets evaluated by default
    eval_paired: dict[str, Mapping[str, Any]]  # extra paired evaluation folders
    test_noise_seed: int  # seed of the official BSD68/Urban100 noise stream
    patch_size: int  # training crop side (pixels)
    crop_base: int  # crop_img(base)
    augment: str  # "flips", "official" or "none"
    validate: str  # pre-training scan: "header", "decode" or "none"
    worker_count: int  # grain worker processes; -1 = auto, 0 = in-process
    worker_buffer_size: int  # batches buffered per worker
    read_threads: int  # decoding threads per process
    max_skips: int  # consecutive unreadable samples tolerated
    manifest: str  # mining manifest; "" = none, "all" = every pair
    manifest_allow_other_root: bool  # accept a manifest mined under a different data root

    def as_dict(self) -> dict[str, Any]:
        """The plain dict (a deep copy, keys sorted as a ConfigDict lists them): what
        :func:`resolve_config` returns (evaluation records parts of it with its results)."""
        return copy.deepcopy({name: getattr(self, name) for name in sorted(self.__dataclass_fields__)})


def resolve_data_config(cfg: Any) -> DataConfig:
    """Merges ``cfg`` (dict or ConfigDict, any subset of keys) over :func:`default_data_config`
    and checks it; a :class:`DataConfig` is returned as it is (it was checked when made).

    Nested dicts (``repeats``, ``train_dirs``, ...) are merged key by key, so
    ``{"repeats": {"derain": 10}}`` keeps the other factors.

    Raises:
      DataError: an unknown key (most likely a typo), an unknown task name or a bad value; the
        message names the key and the valid values.
    """
    if isinstance(cfg, DataConfig):
        return cfg
    base = default_data_config().to_dict()
    user = _to_plain(cfg)
    unknown = sorted(set(user) - set(base))
    if unknown:
        raise DataError(f"unknown data config key(s) {unknown}; valid keys: {sorted(base)}")
    out = dict(base)
    for key, value in user.items():
        if isinstance(base[key], dict) and isinstance(value, Mapping) and key != "eval_paired":
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    out["tasks"] = tuple(out["tasks"])
    for t in out["tasks"]:
        if t not in TASK_IDS:
            raise DataError(f"unknown task {t!r} in data.tasks; valid tasks: {', '.join(TASKS)}")
    if out["augment"] not in ("flips", "official", "none"):
        raise DataError(f"data.augment={out['augment']!r}; valid: 'flips', 'official', 'none'")
    if out["validate"] not in ("header", "decode", "none"):
        raise DataError(f"data.validate={out['validate']!r}; valid: 'header', 'decode', 'none'")
    for t, r in out["repeats"].items():
        if int(r) < 0:
            raise DataError(f"data.repeats.{t} must be >= 0, got {r}")
    return DataConfig(**out)


def resolve_config(cfg: Any) -> dict[str, Any]:
    """:func:`resolve_data_config` as a plain dict (a copy the caller may change), for callers
    that index the data config by key or store it.

    Raises:
      DataError: as :func:`resolve_data_config`.
    """
    return resolve_data_config(cfg).as_dict()


def data_root(cfg: DataConfig) -> Path:
    """``data.root`` as an absolute folder that exists.

    Raises:
      DataError: an empty or missing root, saying what to point it at.
    """
    if not cfg.root:
        raise DataError(
            "data.root is empty: point it at an AdaIR data folder (with Train/ and test/), e.g. "
            "a demo set built by `python -m irpo_jax.data.demo --out DIR`."
        )
    root = Path(os.path.expanduser(str(cfg.root))).absolute()
    if not root.is_dir():
        raise DataError(
            f"data.root {root} does not exist or is not a folder. Point data.root at the AdaIR "
            "data folder (holding Train/ and test/), or build the demo set there with "
            f"`python -m irpo_jax.data.demo --out {root}`."
        )
    return root


def under(root: Path, rel: str) -> Path:
    """``rel`` (``~`` expanded) under ``root``, or itself when absolute."""
    p = Path(os.path.expanduser(str(rel)))
    return p if p.is_absolute() else root / p


def list_dir(cfg: DataConfig, root: Path) -> Path:
    """The folder of the official list files (``data.list_dir``, see the module docstring)."""
    if cfg.list_dir:
        return under(root, cfg.list_dir)
    for cand in (root / "data_dir", root.parent / "data_dir"):
        if cand.is_dir():
            return cand
    return root / "data_dir"
