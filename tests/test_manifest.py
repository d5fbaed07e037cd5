"""The mining manifest's one owner (irpo_jax/data/manifest.py): what it writes is byte for byte
what mining wrote before the format had an owner, and it reads manifests written then.

``PINNED`` was produced by the manifest-writing lines of ``irpo_jax/mine.py`` as they were before
this module existed (commit 73f8da7: the entry dicts, the header dict, ``json.dumps(...,
sort_keys=True)`` per line), run on the inputs below; it is not derived from the module tested.
"""

import json

import pytest

from irpo_jax.data import manifest
from irpo_jax.data.records import DataError, Record

ROOT = "/data/adair"
RECORDS = [
    Record("denoise:Train/Denoise/a.png@s15", "denoise", 15, "/data/adair/Train/Denoise/a.png", None),
    Record(
        "derain:Train/Derain/rainy/rain-1.png",
        "derain",
        0,
        "/data/adair/Train/Derain/gt/norain-1.png",
        "/data/adair/Train/Derain/rainy/rain-1.png",
    ),
    Record("mydata:x-\u00e9.png", "deblur", 0, "/elsewhere/target/x-\u00e9.png", "/elsewhere/input/x-\u00e9.png"),
]
SCORES = [
    (30.25, 0.875, None),
    (21.5, 0.5, None),
    (None, None, "cannot decode image /elsewhere/input/x-\u00e9.png: bad"),
]
SELECTED = [(False, 0), (True, 0), (False, None)]  # (selected, rank) as mining's selection sets them
MEASURE = {
    "crop": 0,
    "crop_base": 16,
    "noise_seed": 0,
    "metric": "PSNR/SSIM on RGB in [0,1], data_range 1 (irpo_jax.metrics)",
}
# The header line, then one line per record; each line cut into pieces of 88 bytes.
PINNED = b"".join(
    [
        (
            b'{"data_fingerprint": "fedcba9876543210", "data_root": "/data/adair", "kind": "irpo-jax-m'
            b'ining-manifest", "measure": {"crop": 0, "crop_base": 16, "metric": "PSNR/SSIM on RGB in '
            b'[0,1], data_range 1 (irpo_jax.metrics)", "noise_seed": 0}, "model": {"checkpoint": "/mod'
            b'els/adair5d", "id": "0123456789abcdef", "source": null}, "records": 3, "selection": {"fr'
            b'action": 0.3, "mode": "per_task", "rank_by": "psnr", "seed": 0, "selected": 1}, "summary'
            b'": [{"pairs": 1, "task": "derain"}], "version": 1}\n'
        ),
        (
            b'{"clean": "Train/Denoise/a.png", "degraded": null, "id": "denoise:Train/Denoise/a.png@s1'
            b'5", "psnr": 30.25, "rank": 0, "selected": false, "sigma": 15, "ssim": 0.875, "task": "de'
            b'noise"}\n'
        ),
        (
            b'{"clean": "Train/Derain/gt/norain-1.png", "degraded": "Train/Derain/rainy/rain-1.png", "'
            b'id": "derain:Train/Derain/rainy/rain-1.png", "psnr": 21.5, "rank": 0, "selected": true, '
            b'"sigma": 0, "ssim": 0.5, "task": "derain"}\n'
        ),
        (
            b'{"clean": "/elsewhere/target/x-\\u00e9.png", "degraded": "/elsewhere/input/x-\\u00e9.png",'
            b' "error": "cannot decode image /elsewhere/input/x-\\u00e9.png: bad", "id": "mydata:x-\\u00'
            b'e9.png", "psnr": null, "rank": null, "selected": false, "sigma": 0, "ssim": null, "task"'
            b': "deblur"}\n'
        ),
    ]
)


def _entries() -> list[dict]:
    entries = []
    for r, (psnr, ssim, error), (selected, rank) in zip(RECORDS, SCORES, SELECTED):
        e = manifest.manifest_entry(r, ROOT, psnr=psnr, ssim=ssim, error=error)
        e["selected"], e["rank"] = selected, rank
        entries.append(e)
    return entries


def _header(entries: list[dict]) -> dict:
    return manifest.manifest_header(
        data_root=ROOT,
        data_fingerprint="fedcba9876543210",
        records=len(entries),
        model={"checkpoint": "/models/adair5d", "id": "0123456789abcdef", "source": None},
        measure=MEASURE,
        selection={
            "mode": "per_task",
            "fraction": 0.3,
            "rank_by": "psnr",
            "seed": 0,
            "selected": sum(e["selected"] for e in entries),
        },
        summary=[{"task": "derain", "pairs": 1}],
    )


def test_a_written_manifest_is_byte_identical_to_the_format_before(tmp_path):
    entries = _entries()
    path = tmp_path / "hard.jsonl"
    manifest.write_manifest(path, _header(entries), entries)
    assert path.read_bytes() == PINNED
    assert manifest.manifest_text(_header(entries), entries).encode() == PINNED
    assert [p.name for p in tmp_path.iterdir()] == ["hard.jsonl"]  # the temporary is renamed away


def test_a_manifest_written_before_reads_and_decodes(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_bytes(PINNED)
    header, entries = manifest.read_manifest(path)
    assert header == json.loads(PINNED.split(b"\n")[0])
    assert [e["id"] for e in entries] == [r.id for r in RECORDS]
    assert entries[2]["clean"] == "/elsewhere/target/x-\u00e9.png"  # outside the root: kept absolute
    assert manifest.mined_by(header) == {"checkpoint": "/models/adair5d", "id": "0123456789abcdef", "source": None}
    assert manifest.mining_settings(header) == {
        "fraction": 0.3,
        "selection": "per_task",
        "rank_by": "psnr",
        "crop": 0,
        "seed": 0,
    }
    # The selected pair, from the data root it was mined under; elsewhere only when allowed.
    assert manifest.records_from_manifest(RECORDS, path, ROOT) == [RECORDS[1]]
    with pytest.raises(DataError, match="data.manifest_allow_other_root"):
        manifest.records_from_manifest(RECORDS, path, "/data/moved")
    assert manifest.records_from_manifest(RECORDS, path, "/data/moved", allow_other_root=True) == [RECORDS[1]]


def test_headers_without_a_record_decode_to_nothing():
    assert manifest.mined_by({"kind": manifest.MANIFEST_KIND}) == {}
    assert set(manifest.mining_settings({"kind": manifest.MANIFEST_KIND}).values()) == {None}
