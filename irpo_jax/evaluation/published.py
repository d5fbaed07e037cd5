"""The paper's published numbers, in one table, for ``evaluate --reference adair|irpo``.

PSNR (dB) / SSIM as IRPO prints them (docs: irpo-paper.txt): Table 1 (single-task AdaIR and IRPO,
each trained on its own task), Table 2 (five-task all-in-one, denoising at sigma 25), Table 3
(the same five-task models on the out-of-domain real-world sets) and Table 7 (three-task
all-in-one). The AdaIR rows are the ones IRPO reprints (Table 2's equals AdaIR's own paper). The
configs' docstrings list the same rows (``configs/*.py``, section PUBLISHED).

A *setting* is a config's name without its stage suffix (``allinone5`` for ``allinone5`` and
``allinone5_supervised``); the published numbers are for the paper's model, the ``base`` AdaIR
(dim 48, blocks (4, 6, 6, 8)), so :func:`reference` prints them only for that architecture.

Averages: an evaluation's average is compared with the mean of the published columns, which the
printed Average is everywhere up to rounding except once: IRPO's Table 3 SSIM average is printed
as 0.809 while its columns' mean is 0.789 (AdaIR's 0.730 is its columns' mean). The tables show
the column mean and, where the printed Average differs from it by more than rounding, the printed
one beside it. Table 3's PSNR averages are its columns' means (AdaIR 20.30, IRPO 23.73): a gain of
3.43 dB, as the abstract and Sec. 4.3 say; only the table's caption says 2.53 dB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["METHODS", "PUBLISHED", "TABLES", "Table", "reference", "setting_of"]

METHODS = {"adair": "AdaIR", "irpo": "IRPO"}
# A printed Average agrees with its columns' mean when within the rounding of the printed digits
# (two decimals of PSNR, three of SSIM, and the columns' own rounding).
AVERAGE_TOLERANCE = {"psnr": 0.01, "ssim": 0.001}


@dataclasses.dataclass(frozen=True)
class Table:
    """One published table of a setting: its rows (evaluate's row names, in the paper's column
    order), each method's ``(PSNR, SSIM)`` per row, and the printed Average (None: not printed)."""

    title: str
    rows: tuple[str, ...]
    values: Mapping[str, Mapping[str, tuple[float, float]]]  # method -> row -> (PSNR, SSIM)
    average: Mapping[str, tuple[float, float] | None]


def _table(
    title: str,
    rows: Sequence[str],
    adair: Sequence[tuple[float, float]],
    irpo: Sequence[tuple[float, float]],
    average: Mapping[str, tuple[float, float] | None],
) -> Table:
    assert len(rows) == len(adair) == len(irpo)
    return Table(title, tuple(rows), {"adair": dict(zip(rows, adair)), "irpo": dict(zip(rows, irpo))}, dict(average))


FIVE_TASK = ("sots", "rain100l", "bsd68_s25", "gopro", "lol")
OOD_FIVE = ("rrshid", "gtrain", "sidd", "reloblur", "lolistreet")
THREE_TASK = ("sots", "rain100l", "bsd68_s15", "bsd68_s25", "bsd68_s50")
DENOISE = ("urban100_s15", "urban100_s25", "urban100_s50", "bsd68_s15", "bsd68_s25", "bsd68_s50")

# setting -> its published tables (a row appears in at most one table of a setting).
TABLES: dict[str, tuple[Table, ...]] = {
    "allinone5": (
        _table(
            "IRPO Table 2 (five-task all-in-one, denoising at σ=25)",
            FIVE_TASK,
            [(30.53, 0.978), (38.02, 0.981), (31.35, 0.889), (28.12, 0.858), (23.00, 0.845)],
            [(31.36, 0.982), (38.72, 0.987), (32.13, 0.896), (28.89, 0.863), (24.08, 0.858)],
            {"adair": (30.20, 0.910), "irpo": (31.03, 0.917)},
        ),
        _table(
            "IRPO Table 3 (five-task models on the out-of-domain real-world sets)",
            OOD_FIVE,
            [(16.71, 0.475), (19.58, 0.684), (28.83, 0.902), (20.43, 0.806), (15.96, 0.781)],
            [(19.94, 0.623), (21.17, 0.692), (33.18, 0.919), (21.94, 0.837), (22.43, 0.875)],
            {"adair": (20.30, 0.730), "irpo": (23.73, 0.809)},
        ),
    ),
    "allinone3": (
        _table(
            "IRPO Table 7 (three-task all-in-one)",
            THREE_TASK,
            [(31.06, 0.980), (38.64, 0.983), (34.12, 0.935), (31.45, 0.892), (28.19, 0.802)],
            [(31.62, 0.983), (39.13, 0.988), (34.54, 0.938), (32.04, 0.905), (29.56, 0.823)],
            {"adair": (32.69, 0.918), "irpo": (33.38, 0.927)},
        ),
    ),
    "dehaze": (
        _table(
            "IRPO Table 1(a) (single-task dehazing)",
            ("sots",),
            [(31.80, 0.981)],
            [(32.31, 0.983)],
            {"adair": None, "irpo": None},
        ),
    ),
    "derain": (
        _table(
            "IRPO Table 1(b) (single-task deraining)",
            ("rain100l",),
            [(38.90, 0.985)],
            [(39.38, 0.988)],
            {"adair": None, "irpo": None},
        ),
    ),
    "denoise": (
        _table(
            "IRPO Table 1(c) (single-task denoising)",
            DENOISE,
            [(34.96, 0.953), (32.74, 0.931), (29.70, 0.885), (34.36, 0.938), (31.72, 0.897), (28.49, 0.813)],
            [(35.08, 0.954), (32.95, 0.933), (30.07, 0.888), (34.45, 0.940), (31.91, 0.899), (28.71, 0.815)],
            {"adair": (32.00, 0.903), "irpo": (32.19, 0.905)},
        ),
    ),
}

