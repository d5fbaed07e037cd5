"""From downloaded archives to the AdaIR data layout, with every set counted: ``prepare``.

    python -m irpo_jax.data.prepare --downloads ~/Downloads/irpo --out data/
    python -m irpo_jax.data.prepare --check data/

``--downloads`` is a folder holding the releases as downloaded -- zip/tar/7z/rar archives, their
extracted folders, or both, under any sub-folders (:mod:`irpo_jax.data.archives`). Each training
set, test set and out-of-domain set the configs read is recognised by its release structure
(:mod:`irpo_jax.data.releases` cites where each structure comes from), laid out under ``--out``
as the readers expect (``Train/...``, ``test/...``, ``test/ood/<set>``; plain files hard-linked,
or copied across filesystems; archive members extracted; no image is re-encoded), AdaIR's list
files are written to ``<out>/data_dir/`` (from what was found, or AdaIR's own with ``--lists``),
and each set's count is checked against its published size. The report has one line per set:
found, missing (and where it is published), or a count that differs (expected vs found).

Safety: the downloads are only read. Each destination folder (a *unit*: ``Train/Deblur``,
``test/ood/sidd``, ...) is staged in a hidden sibling and renamed into place whole, with a
``.prepared.json`` inside naming its files; its list file is written before the rename, so an
interrupted run leaves either the whole unit or none of it (the next run removes the staging
leftovers). A rerun with the same downloads changes nothing; a unit prepare laid out before is
replaced only when the downloads now give other files and it holds exactly the files it was laid
out with; a folder laid out by hand is never touched (``--check`` reports on it).

``--check DIR`` reads a data root with the same readers ``train`` and ``evaluate`` use and says,
per set, how many pairs they find against the published size, and what a run would read: pairs
per task, AdaIR's repeats, the epoch, and the run lengths of ``configs/allinone5.py``'s two stages.
Exit status: 0 when every set asked for is there with its published count; 1 otherwise (or, for
``prepare`` without ``--strict``, only when something could not be done); 2 for bad arguments
or an unreadable download; 130 (Ctrl-C) or 143 (SIGTERM) when interrupted, in one line: the same
command finishes what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from irpo_jax import cli, safe_files
from irpo_jax.data import archives
from irpo_jax.data.config import OFFICIAL_REPEATS
from irpo_jax.data.eval_sets import eval_sets
from irpo_jax.data.images import OFFICIAL_SIGMAS
from irpo_jax.data.records import DataError
from irpo_jax.data.releases import RELEASES, Found, Release, releases_by_unit
from irpo_jax.data.train_set import train_records

__all__ = ["MARKER", "CheckRow", "ReleaseResult", "check", "format_report", "main", "prepare"]

log = logging.getLogger(__name__)

MARKER = ".prepared.json"  # inside every unit prepare laid out: what it holds and from where
_KIND = "irpo-jax-prepared-unit"
_STAGING = ".prepare-staging"  # inside a staging folder until it is complete
LIST_DIR = "data_dir"  # AdaIR's list files, where config.default_data_config looks first
# The training unit of each task (config.default_data_config's train_dirs).
TRAIN_UNITS = {
    "denoise": "Train/Denoise",
    "derain": "Train/Derain",
    "dehaze": "Train/Dehaze",
    "deblur": "Train/Deblur",
    "lowlight": "Train/Enhance",
}


@dataclasses.dataclass
class ReleaseResult:
    """One line of the report: a release, what was found of it and what became of its unit."""

    release: Release
    found: int
    expected: int | None
    state: str  # "found", "missing", "count differs", "left as it is", "failed"
    detail: str = ""

    def line(self) -> str:
        r = self.release
        what = f"{self.found:,} {r.what}"
        if self.state == "found":
            text = f"found {what}" + (f" (published: {self.expected:,})" if self.expected else " (no published size)")
        elif self.state == "missing":
            text = f"missing: download {r.published}"
        elif self.state == "count differs":
            text = f"count differs: expected {self.expected:,} {r.what}, found {self.found:,}"
        else:
            text = self.state
        return f"  {r.name:<12} {r.title:<40} {text}" + (f"; {self.detail}" if self.detail else "")


# --------------------------------------------------------------------------- laying out units


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_marker(unit_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((unit_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == _KIND else None


def _files_below(folder: Path) -> set[str]:
    out = set()
    for d, _subs, files in os.walk(folder):
        for f in files:
            out.add((Path(d) / f).relative_to(folder).as_posix())
    return out


def _write_list(path: Path, text: str) -> None:
    """A list file, written whole (its folder created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    safe_files.atomic_write_text(path, text)


def _clean_leftovers(unit_dir: Path) -> None:
    """Removes what an interrupted run left beside ``unit_dir``: staging folders and replaced units,
    each recognised by its name and by prepare's own marker file inside."""
    parent = unit_dir.parent
    if not parent.is_dir():
        return
    prefix = f".{unit_dir.name}.prepare-"
    for p in parent.iterdir():
        if (
            p.name.startswith(prefix)
            and p.is_dir()
            and not p.is_symlink()
            and ((p / _STAGING).exists() or _read_marker(p) is not None)
        ):
            shutil.rmtree(p)


def _lay_unit(
    out: Path,
    unit: str,
    jobs: Sequence[tuple[archives.Member, str]],
    lists: Mapping[str, str],
    link: str,
    counter: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """Lays out one unit whole. Returns ``(state, detail)``: state "laid out", "unchanged",
    "replaced" or "left as it is"."""
    unit_dir = out / unit
    _clean_leftovers(unit_dir)
    sources = {dest: [m.vpath, m.size] for m, dest in sorted(jobs, key=lambda j: j[1])}
    signature = _sha(json.dumps(sources, sort_keys=True))
    list_paths = {rel: out / LIST_DIR / rel for rel in lists}
    old = None
    if unit_dir.exists() or unit_dir.is_symlink():
        marker = _read_marker(unit_dir) if unit_dir.is_dir() and not unit_dir.is_symlink() else None
        if marker is None:
            return "left as it is", f"{unit_dir} exists and was not laid out by prepare (--check reports on it)"
        if marker.get("signature") == signature:
            for rel, text in lists.items():  # the unit is whole; its list may be another (--lists)
                if not list_paths[rel].is_file() or list_paths[rel].read_text() != text:
                    _write_list(list_paths[rel], text)
            return "unchanged", ""
        held = _files_below(unit_dir) - {MARKER}
        if held != set(marker.get("files", [])):
            extra = sorted(held - set(marker.get("files", [])))
            return "left as it is", (
                f"{unit_dir} was laid out by prepare but has changed since"
                + (f" ({extra[0]} added)" if extra else " (files removed)")
                + ": move it away to lay it out again"
            )
        old = unit_dir
    staging = unit_dir.with_name(f".{unit_dir.name}.prepare-new-{os.getpid()}")
    staging.mkdir(parents=True)
    (staging / _STAGING).write_text("")
    try:
        archives.place([(m, staging / dest) for m, dest in jobs], link=link)
        if counter is not None:
            counter["staged"] = staging
            counter["check"](staging)
        marker = {
            "kind": _KIND,
            "version": 1,
            "unit": unit,
            "signature": signature,
            "files": sorted(sources),
            "sources": sources,
            "lists": {k: _sha(v) for k, v in lists.items()},
        }
        (staging / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        (staging / _STAGING).unlink()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:  # out of the way first: the new list must never describe the old unit
        moved = unit_dir.with_name(f".{unit_dir.name}.prepare-old-{os.getpid()}")
        os.replace(unit_dir, moved)
    for rel, text in lists.items():
        _write_list(list_paths[rel], text)
    os.replace(staging, unit_dir)
    if old is not None:
        shutil.rmtree(moved)
        return "replaced", ""
    return "laid out", ""


# --------------------------------------------------------------------------- lists


def _official_list(lists_dir: Path, rel: str) -> str:
    path = lists_dir / rel
    if not path.is_file():
        raise DataError(
            f"--lists {lists_dir}: {rel} is not there; point --lists at AdaIR's data_dir "
            "folder (git clone https://github.com/c-yn/AdaIR; it holds noisy/, rainy/, hazy/)"
        )
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- prepare


def _state(found: int, expected: int | None) -> str:
    if found == 0:
        return "missing"
    return "found" if expected is None or found == expected else "count differs"


def prepare(
    downloads: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sets: Sequence[str] | None = None,
    link: str = "hardlink",
    lists: str | os.PathLike | None = None,
    expected: Mapping[str, int | None] | None = None,
) -> tuple[list[ReleaseResult], archives.Scan]:
    """Recognises the releases in ``downloads`` and lays them out under ``out``.

    Args:
      downloads: the folder holding the downloaded archives and/or extracted folders.
      out: the data root to write (created if missing).
      sets: release names (:data:`RELEASES`) to prepare; None: all.
      link: how plain files are placed: "hardlink" (copy across filesystems), "symlink", "copy".
      lists: AdaIR's ``data_dir`` folder, to use its list files instead of lists of what was found.
      expected: per release name, a size to check instead of the published one (tests' miniatures).

    Returns:
      One :class:`ReleaseResult` per release, in :data:`RELEASES` order, and the scan.
    """
    unknown = sorted(set(sets or ()) - {r.name for r in RELEASES})
    if unknown:
        raise DataError(f"unknown set(s) {', '.join(unknown)}; valid: {', '.join(r.name for r in RELEASES)}")
    scan = archives.scan(downloads)
    out = Path(out).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    expected = dict(expected or {})
    results: list[ReleaseResult] = []
    used: set[str] = set()
    for unit, rels in releases_by_unit(sets).items():
        found = {r.name: r.find(scan.members) for r in rels}
        jobs = _dedupe([job for r in rels for job in found[r.name].files])
        lists_text: dict[str, str] = {}
        for r in rels:
            if r.list_file and found[r.name].count:
                if lists is not None:
                    lists_text[r.list_file] = _official_list(Path(lists), r.list_file)
                else:
                    prev = lists_text.get(r.list_file, "")
                    lines = [ln for ln in dict.fromkeys(found[r.name].list_lines)]
                    lists_text[r.list_file] = prev + "".join(ln + "\n" for ln in lines)
        counts: dict[str, Any] = {}
        ood = [r for r in rels if r.role == "ood"]
        if ood:  # count what evaluate's reader pairs in the staged folder, before it goes in place

            def count(staged: Path, r: Release = ood[0]) -> None:
                from irpo_jax.data import ood_sets

                listing = ood_sets.READERS[r.eval_set](staged, r.eval_set)
                found[r.name].count = len(listing.records)  # noqa: B023 - called in this iteration
                if listing.missing:
                    found[r.name].notes.append(  # noqa: B023 - called in this iteration
                        f"{len(listing.missing)} input(s) without a target, e.g. {listing.missing[0]}"
                    )

            counts["check"] = count
        state, detail = ("missing", "")
        if jobs:
            try:
                state, detail = _lay_unit(out, unit, jobs, lists_text, link, counts if ood else None)
            except (archives.ArchiveError, DataError, OSError) as err:
                state, detail = "failed", str(err)
        for r in rels:
            f = found[r.name]
            exp = expected.get(r.name, r.expected)
            notes = list(f.notes)
            if state in ("failed", "left as it is") and f.files:
                res = ReleaseResult(r, f.count, exp, state, detail)
            else:
                if ood and state == "unchanged":
                    _recount(out / unit, r, f)
                if state == "unchanged" and f.count:
                    notes.append("already laid out")
                if lists is not None and r.list_file and f.count:
                    notes.append(_list_coverage(out / unit, r, lists_text.get(r.list_file, "")))
                res = ReleaseResult(r, f.count, exp, _state(f.count, exp), "; ".join(notes))
            results.append(res)
            used.update(m.vpath for m, _ in f.files)
    if sets is None:  # every top-level download none of whose files any set took
        scan.unused = sorted({m.vpath.split("/")[0] for m in scan.members} - {v.split("/")[0] for v in used})
    return results, scan


def _recount(unit_dir: Path, r: Release, f: Found) -> None:
    from irpo_jax.data import ood_sets

    try:
        f.count = len(ood_sets.READERS[r.eval_set](unit_dir, r.eval_set).records)
    except DataError:
        f.count = 0


def _list_coverage(unit_dir: Path, r: Release, text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln]
    present = sum((unit_dir / ln).is_file() for ln in lines)
    msg = f"AdaIR's {r.list_file}: {present:,} of its {len(lines):,} entries present"
    missing = [ln for ln in lines if not (unit_dir / ln).is_file()]
    return msg + (f" (missing e.g. {missing[0]})" if missing else "")


def _dedupe(jobs: Sequence[tuple[archives.Member, str]]) -> list[tuple[archives.Member, str]]:
    """One source per destination: a plain file (linked) before an archive member (extracted)."""
    best: dict[str, tuple[archives.Member, str]] = {}
    for m, dest in jobs:
        if dest not in best or (best[dest][0].inner is not None and m.inner is None):
            best[dest] = (m, dest)
    return list(best.values())


# --------------------------------------------------------------------------- check


@dataclasses.dataclass
class CheckRow:
    """What a reader finds in one unit of a data root."""

    name: str  # a task ("denoise") or an evaluation set ("sots")
    unit: str
    found: int
    expected: int | None
    what: str
    error: str = ""

    @property
    def state(self) -> str:
        if self.error or self.found == 0:
            return "missing"
        return "found" if self.expected is None or self.found == self.expected else "count differs"

    def line(self) -> str:
        if self.state == "missing":
            text = f"missing: {self.error}" if self.error else "missing"
        elif self.state == "found":
            text = f"{self.found:,} {self.what}" + (f" (published: {self.expected:,})" if self.expected else "")
        else:
            text = f"count differs: expected {self.expected:,} {self.what}, found {self.found:,}"
        return f"  {self.name:<12} {self.unit:<24} {text}"


def _published(unit: str) -> tuple[int | None, str]:
    rels = [r for r in RELEASES if r.unit == unit]
    if any(r.expected is None for r in rels):
        return None, rels[0].what
    return sum(r.expected for r in rels), rels[0].what


def check(
    root: str | os.PathLike,
    *,
    tasks: Sequence[str] | None = None,
    sets: Sequence[str] | None = None,
    validate: str = "header",
    expected: Mapping[str, int | None] | None = None,
) -> list[CheckRow]:
    """What ``train``'s and ``evaluate``'s readers find under a data root, per task and test set.

    Args:
      root: the data root (``Train/``, ``test/``, ``data_dir/``).
      tasks: training tasks to check (default: the five); ``()`` for none.
      sets: evaluation sets to check (default: the five in-domain and the five out-of-domain).
      validate: the training scan (``train_set.train_records``): "header", "decode" or "none".
      expected: sizes to check instead of the published ones, by task or set name.
    """
    root = Path(root).expanduser().absolute()
    expected = dict(expected or {})
    rows: list[CheckRow] = []
    for task in tuple(TRAIN_UNITS) if tasks is None else tasks:
        unit = TRAIN_UNITS[task]
        exp, what = _published(unit)
        exp = expected.get(task, exp)
        try:
            _, report = train_records({"root": str(root), "tasks": (task,)}, validate=validate)
            rows.append(CheckRow(task, unit, report.kept.get(task, 0), exp, what, "" if not report.skipped else ""))
            if report.skipped:
                rows[-1].what += f" ({len(report.skipped)} skipped: {report.skipped[0][0]}: {report.skipped[0][1]})"
        except DataError as err:
            rows.append(CheckRow(task, unit, 0, exp, what, str(err).split("\n")[0]))
    test_releases = [r for r in RELEASES if r.eval_set]
    for r in test_releases:
        if sets is not None and r.eval_set not in sets:
            continue
        exp = expected.get(r.eval_set, r.expected)
        try:
            found = eval_sets({"root": str(root)}, [r.eval_set])
            rows.append(CheckRow(r.eval_set, r.unit, len(next(iter(found.values()))), exp, r.what))
        except DataError as err:
            rows.append(CheckRow(r.eval_set, r.unit, 0, exp, r.what, str(err).split(" (fix ")[0]))
    return rows


def run_lengths(rows: Sequence[CheckRow], config: str | None) -> list[str]:
    """What a run would read: pairs per task, AdaIR's repeats, the epoch and the two stages' steps."""
    counts = {row.name: row.found for row in rows if row.name in TRAIN_UNITS and row.found}
    if not counts:
        return []
    repeats, sigmas = dict(OFFICIAL_REPEATS), len(OFFICIAL_SIGMAS)
    stages: list[tuple[str, Any]] = []
    if config and Path(config.partition(":")[0]).is_file():
        for stage in ("supervised", None):
            spec = config + (f":{stage}" if stage else "")
            try:
                stages.append((stage or "grpo", cli.load_config(spec)))
            except (ValueError, FileNotFoundError) as err:
                log.warning("cannot load %s: %s", spec, err)
    if stages:
        repeats = {t: int(stages[0][1].data.repeats.get(t, repeats.get(t, 1))) for t in counts}
        sigmas = len(stages[0][1].data.sigmas)
    per = {t: n * (sigmas if t == "denoise" else 1) for t, n in counts.items()}
    epoch = sum(per[t] * repeats.get(t, 1) for t in per)
    lines = ["what train reads (every pair; denoise: each clean image at each sigma):"]
    lines += [
        f"  {t:<9} {per[t]:>7,} pairs x {repeats.get(t, 1):>3} repeats = {per[t] * repeats.get(t, 1):>8,} "
        "samples per epoch"
        for t in per
    ]
    lines.append(f"  one epoch of AdaIR's mixture: {epoch:,} samples")
    for stage, cfg in stages:
        t = cfg.train
        if stage == "supervised":
            size = epoch
            what = "every pair"
        else:
            frac = float(cfg.mining.fraction)
            # the hard set: ceil(fraction * n) per degradation (each sigma its own), as mine.select
            hard = {
                task: math.ceil(frac * n - 1e-9) * (sigmas if task == "denoise" else 1) for task, n in counts.items()
            }
            size = sum(hard[task] * (repeats.get(task, 1) if cfg.grpo.task_repeats else 1) for task in hard)
            what = f"the hard {frac:.0%}: {sum(hard.values()):,} pairs"
        per_batch = int(cfg.grpo.policy_iters) if stage == "grpo" else 1
        steps = int(t.steps) or max(1, math.ceil(t.epochs * size / t.batch_size)) * per_batch
        lines.append(
            f"  {cfg.name}: {t.epochs:g} epochs of {size:,} samples ({what}) at batch {t.batch_size} "
            f"= {steps:,} optimizer steps" + ("" if not t.steps else " (train.steps)")
        )
    return lines


# --------------------------------------------------------------------------- report and CLI


def format_report(results: Sequence[ReleaseResult], scan: archives.Scan | None = None) -> str:
    lines = []
    if scan is not None:
        n_plain = sum(m.inner is None for m in scan.members)
        lines.append(f"prepare: {len(scan.archives)} archive(s) and {n_plain:,} plain file(s) under {scan.root}")
        for path, problem in scan.problems:
            lines.append(f"  cannot use {path}: {problem}")
        for entry in scan.unused:
            lines.append(
                f"  not recognised: {scan.root / entry} holds none of the sets' structures "
                "(left alone; README 'Preparing the data' shows what each set looks like)"
            )
    for r in results:
        lines.append(r.line())
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m irpo_jax.data.prepare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="README 'Preparing the data' lists every set, its source and its layout.",
    )
    p.add_argument("--downloads", help="folder with the downloaded archives and/or extracted folders")
    p.add_argument("--out", help="data root to lay out (e.g. data/)")
    p.add_argument("--check", metavar="DATA_ROOT", help="report on a data root laid out by hand or by prepare")
    p.add_argument(
        "--sets",
        default="",
        help="comma-separated set names (default: all): "
        + ", ".join(r.name for r in RELEASES)
        + " (with --check: tasks and evaluation sets)",
    )
    p.add_argument(
        "--link",
        choices=("hardlink", "symlink", "copy"),
        default="hardlink",
        help="how plain files are placed (hardlink: copies across filesystems)",
    )
    p.add_argument(
        "--lists",
        help="AdaIR's data_dir folder: use its list files (exactly AdaIR's training "
        "images) instead of lists of every file found",
    )
    p.add_argument("--config", default="configs/allinone5.py", help="config whose run lengths --check states")
    p.add_argument(
        "--validate",
        choices=("header", "decode", "none"),
        default="header",
        help="how --check reads each training image (train's default: header)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a set is missing or its count differs")
    return p


def _check_report(root: str, args: argparse.Namespace) -> tuple[str, bool]:
    names = [s for s in args.sets.split(",") if s] or None
    tasks = None if names is None else [n for n in names if n in TRAIN_UNITS]
    sets = None if names is None else [n for n in names if n not in TRAIN_UNITS]
    rows = check(root, tasks=tasks, sets=sets, validate=args.validate)
    lines = [f"check of {Path(root).absolute()} (the readers of train and evaluate):"]
    lines += [row.line() for row in rows]
    lines += run_lengths(rows, args.config)
    complete = all(row.state == "found" for row in rows)
    bad = [row.name for row in rows if row.state != "found"]
    lines.append(
        "complete: every set is there with its published count" if complete else f"incomplete: {', '.join(bad)}"
    )
    return "\n".join(lines), complete


class _UsageError(Exception):
    """Flags that do not make a command; one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    args = _parser().parse_args(argv)
    cli.setup_logging(logging.WARNING)
    return cli.main_errors(
        lambda: _run(args),
        (_UsageError, archives.ArchiveError, DataError),
        code=2,
        resume="the same command finishes what is missing",
    )


def _run(args: argparse.Namespace) -> int:
    if args.check:
        if args.downloads or args.out:
            raise _UsageError("--check DATA_ROOT reports on a data root; use it without --downloads/--out")
        if not Path(args.check).is_dir():
            raise _UsageError(f"--check {args.check}: no such folder")
        text, complete = _check_report(args.check, args)
        print(text)
        return 0 if complete else 1
    if not (args.downloads and args.out):
        raise _UsageError("give --downloads DIR and --out DATA_ROOT (or --check DATA_ROOT)")
    if Path(args.out).absolute().is_relative_to(Path(args.downloads).absolute()):
        raise _UsageError(f"--out {args.out} lies inside --downloads {args.downloads}: prepare never writes there")
    names = [s for s in args.sets.split(",") if s] or None
    results, scan = prepare(args.downloads, args.out, sets=names, link=args.link, lists=args.lists)
    print(format_report(results, scan))
    failed = [r for r in results if r.state in ("failed", "left as it is")] + [None] * bool(scan.problems)
    incomplete = [r.release.name for r in results if r.state in ("missing", "count differs")]
    text, _ = _check_report(args.out, argparse.Namespace(**{**vars(args), "sets": ""}))
    print(text)
    print(
        f"prepare: {len(results) - len(incomplete)} of {len(results)} sets complete"
        + (f"; incomplete: {', '.join(incomplete)}" if incomplete else "")
    )
    return 1 if failed or (args.strict and incomplete) else 0


if __name__ == "__main__":
    sys.exit(main())
