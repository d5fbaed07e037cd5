"""The paper's table layouts and the Markdown tables of an evaluation's results.

**Table layout** (:func:`format_table`): when the rows of IRPO Table 2 / AdaIR's five-task table
(SOTS, Rain100L, BSD68 sigma=25, GoPro, LOL) are all present, the main table has exactly those
columns and its Average is their mean (that is how 30.20/0.910 is computed); else with the five
out-of-domain rows, IRPO Table 3's layout; with the rows of the three-task table (IRPO Table 7:
SOTS, Rain100L, BSD68 sigma=15/25/50) and no GoPro/LOL, that layout; otherwise one column per
row. Every row is also listed in a second table. ``--reference adair|irpo`` adds the published
row (:mod:`irpo_jax.evaluation.published`) under ours with the difference, when the config's setting and the
model (the paper's base AdaIR) match a published table, and says why not otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from irpo_jax.data import readers

__all__ = ["FIVE_TASK_ROWS", "OOD_ROWS", "THREE_TASK_ROWS", "format_table", "layout"]

# IRPO Table 2 (= AdaIR's five-task table; denoising at sigma 25) and IRPO Table 7 (three tasks).
FIVE_TASK_ROWS = ("sots", "rain100l", "bsd68_s25", "gopro", "lol")
THREE_TASK_ROWS = ("sots", "rain100l", "bsd68_s15", "bsd68_s25", "bsd68_s50")
# IRPO Table 3: the five-task models on real-world out-of-domain sets.
OOD_ROWS = tuple(readers.OOD_SETS)


def layout(rows: Sequence[str], tasks: Mapping[str, str]) -> tuple[str, list[str]]:
    """The paper layout these rows fill (see the module docstring): (name, columns)."""
    if all(r in rows for r in FIVE_TASK_ROWS):
        return "five_task", list(FIVE_TASK_ROWS)
    if all(r in rows for r in OOD_ROWS):
        return "ood_five", list(OOD_ROWS)
    if all(r in rows for r in THREE_TASK_ROWS) and not any(tasks[r] in ("deblur", "lowlight") for r in rows):
        return "three_task", list(THREE_TASK_ROWS)
    return "all_rows", list(rows)


def _cell(psnr: float, ssim: float) -> str:
    return f"{psnr:.2f}/{ssim:.3f}"


def format_table(results: Mapping[str, Any]) -> str:
    """The results as Markdown: the paper-layout table, every row, and the oracle (if any).

    Cells are ``PSNR/SSIM`` (2 and 3 decimals, as the papers print them).
    """
    rows, table = results["rows"], results["table"]
    cols = table["columns"]
    model = results["model"]
    proto = results["protocol"]
    who = model["name"] + (f" (step {model['step']})" if model.get("step") is not None else "")
    titles = {
        "five_task": "Five-task all-in-one (layout of IRPO Table 2 / AdaIR; denoising at σ=25)",
        "ood_five": "Out-of-domain real-world sets (layout of IRPO Table 3)",
        "three_task": "Three-task all-in-one (layout of IRPO Table 7)",
        "all_rows": "All evaluated rows",
    }
    notes = []
    if proto["max_images"]:
        notes.append(f"first {proto['max_images']} image(s) per row only: not comparable with the papers")
    if not proto["whole_images"]:
        notes.append(f"some images restored in {proto['tile']}px tiles (see 'tiled'): not the protocol")
    if proto["self_ensemble"]:
        notes.append("x8 geometric self-ensemble")
    partial = {r: e for r, e in rows.items() if e.get("partial")}
    if partial:
        notes.append(
            "PARTIAL rows, scored without some of their images (--allow_partial; see "
            "left_out in results.json), not comparable with the papers: "
            + ", ".join(f"{r} ({len(e['left_out'])} left out)" for r, e in partial.items())
        )
    notes += [
        f"{r}: set score = {e['average']} ({e.get('protocol', '')})"
        for r, e in rows.items()
        if e.get("average", "mean over images") != "mean over images"
    ]
    ref = results.get("reference")

    def title(c: str) -> str:
        return rows[c]["title"] + (" (partial)" if rows[c].get("partial") else "")

    def header(first: str) -> list[str]:
        return [
            f"| {first} | " + " | ".join(title(c) for c in cols) + " | Average |",
            "|:--|" + ":-:|" * (len(cols) + 1),
        ]

    lines = [
        f"# Evaluation of {who}",
        "",
        f"PSNR (dB) / SSIM on RGB in [0, 1], images cropped to a multiple of "
        f"{proto['crop_base']} and run whole, no border shave, skimage SSIM; set score = mean "
        "over its images.",
    ]
    lines += [f"Note: {n}." for n in notes]
    lines += ["", f"## {titles[table['layout']]}", ""] + header("Method")
    avg = results["average"]
    lines.append(
        f"| {model['name']} | "
        + " | ".join(_cell(rows[c]["psnr"], rows[c]["ssim"]) for c in cols)
        + f" | {_cell(avg['psnr'], avg['ssim'])} |"
    )
    if ref and ref.get("printed"):
        lines += _reference_lines(ref, cols)
    elif ref:
        lines += ["", f"No published {ref['label']} row (--reference {ref['method']}): {ref['why']}."]
    oracle = results.get("oracle")
    if oracle:
        lines += [
            "",
            f"## Oracle (not a result): {oracle['label']} (K={oracle['k']}, seed {oracle['seed']})",
            "",
            "It uses the ground truth to choose, so it is an upper bound on what the sampled "
            "policy can reach, not a restoration method.",
            "",
        ] + header("Method")
        oa = oracle["average"]
        lines.append(
            f"| {model['name']}, oracle best-of-{oracle['k']} | "
            + " | ".join(_cell(rows[c]["oracle"]["psnr"], rows[c]["oracle"]["ssim"]) for c in cols)
            + f" | {_cell(oa['psnr'], oa['ssim'])} |"
        )
    shown = bool(ref and ref.get("printed"))
    lines += [
        "",
        "## Every row",
        "",
        "| Row | Task | σ | Images | PSNR (dB) | SSIM | Tiled |"
        + (" Oracle PSNR | Oracle SSIM |" if oracle else "")
        + (f" {ref['label']} published | Δ (ours − published) |" if shown else ""),
        "|:--|:--|--:|--:|--:|--:|--:|" + ("--:|--:|" if oracle else "") + (":-:|:-:|" if shown else ""),
    ]
    for r, e in rows.items():
        images = f"{e['images']}" + (f" (partial: {len(e['left_out'])} left out)" if e.get("partial") else "")
        line = (
            f"| {r} | {e['task']} | {e['sigma'] or ''} | {images} | {e['psnr']:.2f} | {e['ssim']:.4f} | {e['tiled']} |"
        )
        if oracle:
            line += f" {e['oracle']['psnr']:.2f} | {e['oracle']['ssim']:.4f} |"
        if shown:
            p = ref["rows"].get(r)
            line += (
                f" {_cell(p['psnr'], p['ssim'])} | {p['delta_psnr']:+.2f}/{p['delta_ssim']:+.3f} |" if p else " – | – |"
            )
        lines.append(line)
    return "\n".join(lines) + "\n"


def _reference_lines(ref: Mapping[str, Any], cols: Sequence[str]) -> list[str]:
    """The published row and our difference, as two lines of the paper-layout table."""
    pub, delta = [], []
    for c in cols:
        p = ref["rows"].get(c)
        pub.append(_cell(p["psnr"], p["ssim"]) if p else "–")
        delta.append(f"{p['delta_psnr']:+.2f}/{p['delta_ssim']:+.3f}" if p else "–")
    same = next((t for t in ref["tables"] if list(t["rows"]) == list(cols) and t["average"]), None)
    note = []
    if same:
        avg, printed = same["average"], same["printed_average"]
        cell = _cell(avg["psnr"], avg["ssim"])
        if same["printed_differs"]:  # the paper's Average cell is not its columns' mean
            cell += f" (printed: {_cell(printed['psnr'], printed['ssim'])})"
            what = " and ".join(k.upper() for k in same["printed_differs"])
            note = [
                "",
                f"The published Average is the mean of the published columns; {ref['label']}'s "
                f"printed {what} Average in {same['title']} ({_cell(printed['psnr'], printed['ssim'])}) "
                "is not its columns' mean, so ours is compared with the column mean.",
            ]
        pub.append(cell)
    else:
        pub.append("–")
    d = same["delta_average"] if same else None
    delta.append(f"{d['psnr']:+.2f}/{d['ssim']:+.3f}" if d else "–")
    tables = "; ".join(t["title"] for t in ref["tables"])
    return [
        f"| {ref['label']}, published ({tables}) | " + " | ".join(pub) + " |",
        "| ours − published | " + " | ".join(delta) + " |",
    ] + note