# method -> setting -> row -> (PSNR, SSIM): every published number, flat.
PUBLISHED: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    m: {s: {r: v for t in tables for r, v in t.values[m].items()} for s, tables in TABLES.items()} for m in METHODS
}


def setting_of(config_name: str) -> str:
    """The published setting a config name stands for (``allinone5_supervised`` ->
    ``allinone5``); names of the shrunk variants (``_demo``, ``_smoke``) stay as they are and
    match no setting."""
    return config_name.removesuffix("_supervised")


def _base_architecture(model_config: Mapping[str, Any]) -> str | None:
    """None when ``model_config`` is the paper's base AdaIR, else what differs."""
    from irpo_jax.models import adair

    base = dataclasses.asdict(adair.VARIANTS["base"])
    differs = [
        f"{k}={model_config.get(k)!r} (paper: {v!r})"
        for k, v in base.items()
        if k != "mask_rule" and _plain(model_config.get(k)) != _plain(v)
    ]
    return ", ".join(differs) or None


def _mean(pairs: Sequence[tuple[float, float]]) -> dict[str, float]:
    """``{"psnr", "ssim"}``: the means of (PSNR, SSIM) pairs."""
    return {"psnr": sum(p for p, _ in pairs) / len(pairs), "ssim": sum(s for _, s in pairs) / len(pairs)}


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def reference(
    method: str, setting: str, rows: Mapping[str, Mapping[str, float]], model_config: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The published numbers matching an evaluation, with our differences.

    Args:
      method: ``"adair"`` or ``"irpo"``.
      setting: the config's setting (:func:`setting_of`).
      rows: the evaluation's rows, ``{row: {"psnr", "ssim", ...}}``.
      model_config: the evaluated model's AdaIR config (``dataclasses.asdict``), or None.

    Returns:
      ``{"method", "label", "setting", "printed": bool, "why" (when not printed), "rows": {row:
      {"psnr", "ssim", "delta_psnr", "delta_ssim", "table"}}, "tables": [{"title", "rows",
      "average": {"psnr", "ssim"} | None, "printed_average": {"psnr", "ssim"} | None,
      "printed_differs": [metric, ...], "delta_average": ... | None}]}``. A table's ``average``
      is the mean of its published columns (what ``delta_average`` compares our mean with);
      ``printed_average`` is the paper's Average cell, and ``printed_differs`` names the metrics
      where it is not its columns' mean (beyond :data:`AVERAGE_TOLERANCE`). A table's average is
      compared only when every one of its rows was evaluated.

    Raises:
      ValueError: an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown reference {method!r}; valid: {', '.join(METHODS)}")
    out: dict[str, Any] = {
        "method": method,
        "label": METHODS[method],
        "setting": setting,
        "printed": False,
        "rows": {},
        "tables": [],
    }
    if setting not in TABLES:
        out["why"] = (
            f"no published numbers for the setting {setting!r} (known: "
            f"{', '.join(TABLES)}; the demo and smoke variants are not the paper's setting)"
        )
        return out
    differs = _base_architecture(model_config or {}) if model_config is not None else "unknown model"
    if differs:
        out["why"] = f"the published numbers are for the paper's base AdaIR; this model has {differs}"
        return out
    for table in TABLES[setting]:
        present = [r for r in table.rows if r in rows]
        if not present:
            continue
        for r in present:
            p, s = table.values[method][r]
            out["rows"][r] = {
                "psnr": p,
                "ssim": s,
                "delta_psnr": rows[r]["psnr"] - p,
                "delta_ssim": rows[r]["ssim"] - s,
                "table": table.title,
            }
        printed = table.average[method]
        complete = len(present) == len(table.rows) and printed is not None
        columns = _mean([table.values[method][r] for r in table.rows])
        ours = _mean([(rows[r]["psnr"], rows[r]["ssim"]) for r in table.rows]) if complete else None
        printed_avg = {"psnr": printed[0], "ssim": printed[1]} if printed is not None else None
        out["tables"].append(
            {
                "title": table.title,
                "rows": list(table.rows),
                "average": columns if complete else None,
                "printed_average": printed_avg if complete else None,
                "printed_differs": [
                    k
                    for k in ("psnr", "ssim")
                    if printed_avg is not None and abs(printed_avg[k] - columns[k]) > AVERAGE_TOLERANCE[k]
                ],
                "delta_average": {k: ours[k] - columns[k] for k in ("psnr", "ssim")} if complete else None,
            }
        )
    if not out["rows"]:
        out["why"] = (
            f"none of the evaluated rows ({', '.join(rows)}) is in the published tables of "
            f"{setting} ({', '.join(r for t in TABLES[setting] for r in t.rows)})"
        )
        return out
    out["printed"] = True
    return out
