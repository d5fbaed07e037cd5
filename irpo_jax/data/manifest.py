"""The mining manifest: the hard set ``python -m irpo_jax.mine`` writes and training reads.

This module owns the format: :func:`manifest_entry` and :func:`manifest_header` build its lines,
:func:`write_manifest` writes it, :func:`read_manifest` reads it (every line checked),
:func:`records_from_manifest` is the subset of a dataset's records it selected
(``data.manifest``), and :func:`mined_by` / :func:`mining_settings` decode what its header
records (``training.hard_set`` checks a manifest against the run with them).

Format (JSON lines, keys sorted, ASCII, ``\n`` after every line): the first line is a header
``{"kind": "irpo-jax-mining-manifest", "version": 1, "data_root", "data_fingerprint", "records",
"model": {"checkpoint", "id", "source"}, "measure": {...}, "selection": {...}, "summary": [...]}``;
then one line per record ``{"id", "task", "sigma", "degraded", "clean", "psnr", "ssim",
"selected", "rank"}`` (paths relative to ``data_root``; ``rank`` 0 = worst in its ranking group;
a pair that failed to decode has ``"error"`` and ``psnr``/``ssim`` null and is never selected).
The model ``id`` is the sha256 of ``model.json`` and every file under ``params/``
(``mine.checkpoint_id``). Record ids are root-relative (:class:`~irpo_jax.data.records.Record`),
so a manifest still matches data that was moved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from irpo_jax.data.records import DataError, Record, relative_to_root

__all__ = [
    "MANIFEST_KIND",
    "MANIFEST_VERSION",
    "manifest_entry",
    "manifest_header",
    "manifest_text",
    "mined_by",
    "mining_settings",
    "read_manifest",
    "records_from_manifest",
    "write_manifest",
]

MANIFEST_KIND = "irpo-jax-mining-manifest"  # the header's "kind"
MANIFEST_VERSION = 1  # the header's "version"


# --------------------------------------------------------------------------- writing


def manifest_entry(
    record: Record, data_root: str | os.PathLike, *, psnr: float | None, ssim: float | None, error: str | None = None
) -> dict[str, Any]:
    """One record's line, before selection (mining adds ``"selected"`` and ``"rank"``).

    Args:
      record: the training pair.
      data_root: the absolute data root; paths under it are written relative to it.
      psnr, ssim: the pair's scores; None for a pair that failed to decode.
      error: why it failed, if it did (the key is left out otherwise).
    """

    def rel(p: str | None) -> str | None:
        return None if p is None else relative_to_root(Path(data_root), Path(p))

    entry = {
        "id": record.id,
        "task": record.task,
        "sigma": record.sigma,
        "degraded": rel(record.degraded),
        "clean": rel(record.clean),
        "psnr": psnr,
        "ssim": ssim,
    }
    if error:
        entry["error"] = error
    return entry


def manifest_header(
    *,
    data_root: str,
    data_fingerprint: str,
    records: int,
    model: Mapping[str, Any],
    measure: Mapping[str, Any],
    selection: Mapping[str, Any],
    summary: Any,
) -> dict[str, Any]:
    """The header line.

    Args:
      data_root: the absolute data root the records were read under.
      data_fingerprint: :func:`irpo_jax.data.records.fingerprint` of the records.
      records: how many record lines follow.
      model: ``{"checkpoint", "id", "source"}`` of the model that scored them.
      measure: how they were scored (``crop``, ``crop_base``, ``noise_seed``, ``metric``).
      selection: ``{"mode", "fraction", "rank_by", "seed", "selected"}``.
      summary: the per-task summary rows.
    """
    return {
        "kind": MANIFEST_KIND,
        "version": MANIFEST_VERSION,
        "data_root": data_root,
        "data_fingerprint": data_fingerprint,
        "records": records,
        "model": dict(model),
        "measure": dict(measure),
        "selection": dict(selection),
        "summary": summary,
    }


def manifest_text(header: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> str:
    """The manifest's text: the header line, then one line per entry (see the module docstring)."""
    return json.dumps(header, sort_keys=True) + "\n" + "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)


