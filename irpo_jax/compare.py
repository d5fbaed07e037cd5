"""A static comparison page of two evaluations: which images improved, which got worse, and how.

    python -m irpo_jax.compare RUN_A RUN_B --out DIR [--crops 2] [--data_root DIR]

``RUN_A`` and ``RUN_B`` are folders written by ``python -m irpo_jax.evaluate ... --save_images``:
the ``<out>/eval/<name>/`` folder itself (``results.json``, ``per_image.csv``, ``images/``), or
an ``--out`` folder holding exactly one such evaluation. Typically two checkpoints on the same
sets (AdaIR vs IRPO, before vs after post-training); B is compared with A (deltas are B - A).

``DIR/index.html`` is one self-contained page (inline CSS, no scripts, nothing fetched from the
network) with its images as PNG files in ``DIR/img/``:

* per set, the table of A vs B (PSNR/SSIM and their differences), with the evaluations' Average;
* per set, every image's PSNR/SSIM under A and B, sorted by the change in PSNR;
* for the images with the largest gains and losses (``--crops`` each), crops side by side --
  degraded | A | B | clean -- of the square where A and B differ most (the largest mean absolute
  difference in a window a quarter of the image's shorter side), enlarged without interpolation,
  next to the whole degraded image with that square marked, as in IRPO's Figure 3.

The degraded and clean images are read again from the data the evaluations name
(``settings.data`` in results.json; ``--data_root`` if it moved), by the same readers, so noisy
sets get the same seeded noise. ``DIR/compare.json`` holds the numbers. A ``DIR`` that holds
anything but an earlier comparison page is never written into.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import math
import os
import pathlib
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from irpo_jax import cli, evaluation, safe_files
from irpo_jax.data import readers

__all__ = ["COMPARE_FORMAT", "CompareError", "Run", "compare", "load_run", "main", "zoom_window"]

COMPARE_FORMAT = "irpo-jax-compare"
ZOOM_PIXELS = 192  # crops are enlarged to about this size on the page
OVERVIEW_PIXELS = 256  # the longest side of the whole-image overview


class CompareError(ValueError):
    """Inputs that cannot be compared; the message names the folder or file and what to do."""


@dataclasses.dataclass
class Run:
    """One evaluation output: its folder (holding results.json and images/) and its results."""

    folder: pathlib.Path
    results: dict[str, Any]

    @property
    def label(self) -> str:
        m = self.results["model"]
        return m["name"] + (f" (step {m['step']})" if m.get("step") is not None else "")

    def image(self, row: str, name: str) -> pathlib.Path:
        return evaluation.image_path(self.folder / "images", row, name)


def load_run(path: str | os.PathLike, which: str = "RUN") -> Run:
    """Reads an evaluation output folder and checks that it can be compared.

    Raises:
      CompareError: not an evaluation output, results without the settings that name the data,
        no saved images, or saved images missing (naming the first ones).
    """
    p = pathlib.Path(path)
    if not p.is_dir():
        raise CompareError(
            f"{which} {p} does not exist or is not a folder; give the --out folder of "
            "`python -m irpo_jax.evaluate ... --save_images` (or its eval/<name>/ folder)"
        )
    if (p / "results.json").is_file():
        leaf = p
    else:
        found = sorted(p.glob("eval/*/results.json")) or sorted(p.glob("*/results.json"))
        if not found:
            raise CompareError(
                f"{which} {p} is not an evaluation output: no results.json in it or in "
                f"{p}/eval/*/; write one with `python -m irpo_jax.evaluate ... --save_images "
                f"--out {p}`"
            )
        if len(found) > 1:
            raise CompareError(
                f"{which} {p} holds {len(found)} evaluations "
                f"({', '.join(str(f.parent) for f in found)}); give the one to compare"
            )
        leaf = found[0].parent
    file = leaf / "results.json"
    try:
        results = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CompareError(f"{which}: cannot read {file} as JSON ({err}); is it an evaluation output?") from err
    if not isinstance(results, dict) or results.get("format") != evaluation.EVAL_FORMAT:
        raise CompareError(
            f"{which}: {file} is not written by irpo_jax.evaluate (format "
            f"{results.get('format') if isinstance(results, dict) else None!r}, expected "
            f"{evaluation.EVAL_FORMAT!r})"
        )
    if not isinstance(results.get("settings"), dict) or "data" not in results["settings"]:
        raise CompareError(
            f"{which}: {file} does not record the data it was evaluated on (written by "
            "training or an earlier version); evaluate the checkpoint with `python -m "
            "irpo_jax.evaluate ... --save_images`"
        )
    run = Run(leaf, results)
    if not (leaf / "images").is_dir():
        raise CompareError(f"{which}: {leaf} has no restored images (images/); evaluate with --save_images")
    absent = [
        str(run.image(r["set"], r["name"]))
        for r in results["per_image"]
        if not run.image(r["set"], r["name"]).is_file()
    ]
    if absent:
        raise CompareError(
            f"{which}: {len(absent)} of the {len(results['per_image'])} restored images "
            f"are missing, e.g. {', '.join(absent[:3])}; evaluate again with --save_images"
        )
    return run


def _check_same_images(a: Run, b: Run) -> list[str]:
    """Raises unless A and B scored the same images of the same rows; returns notes on settings
    that differ (numbers of both are shown, but a reader should know)."""
    rows_a, rows_b = list(a.results["rows"]), list(b.results["rows"])
    if set(rows_a) != set(rows_b):
        raise CompareError(
            f"the runs evaluated different sets: A ({a.folder}) has {', '.join(rows_a)}; "
            f"B ({b.folder}) has {', '.join(rows_b)}; evaluate both with the same --sets"
        )
    for row in rows_a:
        na = {r["name"] for r in a.results["per_image"] if r["set"] == row}
        nb = {r["name"] for r in b.results["per_image"] if r["set"] == row}
        if na != nb:
            only = sorted(na - nb)[:3] + sorted(nb - na)[:3]
            raise CompareError(
                f"set {row}: A and B scored different images ({len(na)} and {len(nb)}; "
                f"not in both: {', '.join(only)}); evaluate both with the same settings "
                "(--max_images, --allow_partial, data)"
            )
    sa, sb = a.results["settings"], b.results["settings"]
    return [
        f"{k}: A {json.dumps(sa.get(k))}, B {json.dumps(sb.get(k))}"
        for k in sorted(set(sa) | set(sb))
        if sa.get(k) != sb.get(k) and k != "rows"
    ]


# ----------------------------------------------------------------------------- images


def zoom_window(a: np.ndarray, b: np.ndarray, side: int, fallback: np.ndarray | None = None) -> tuple[int, int]:
    """``(top, left)`` of the ``side`` x ``side`` window where images ``a`` and ``b`` (H, W, C)
    differ most (the largest sum of absolute differences); ``fallback`` (H, W, C) decides when
    they are equal everywhere (e.g. the error against the clean image)."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).sum(axis=-1)
    if not diff.any() and fallback is not None:
        diff = np.abs(fallback.astype(np.float64)).sum(axis=-1)
    h, w = diff.shape
    side = min(side, h, w)
    c = np.zeros((h + 1, w + 1))
    c[1:, 1:] = diff.cumsum(0).cumsum(1)  # integral image: any window's sum in four lookups
    sums = c[side:, side:] - c[:-side, side:] - c[side:, :-side] + c[:-side, :-side]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.rint(readers.to_float01(img) * 255.0).astype(np.uint8) if img.dtype != np.uint8 else img


