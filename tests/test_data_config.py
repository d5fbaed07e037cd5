"""The data config resolved once (irpo_jax/data/config.py): a frozen DataConfig that the readers
take as it is, whose plain form is the dict resolve_config returned before it existed, and whose
bad values are refused naming the key."""

import dataclasses

import pytest

from irpo_jax.data import config as C
from irpo_jax.data import readers as R
from irpo_jax.tasks import TASKS


def test_the_typed_config_is_the_plain_dict_and_resolves_once():
    user = {
        "root": "/data/x",
        "repeats": {"derain": 10},
        "sigmas": [25],
        "eval_paired": {"own": {"path": "p", "task": "derain"}},
    }
    data = C.resolve_data_config(user)
    # The plain form: the defaults (a ConfigDict lists its keys sorted) with the user's values
    # merged over them, nested dicts key by key, only data.tasks made a tuple.
    want = C.default_data_config("/data/x").to_dict()
    want.update(
        tasks=tuple(TASKS), sigmas=[25], eval_paired=user["eval_paired"], repeats={**C.OFFICIAL_REPEATS, "derain": 10}
    )
    assert data.as_dict() == want and list(data.as_dict()) == list(want)
    assert C.resolve_config(user) == want
    assert data.root == "/data/x" and data.repeats["derain"] == 10 and data.repeats["dehaze"] == 1
    # Resolving the typed config again returns it as it is: nothing is merged or checked twice.
    assert C.resolve_data_config(data) is data
    assert C.resolve_config(data) == want
    # Frozen, and its plain form a copy the caller may change.
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.root = "/elsewhere"
    plain = data.as_dict()
    plain["repeats"]["derain"] = 0
    assert data.repeats["derain"] == 10


def test_the_readers_read_the_same_from_the_typed_config(demo_root):
    plain = {"root": str(demo_root), "tasks": ("derain", "denoise"), "repeats": {"derain": 2}}
    data = C.resolve_data_config(plain)
    records, _ = R.train_records(plain)
    assert [r.id for r in R.train_records(data)[0]] == [r.id for r in records]
    assert R.mixture_indices(records, data) == R.mixture_indices(records, plain)
    assert list(R.eval_sets(data, ["rain100l"])) == list(R.eval_sets(plain, ["rain100l"]))


@pytest.mark.parametrize(
    "user, message",
    [
        ({"rot": "/x"}, r"unknown data config key\(s\) \['rot'\]; valid keys: .*'root'"),
        ({"tasks": ("enhance",)}, r"unknown task 'enhance' in data.tasks; valid tasks: denoise, derain"),
        ({"augment": "rotate"}, r"data.augment='rotate'; valid: 'flips', 'official', 'none'"),
        ({"validate": "all"}, r"data.validate='all'; valid: 'header', 'decode', 'none'"),
        ({"repeats": {"derain": -1}}, r"data.repeats.derain must be >= 0, got -1"),
    ],
)
def test_bad_values_are_refused_naming_the_key(user, message):
    with pytest.raises(R.DataError, match=message):
        C.resolve_data_config(user)