def write_manifest(path: str | os.PathLike, header: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> None:
    """Writes the manifest atomically (a hidden temporary beside ``path``, then a rename), so a
    reader never sees half a manifest."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(manifest_text(header, entries))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- reading


def mined_by(header: Mapping[str, Any]) -> dict[str, Any]:
    """The model a manifest was mined with: ``{"checkpoint", "id", "source"}`` ({} if unrecorded)."""
    return dict(header.get("model") or {})


def mining_settings(header: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a manifest was mined with, as ``{"fraction", "selection", "rank_by", "crop",
    "seed"}`` (None where the header does not record one): what ``mining.*`` and ``seed`` of a
    training config must equal for a run to reuse it."""
    sel, measure = header.get("selection", {}), header.get("measure", {})
    return {"fraction": sel.get("fraction"), "selection": sel.get("mode"), "rank_by": sel.get("rank_by"),
            "crop": measure.get("crop"), "seed": sel.get("seed")}  # fmt: skip


def _manifest_lines(path: Path) -> tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]:
    """The header and ``(line number, entry)`` pairs of a mining manifest, every line checked.

    Line numbers are 1-based lines of the file (split at ``\\n`` only, as the writer does), so
    an error points at the line an editor shows.
    """
    if not path.is_file():
        raise DataError(
            f"manifest {path} does not exist; write one with "
            "`python -m irpo_jax.mine --data_root ... --checkpoint ... --out FILE`",
            path,
        )
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read manifest {path}: {err}", path) from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"manifest {path}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); a "
            "mining manifest is JSON lines written by `python -m irpo_jax.mine` -- is this the "
            "right file? Re-run mining to write it.",
            path,
        ) from err
    lines = text.split("\n")
    fix = "re-run mining (python -m irpo_jax.mine) to write it again"

    def parse(n: int, line: str, what: str) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:  # err.lineno is always 1: one line is parsed
            raise DataError(
                f"manifest {path}, line {n}: not valid JSON ({err.msg} at column {err.colno}); expected {what}; {fix}",
                path,
            ) from None
        if not isinstance(value, dict):
            raise DataError(
                f"manifest {path}, line {n}: expected a JSON object ({what}), got "
                f"{type(value).__name__} {line.strip()[:60]}; {fix}",
                path,
            )
        return value

    if not text.strip():
        raise DataError(f"manifest {path} is empty (line 1: expected the mining header); {fix}", path)
    header = parse(1, lines[0], f"the header line with kind {MANIFEST_KIND!r}")
    if header.get("kind") != MANIFEST_KIND:
        raise DataError(
            f"{path} is not a mining manifest (line 1: kind={header.get('kind')!r}, expected {MANIFEST_KIND!r})", path
        )
    entries = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        e = parse(n, line, 'one record: {"id", "task", "selected", ...}')
        if not isinstance(e.get("id"), str) or not e["id"]:
            raise DataError(
                f'manifest {path}, line {n}: the record has no "id" (a string '
                f'such as "derain:Train/Derain/rainy/rain-1.png"), got '
                f"{e.get('id')!r}; {fix}",
                path,
            )
        if not isinstance(e.get("selected", False), bool):
            raise DataError(
                f'manifest {path}, line {n}: "selected" must be true or false, got {e["selected"]!r}; {fix}', path
            )
        entries.append((n, e))
    return header, entries


def read_manifest(path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reads a mining manifest (JSON lines: a header line, then one line per record).

    Returns:
      The header and the records (each a dict with at least a string ``"id"``).

    Raises:
      DataError: a missing or unreadable file, one that is not a mining manifest, or a line that
        is not a JSON object with a string ``"id"`` (the message names the file and the line).
    """
    header, entries = _manifest_lines(Path(path))
    return header, [e for _, e in entries]


def records_from_manifest(
    records: Sequence[Record], manifest: str | os.PathLike, root: str | os.PathLike, allow_other_root: bool = False
) -> list[Record]:
    """The subset of ``records`` a manifest selected, in ``records`` order.

    Checked before training: the manifest's data root must be this root (unless
    ``allow_other_root``: the data was moved; ids are root-relative), and every selected pair must
    be among the readable records of this dataset.

    Raises:
      DataError: naming the manifest (and the line, for a bad line), the roots or the missing
        pairs, and what to do.
    """
    header, entries = _manifest_lines(Path(manifest))
    root = str(Path(root).absolute())
    if header.get("data_root") != root and not allow_other_root:
        raise DataError(
            f"manifest {manifest} was mined on the data under {header.get('data_root')}, but "
            f"data.root is {root}. Re-mine this dataset (python -m irpo_jax.mine), or, if the same "
            "data was only moved, set data.manifest_allow_other_root=True."
        )
    wanted = [(n, e["id"]) for n, e in entries if e.get("selected")]
    if not wanted:
        raise DataError(f"manifest {manifest} selects no pair; re-mine with a larger --fraction")
    by_id = {r.id: r for r in records}
    missing = [(n, i) for n, i in wanted if i not in by_id]
    if missing:
        examples = ", ".join(f"line {n}: {i!r}" for n, i in missing[:3])
        raise DataError(
            f"manifest {manifest}: {len(missing)} of its {len(wanted)} selected pairs are not "
            f"readable training pairs under {root} (missing, unreadable, or from another "
            f"dataset), e.g. {examples}. Restore those files or re-mine this dataset."
        )
    keep = {i for _, i in wanted}
    return [r for r in records if r.id in keep]