def _save(path: pathlib.Path, img: np.ndarray) -> tuple[int, int]:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return img.shape[1], img.shape[0]


def _overview(img: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """The whole image scaled to about :data:`OVERVIEW_PIXELS`, the zoomed square outlined."""
    from PIL import Image, ImageDraw

    h, w = img.shape[:2]
    scale = OVERVIEW_PIXELS / max(h, w)
    scale = max(1, int(scale)) if scale >= 1 else scale  # small images: whole pixels, no blur
    pil = Image.fromarray(img).resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST if scale >= 1 else Image.BILINEAR
    )
    draw = ImageDraw.Draw(pil)
    box = [left * scale, top * scale, (left + side) * scale - 1, (top + side) * scale - 1]
    width = max(2, round(pil.size[0] / 128))
    draw.rectangle(box, outline=(255, 40, 40), width=width)
    return np.asarray(pil)


# ----------------------------------------------------------------------------- the page


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _delta(v: float, digits: int) -> str:
    cls = "up" if v > 0 else "down" if v < 0 else "same"
    return f'<td class="{cls}">{v:+.{digits}f}</td>'


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d1d1f; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e5e5e5; text-align: right; }
th:first-child, td:first-child, th.name, td.name { text-align: left; }
td.up { color: #0a7d2c; } td.down { color: #c62828; } td.same { color: #777; }
.note { color: #8a5300; } .muted { color: #666; }
figure { margin: 12px 0 24px; } figcaption { margin-top: 4px; }
.strip { display: flex; gap: 8px; align-items: flex-end; flex-wrap: wrap; }
.strip div { text-align: center; font-size: 12px; color: #444; }
.strip img { display: block; image-rendering: pixelated; border: 1px solid #ccc; }
details { margin: 8px 0; } .scroll { max-height: 420px; overflow-y: auto; display: inline-block; }
"""


def compare(a: Run, b: Run, out: pathlib.Path, *, crops: int = 2, data_root: str | None = None) -> dict[str, Any]:
    """Writes the comparison page of ``b`` against ``a`` into ``out`` (``index.html``, ``img/``,
    ``compare.json``; ``out`` must not exist yet) and returns what compare.json holds.

    Raises:
      CompareError: the runs do not match, or the data they were evaluated on cannot be read.
    """
    notes = _check_same_images(a, b)
    data = dict(a.results["settings"]["data"])
    if data_root:
        data["root"] = data_root
    rows = list(a.results["rows"])
    try:
        cfg = readers.resolve_data_config(data)
        bases, _ = evaluation.resolve_rows(cfg, rows)
        sets = readers.eval_sets(cfg, bases, allow_partial=True)
    except (readers.DataError, evaluation.EvalError) as err:
        raise CompareError(
            f"the degraded and clean images are read again from the data the runs were "
            f"evaluated on, which failed: {err}. Pass --data_root DIR if the data moved"
        ) from err
    per_a = {(r["set"], r["name"]): r for r in a.results["per_image"]}
    per_b = {(r["set"], r["name"]): r for r in b.results["per_image"]}
    summary: dict[str, Any] = {
        "format": COMPARE_FORMAT,
        "version": 1,
        "a": {"label": a.label, "folder": str(a.folder.absolute())},
        "b": {"label": b.label, "folder": str(b.folder.absolute())},
        "notes": notes,
        "rows": {},
    }
    body: list[str] = []
    img_dir = out / "img"
    for row in rows:
        ea, eb = a.results["rows"][row], b.results["rows"][row]
        es = sets[row]
        index = {es.item_name(i): i for i in range(len(es))}
        images = []
        for (s, name), ra in per_a.items():
            if s != row:
                continue
            rb = per_b[(row, name)]
            images.append(
                {
                    "name": name,
                    "a_psnr": ra["psnr"],
                    "b_psnr": rb["psnr"],
                    "a_ssim": ra["ssim"],
                    "b_ssim": rb["ssim"],
                    "d_psnr": rb["psnr"] - ra["psnr"],
                    "d_ssim": rb["ssim"] - ra["ssim"],
                }
            )
        images.sort(key=lambda r: (-r["d_psnr"], r["name"]))
        gains = [r for r in images if r["d_psnr"] > 0][:crops]
        losses = [r for r in reversed(images) if r["d_psnr"] < 0][:crops]
        figures = {"gains": [], "losses": []}
        for kind, chosen in (("gains", gains), ("losses", losses)):
            for r in chosen:
                if r["name"] not in index:
                    raise CompareError(
                        f"set {row}: {r['name']} is no longer in the data under "
                        f"{cfg.root}; pass --data_root DIR with the evaluated data"
                    )
                figures[kind].append(
                    _figure(
                        a,
                        b,
                        row,
                        es,
                        index[r["name"]],
                        r,
                        img_dir,
                        f"{len(summary['rows'])}_{kind}_{len(figures[kind])}",
                    )
                )
        summary["rows"][row] = {
            "title": ea["title"],
            "images": len(images),
            "a": {"psnr": ea["psnr"], "ssim": ea["ssim"]},
            "b": {"psnr": eb["psnr"], "ssim": eb["ssim"]},
            "delta": {"psnr": eb["psnr"] - ea["psnr"], "ssim": eb["ssim"] - ea["ssim"]},
            "partial": bool(ea.get("partial") or eb.get("partial")),
            "improved": sum(r["d_psnr"] > 0 for r in images),
            "worse": sum(r["d_psnr"] < 0 for r in images),
            "per_image": images,
            "figures": figures,
        }
        body += _row_section(row, summary["rows"][row], a, b)
    avg = {
        "a": a.results["average"],
        "b": b.results["average"],
        "columns": a.results["table"]["columns"] if a.results["table"] == b.results["table"] else None,
    }
    summary["average"] = avg
    page = _page(a, b, summary, notes, body)
    (out / "index.html").write_text(page, encoding="utf-8")
    (out / "compare.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _figure(
    a: Run, b: Run, row: str, es: readers.EvalSet, i: int, r: Mapping[str, Any], img_dir: pathlib.Path, key: str
) -> dict[str, Any]:
    """Writes one figure's crops; returns their file names and the window."""
    from PIL import Image

    item = es[i]
    degraded, clean = _to_u8(item["degraded"]), _to_u8(item["clean"])
    ya = np.asarray(Image.open(a.image(row, r["name"])).convert("RGB"))
    yb = np.asarray(Image.open(b.image(row, r["name"])).convert("RGB"))
    for label, img, run in (("A", ya, a), ("B", yb, b)):
        if img.shape != clean.shape:
            raise CompareError(
                f"set {row}: the restored image {run.image(row, r['name'])} is "
                f"{img.shape[1]}x{img.shape[0]} but the data's image is "
                f"{clean.shape[1]}x{clean.shape[0]}; was {label} evaluated on other data?"
            )
    side = max(8, min(clean.shape[:2]) // 4)
    top, left = zoom_window(ya, yb, side, fallback=ya.astype(np.int16) - clean)
    side = min(side, *clean.shape[:2])
    zoom = max(1, ZOOM_PIXELS // side)
    files = {}
    for part, img in (("degraded", degraded), ("a", ya), ("b", yb), ("clean", clean)):
        crop = img[top : top + side, left : left + side]
        crop = np.repeat(np.repeat(crop, zoom, axis=0), zoom, axis=1)
        files[part] = f"img/{key}_{part}.png"
        _save(img_dir.parent / files[part], crop)
    files["overview"] = f"img/{key}_overview.png"
    ow, oh = _save(img_dir.parent / files["overview"], _overview(degraded, top, left, side))
    return {
        "name": r["name"],
        "files": files,
        "window": {"top": top, "left": left, "side": side},
        "zoom": zoom,
        "crop_pixels": side * zoom,
        "overview_size": [ow, oh],
    }


def _row_section(row: str, s: Mapping[str, Any], a: Run, b: Run) -> list[str]:
    out = [f'<section id="row-{_esc(row)}">', f"<h2>{_esc(s['title'])} <span class=muted>({_esc(row)})</span></h2>"]
    if s["partial"]:
        out.append('<p class="note">Partial row (evaluated with --allow_partial): not every image of the set.</p>')
    out.append(f"<p>{s['images']} images: {s['improved']} better under B, {s['worse']} worse (by PSNR).</p>")
    for kind, title in (("gains", "Largest gains (B over A)"), ("losses", "Largest losses (B under A)")):
        figs = s["figures"][kind]
        out.append(f"<h3>{title}</h3>")
        if not figs:
            out.append(f"<p class=muted>No image {'improved' if kind == 'gains' else 'got worse'}.</p>")
        per = {r["name"]: r for r in s["per_image"]}
        for f in figs:
            r = per[f["name"]]
            cell = f["crop_pixels"]
            parts = [
                ("whole degraded image (square: the crops)", f["files"]["overview"], *f["overview_size"]),
                ("degraded", f["files"]["degraded"], cell, cell),
                (f"A: {a.label}, {r['a_psnr']:.2f} dB", f["files"]["a"], cell, cell),
                (f"B: {b.label}, {r['b_psnr']:.2f} dB", f["files"]["b"], cell, cell),
                ("clean", f["files"]["clean"], cell, cell),
            ]
            w = f["window"]
            out += ["<figure><div class=strip>"]
            out += [
                f'<div><img src="{_esc(src)}" width="{iw}" height="{ih}" alt="{_esc(lab)}">{_esc(lab)}</div>'
                for lab, src, iw, ih in parts
            ]
            out.append(
                f"</div><figcaption><b>{_esc(f['name'])}</b>: PSNR {r['a_psnr']:.2f} → {r['b_psnr']:.2f} "
                f"dB ({r['d_psnr']:+.2f}), SSIM {r['a_ssim']:.4f} → {r['b_ssim']:.4f} ({r['d_ssim']:+.4f}); "
                f"crops: {w['side']}x{w['side']} px at ({w['left']}, {w['top']}), where A and B differ "
                f"most, enlarged {f['zoom']}x</figcaption></figure>"
            )
    out += [
        "<h3>Every image, by the change in PSNR</h3><div class=scroll>",
        (
            '<table class="per-image"><thead><tr><th>#</th><th class=name>Image</th><th>A PSNR</th>'
            "<th>B PSNR</th><th>Δ PSNR</th><th>A SSIM</th><th>B SSIM</th><th>Δ SSIM</th></tr></thead><tbody>"
        ),
    ]
    for k, r in enumerate(s["per_image"], 1):
        out.append(
            f"<tr><td>{k}</td><td class=name>{_esc(r['name'])}</td><td>{r['a_psnr']:.2f}</td>"
            f"<td>{r['b_psnr']:.2f}</td>{_delta(r['d_psnr'], 2)}<td>{r['a_ssim']:.4f}</td>"
            f"<td>{r['b_ssim']:.4f}</td>{_delta(r['d_ssim'], 4)}</tr>"
        )
    out += ["</tbody></table></div>", "</section>"]
    return out


def _page(a: Run, b: Run, summary: Mapping[str, Any], notes: Sequence[str], body: Sequence[str]) -> str:
    def who(run: Run) -> str:
        m = run.results["model"]
        extra = f"; checkpoint {m['checkpoint']}" if m.get("checkpoint") else ""
        return f"{_esc(run.label)} <span class=muted>({_esc(run.folder)}{_esc(extra)})</span>"

    head = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="generator" content="irpo_jax.compare">',
        f"<title>{_esc(a.label)} vs {_esc(b.label)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(a.label)} (A) vs {_esc(b.label)} (B)</h1>",
        f"<p>A: {who(a)}<br>B: {who(b)}</p>",
        (
            "<p class=muted>PSNR (dB) / SSIM as irpo_jax.evaluate scored them (RGB in [0, 1], images "
            "cropped to a multiple of 16 and run whole, skimage SSIM). Δ = B − A. Crops show the "
            "square where A and B differ most, enlarged without interpolation.</p>"
        ),
    ]
    head += [f'<p class="note">Settings differ: {_esc(n)}</p>' for n in notes]
    head.append(
        '<h2>Per set</h2><table id="summary"><thead><tr><th>Set</th><th>Images</th><th>A PSNR/SSIM</th>'
        "<th>B PSNR/SSIM</th><th>Δ PSNR</th><th>Δ SSIM</th><th>Better / worse</th></tr></thead><tbody>"
    )
    for row, s in summary["rows"].items():
        head.append(
            f'<tr><td><a href="#row-{_esc(row)}">{_esc(s["title"])}</a>{" (partial)" if s["partial"] else ""}'
            f"</td><td>{s['images']}</td><td>{s['a']['psnr']:.2f}/{s['a']['ssim']:.4f}</td>"
            f"<td>{s['b']['psnr']:.2f}/{s['b']['ssim']:.4f}</td>{_delta(s['delta']['psnr'], 2)}"
            f"{_delta(s['delta']['ssim'], 4)}<td>{s['improved']} / {s['worse']}</td></tr>"
        )
    avg = summary["average"]
    if avg["columns"] and all(math.isfinite(avg[k]["psnr"]) for k in ("a", "b")):
        head.append(
            f"<tr><td><b>Average</b> <span class=muted>({_esc(', '.join(avg['columns']))})</span></td><td></td>"
            f"<td>{avg['a']['psnr']:.2f}/{avg['a']['ssim']:.4f}</td><td>{avg['b']['psnr']:.2f}/"
            f"{avg['b']['ssim']:.4f}</td>{_delta(avg['b']['psnr'] - avg['a']['psnr'], 2)}"
            f"{_delta(avg['b']['ssim'] - avg['a']['ssim'], 4)}<td></td></tr>"
        )
    head.append("</tbody></table>")
    return "\n".join([*head, *body, "</body></html>"]) + "\n"


# ----------------------------------------------------------------------------- CLI


def _prepare_out(out: pathlib.Path) -> None:
    """Refuses an ``out`` that holds anything but an earlier comparison page (never deleted)."""
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise CompareError(f"--out {out}: {blocker} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        marker = out / "compare.json"
        try:
            ours = json.loads(marker.read_text()).get("format") == COMPARE_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise CompareError(
                f"--out {out} exists and is not a comparison page written by "
                "irpo_jax.compare; nothing was written. Choose an empty or new folder"
            )


def _cannot_write(err: OSError) -> str:
    where = f" {err.filename}" if err.filename else ""
    return f"cannot write{where}: {err.strerror or err}; choose another --out"


def _run(args: argparse.Namespace) -> int:
    """The page the flags ask for, built in a temporary folder and moved into place whole."""
    out = pathlib.Path(args.out)
    if args.crops < 0:
        raise CompareError(f"--crops {args.crops}: give 0 or more figures per set")
    a, b = load_run(args.run_a, "RUN_A"), load_run(args.run_b, "RUN_B")
    _prepare_out(out)
    with safe_files.atomic_directory(out) as tmp:
        summary = compare(a, b, tmp, crops=args.crops, data_root=args.data_root or None)
        if out.exists():
            shutil.rmtree(out)  # an earlier page (checked above)
    n = sum(r["images"] for r in summary["rows"].values())
    print(f"comparison page: {out / 'index.html'} ({len(summary['rows'])} sets, {n} images; open it in a browser)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for every error)."""
    p = cli.ArgumentParser(
        prog="python -m irpo_jax.compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_a", help="evaluation output A (evaluate --save_images --out)")
    p.add_argument("run_b", help="evaluation output B, compared with A")
    p.add_argument("--out", required=True, help="folder for index.html and its images (new, or an earlier page)")
    p.add_argument("--crops", type=int, default=2, help="figures per set for the largest gains and for the losses")
    p.add_argument("--data_root", default="", help="where the evaluated data is now, if it moved")
    args = p.parse_args(argv)
    return cli.main_errors(lambda: _run(args), (CompareError,), code=2, os_error=_cannot_write)


if __name__ == "__main__":
    sys.exit(main())
