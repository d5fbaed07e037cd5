"""The data sets ``prepare`` knows: how each release looks, where it goes, and how big it is.

Every training set, test set and out-of-domain set that ``configs/allinone5.py`` reads is a
:class:`Release`: its published size, where it is published, what it looks like once downloaded
(the folders and file names a recogniser looks for in :func:`irpo_jax.data.archives.scan`'s
virtual paths, so it is found packed or extracted, under any parent folders), and where its files
go in the AdaIR layout (adair-spec.md section 10; :mod:`irpo_jax.data.train_set`). Files keep their
bytes; only their folders and, where AdaIR's layout renames them, their names change.

Sources of each structure (``confirmed`` says whether the structure was seen in public code or
documentation; the README's "Preparing the data" lists the unconfirmed ones):

* AdaIR's layout and list files: c-yn/AdaIR ``INSTALL.md`` (the drawn tree, e.g. GoPro frames
  flattened to ``GOPR0372_07_00_000047.png``, LOL test as ``input/1.png``), ``options.py`` and
  ``utils/dataset_utils.py`` (``rainy/rain-N.png`` -> ``gt/norain-N.png``,
  ``synthetic/partK/IIII_A_B.jpg`` -> ``original/IIII.jpg``), ``data_dir/*.txt`` (5,144 denoising
  names = 4,744 WED ``#####.bmp`` + 400 BSD400 ``a*.jpg``; 200 rain lines; 72,135 hazy lines:
  part1-3 18,200 each, part4 17,535, 2,061 scenes). PromptIR's INSTALL.md gives the same links.
* WED: ``exploration_database_and_code.rar`` -> ``exploration_database_and_code/pristine_images/
  00001.bmp`` .. ``04744.bmp`` (public download scripts: ``unrar x ...; mv .../pristine_images``).
* BSD400: AdaIR/PromptIR link a Google Drive file whose contents are not shown anywhere public;
  recognised by a folder or archive named ``BSD400`` (not confirmed).
* RainTrainL / Rain100L: PReNet (csdwren/PReNet) ``DerainDataset.prepare_data_RainTrainL`` reads
  ``rain-N.png`` with ``norain-N.png`` (N = 1..200, one folder; ``rainstreak-``/``rainregion-``
  files beside them are not used), its ``statistic_rain100L.m`` the test's ``rainy/rain-NNN.png``
  with ``norain-NNN.png`` (100). Other copies put them in ``rain/`` and ``gt/``; any folders are
  accepted, paired by N. The AdaIR/PromptIR "Train100L&Rain100L" Drive folder: not confirmed.
* RESIDE-beta OTS: ``OTS_BETA/haze/part1..4`` (also shipped as ``part1.zip`` .. ``part4.zip``),
  ``clear/`` (2,061 scenes), ``depth/`` (not used); public audits of the release count 72,139
  hazy images where AdaIR's list has 72,135 (use ``--lists`` for AdaIR's exact list).
* SOTS outdoor: ``SOTS/outdoor/hazy/0001_0.8_0.2.jpg`` with ``SOTS/outdoor/gt/0001.png``
  (500; RESIDE, many public loaders); the indoor half is not used.
* BSD68: ``CBSD68/original/*.jpg`` of github.com/clausmichele/CBSD68-dataset (68, the folder
  AdaIR's INSTALL.md links; ``original_png`` and ``noisy*`` are not used).
* GoPro: ``GOPRO_Large/{train,test}/GOPRxxxx_xx_xx/{blur,blur_gamma,sharp}/NNNNNN.png``, 22/11
  sequences, 2,103/1,111 pairs (seungjunnah.github.io/Datasets/gopro); ``blur`` is used, as
  MPRNet/Restormer prepare it. Already flattened ``blur``/``sharp`` (or ``input``/``target``)
  folders of ``GOPR..._NNNNNN.png`` are accepted too.
* LOL: ``LOLdataset/our485/{low,high}`` (485) and ``eval15/{low,high}`` (15), RetinexNet's
  release (daooshee.github.io/BMVC2018website).
* The five out-of-domain sets: :mod:`irpo_jax.data.ood_sets` cites each; they are copied in their
  release layout (their training splits left out) and counted with that module's readers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

from irpo_jax.data.archives import Member, archive_kind
from irpo_jax.data.records import IMAGE_EXTENSIONS

__all__ = ["RELEASES", "UNITS", "Found", "Release", "releases_by_unit"]


@dataclasses.dataclass
class Found:
    """What a recogniser found in the downloads.

    Attributes:
      files: ``(member, destination below the release's unit folder)``.
      count: the units the published size counts (pairs, or clean images for denoising).
      list_lines: lines this release adds to its unit's AdaIR list file.
      notes: what else a person should know (files left out and why).
    """

    files: list[tuple[Member, str]] = dataclasses.field(default_factory=list)
    count: int = 0
    list_lines: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Release:
    """One data set as published.

    Attributes:
      name: short name (``prepare --sets``).
      title: what a person calls it.
      unit: the folder it is laid out in, relative to the data root (a unit is laid out whole).
      role: "train", "test" or "ood" (IRPO Table 3).
      expected: the published size in ``what`` (None: not published / not known here).
      what: what ``expected`` counts.
      published: where to download it.
      confirmed: whether its download's structure was seen in public code or documentation.
      find: the recogniser.
      list_file: the AdaIR list file it writes lines to (relative to ``data_dir``), if any.
      eval_set: the evaluation set (``irpo_jax.tasks.TEST_SETS``) it is, if it is one.
    """

    name: str
    title: str
    unit: str
    role: str
    expected: int | None
    what: str
    published: str
    confirmed: bool
    find: Callable[[Sequence[Member]], Found]
    list_file: str | None = None
    eval_set: str | None = None


# --------------------------------------------------------------------------- helpers


def _stem_ext(name: str) -> tuple[str, str]:
    p = PurePosixPath(name)
    return p.stem, p.suffix


def _is_image(m: Member) -> bool:
    return _stem_ext(m.name)[1].lower() in IMAGE_EXTENSIONS


def _folder(part: str) -> str:
    """A path component as a folder name: an archive's name without its extension, lower case."""
    low = part.lower()
    kind = archive_kind(PurePosixPath(low))
    if kind:
        for suffix in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip", ".7z", ".rar"):
            if low.endswith(suffix):
                return low[: -len(suffix)]
    return low


def _folders(m: Member) -> list[str]:
    """The member's folders (archives as folders), lower case, outermost first."""
    return [_folder(p) for p in m.parts[:-1]]


def _split(m: Member, test_words: Sequence[str] = ("test",)) -> str | None:
    """ "train" or "test" by the folder nearest the file that names a split (None: none does)."""
    for f in reversed(_folders(m)):
        if "train" in f:
            return "train"
        if any(w in f for w in test_words):
            return "test"
    return None


# --------------------------------------------------------------------------- training sets

_WED_NAME = re.compile(r"^\d{5}\.bmp$", re.IGNORECASE)


def find_wed(members: Sequence[Member]) -> Found:
    out = Found()
    for m in members:
        folders = _folders(m)
        if _WED_NAME.match(m.name) and not any(("distort" in f or "noisy" in f) for f in folders):
            out.files.append((m, m.name))
            out.list_lines.append(m.name)
    out.count = len({d for _, d in out.files})
    return out


def find_bsd400(members: Sequence[Member]) -> Found:
    out = Found()
    for m in members:
        if _is_image(m) and any("bsd400" in f for f in _folders(m)):
            out.files.append((m, m.name))
            out.list_lines.append(m.name)
    out.count = len({d for _, d in out.files})
    return out


_RAIN = re.compile(r"^(no)?rain-0*(\d+)$", re.IGNORECASE)


def _rain_pairs(members: Sequence[Member], split: str) -> dict[tuple[str, int], dict[str, Member]]:
    """``{(release folder, N): {"rain": member, "norain": member}}`` of one split."""
    groups: dict[tuple[str, int], dict[str, Member]] = {}
    for m in members:
        stem, ext = _stem_ext(m.name)
        match = _RAIN.match(stem)
        if not match or ext.lower() not in IMAGE_EXTENSIONS:
            continue
        if _split(m, ("rain100l", "test")) != split:
            continue
        # The release folder: the nearest one naming the split (RainTrainL, Rain100L, train, test).
        parts = m.parts
        root = next(
            (
                ("/".join(parts[: i + 1]))
                for i in range(len(parts) - 2, -1, -1)
                if any(w in _folder(parts[i]) for w in ("train", "rain100l", "test"))
            ),
            "",
        )
        role = "norain" if match.group(1) else "rain"
        groups.setdefault((root, int(match.group(2))), {}).setdefault(role, m)
    return groups


def find_raintrainl(members: Sequence[Member]) -> Found:
    out = Found()
    groups = _rain_pairs(members, "train")
    unpaired = 0
    for (_, n), pair in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if "rain" not in pair or "norain" not in pair:
            unpaired += 1
            continue
        ext = _stem_ext(pair["rain"].name)[1]
        dest = f"rainy/rain-{n}{ext}"
        if any(d == dest for _, d in out.files):
            continue  # the same pair from a second copy (archive and folder)
        out.files += [(pair["rain"], dest), (pair["norain"], f"gt/norain-{n}{ext}")]
        out.list_lines.append(dest)
    out.count = len(out.list_lines)
    if unpaired:
        out.notes.append(f"{unpaired} rain-N/norain-N file(s) without their partner left out")
    return out


_OTS_HAZY = re.compile(r"^(\d+)_[\d.]+_[\d.]+$")
_PART = re.compile(r"^part(\d+)$")


def find_ots(members: Sequence[Member]) -> Found:
    out = Found()
    clear: dict[str, Member] = {}
    hazy: list[tuple[Member, str, str]] = []
    for m in members:
        stem, ext = _stem_ext(m.name)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        folders = _folders(m)
        if any("sots" in f for f in folders):
            continue
        part = next((_PART.match(f).group(1) for f in reversed(folders) if _PART.match(f)), None)
        if part is not None and _OTS_HAZY.match(stem):
            hazy.append((m, part, _OTS_HAZY.match(stem).group(1)))
        elif stem.isdigit() and folders and folders[-1] in ("clear", "clear_images", "original", "gt"):
            clear.setdefault(stem, m)
    used: set[str] = set()
    seen: set[str] = set()
    without = 0
    for m, part, scene in sorted(hazy, key=lambda t: (int(t[1]), t[0].name)):
        dest = f"synthetic/part{part}/{m.name}"
        if dest in seen:
            continue
        if scene not in clear:
            without += 1
            continue
        seen.add(dest)
        out.files.append((m, dest))
        out.list_lines.append(dest)
        used.add(scene)
    for scene in sorted(used):
        out.files.append((clear[scene], f"original/{clear[scene].name}"))
    out.count = len(out.list_lines)
    if without:
        out.notes.append(f"{without} hazy image(s) without their clear scene left out")
    if out.count:
        out.notes.append(f"{len(used):,} clear scenes")
    return out


def _gopro(members: Sequence[Member], split: str) -> Found:
    out = Found()
    deg, clean = ("blur", "sharp") if split == "train" else ("input", "target")
    pairs: dict[str, dict[str, Member]] = {}
    seq_re = re.compile(r"^gopr\d+_\d+_\d+$")
    flat_re = re.compile(r"^(GOPR\d+_\d+_\d+)_(\d+)$", re.IGNORECASE)
    for m in members:
        stem, ext = _stem_ext(m.name)
        folders = _folders(m)
        if ext.lower() not in IMAGE_EXTENSIONS or len(folders) < 2:
            continue
        role = folders[-1]
        if (
            seq_re.match(folders[-2]) and role in ("blur", "sharp") and len(folders) >= 3 and _split(m) == split
        ):  # GOPRO_Large/<split>/<seq>/<blur|sharp>/<frame>.png
            key = f"{m.parts[-3]}_{stem}{ext}"
        elif flat_re.match(stem) and role in ("blur", "sharp", "input", "target") and _split(m) == split:
            key = m.name  # already flattened (AdaIR's own layout)
        else:
            continue
        pairs.setdefault(key, {}).setdefault("d" if role in ("blur", "input") else "c", m)
    for key in sorted(pairs):
        p = pairs[key]
        if "d" in p and "c" in p:
            out.files += [(p["d"], f"{deg}/{key}"), (p["c"], f"{clean}/{key}")]
            out.count += 1
    if len(pairs) > out.count:
        out.notes.append(f"{len(pairs) - out.count} frame(s) without their partner left out")
    return out


def find_gopro_train(members: Sequence[Member]) -> Found:
    return _gopro(members, "train")


def find_gopro_test(members: Sequence[Member]) -> Found:
    return _gopro(members, "test")


def _lol(members: Sequence[Member], folder: str, deg: str, clean: str) -> Found:
    out = Found()
    pairs: dict[str, dict[str, Member]] = {}
    for m in members:
        folders = _folders(m)
        if _is_image(m) and len(folders) >= 2 and folders[-2] == folder and folders[-1] in ("low", "high"):
            pairs.setdefault(m.name, {}).setdefault(folders[-1], m)
    for name in sorted(pairs, key=lambda s: (len(s), s)):
        p = pairs[name]
        if "low" in p and "high" in p:
            out.files += [(p["low"], f"{deg}/{name}"), (p["high"], f"{clean}/{name}")]
            out.count += 1
    return out


def find_lol_train(members: Sequence[Member]) -> Found:
    return _lol(members, "our485", "low", "gt")


def find_lol_test(members: Sequence[Member]) -> Found:
    return _lol(members, "eval15", "input", "target")


# --------------------------------------------------------------------------- test sets


def find_sots(members: Sequence[Member]) -> Found:
    out = Found()
    hazy: dict[str, list[Member]] = {}
    gt: dict[tuple[str, str], Member] = {}
    for m in members:
        stem, ext = _stem_ext(m.name)
        folders = _folders(m)
        if ext.lower() not in IMAGE_EXTENSIONS or len(folders) < 2 or "outdoor" not in folders[:-1]:
            continue
        parent = m.parent.rsplit("/", 1)[0]
        if folders[-1] == "hazy" and _OTS_HAZY.match(stem):
            hazy.setdefault(parent, []).append(m)
        elif folders[-1] in ("gt", "clear") and stem.isdigit():
            gt.setdefault((parent, stem), m)
    done: set[str] = set()
    for parent in sorted(hazy):
        for m in sorted(hazy[parent], key=lambda x: x.name):
            t = gt.get((parent, _OTS_HAZY.match(_stem_ext(m.name)[0]).group(1)))
            if t is None or m.name in done:
                continue
            done.add(m.name)
            out.files += [(m, f"input/{m.name}"), (t, f"target/{t.name}")]
            out.count += 1
    out.files = list({d: (mm, d) for mm, d in out.files}.values())  # one target per scene
    return out


def find_rain100l(members: Sequence[Member]) -> Found:
    out = Found()
    groups = _rain_pairs(members, "test")
    for (_, n), pair in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if "rain" in pair and "norain" in pair:
            ext = _stem_ext(pair["rain"].name)[1]
            dest = f"input/{n}{ext}"
            if all(d != dest for _, d in out.files):
                out.files += [(pair["rain"], dest), (pair["norain"], f"target/{n}{_stem_ext(pair['norain'].name)[1]}")]
                out.count += 1
    return out


def find_bsd68(members: Sequence[Member]) -> Found:
    out = Found()
    for m in members:
        folders = _folders(m)
        if not _is_image(m) or not folders:
            continue
        if (folders[-1] == "original" and any(f in ("cbsd68", "bsd68") for f in folders[:-1])) or folders[-1] in (
            "bsd68",
            "cbsd68",
        ):
            if all(d != m.name for _, d in out.files):
                out.files.append((m, m.name))
    out.count = len(out.files)
    return out


# --------------------------------------------------------------------------- out-of-domain sets


def _release_tree(
    members: Sequence[Member],
    word: Callable[[str], bool],
    *,
    keep_root: bool = False,
    skip: Callable[[str], bool] = lambda rel: False,
) -> Found:
    """Every image below the innermost folder whose name satisfies ``word``, at its path below that
    folder (with the folder itself when ``keep_root``), the training split left out."""
    out = Found()
    seen: set[str] = set()
    for m in members:
        if not _is_image(m):
            continue
        parts = m.parts
        idx = next((i for i in range(len(parts) - 2, -1, -1) if word(_folder(parts[i]))), None)
        if idx is None:
            continue
        rel_parts = (
            [_folder(parts[idx]) if archive_kind(PurePosixPath(parts[idx])) else parts[idx]] if keep_root else []
        ) + list(parts[idx + 1 :])
        rel = "/".join(rel_parts)
        if any("train" in _folder(p) for p in parts[idx + 1 : -1]) or skip(rel) or rel in seen:
            continue
        seen.add(rel)
        out.files.append((m, rel))
    return out


def find_rrshid(members: Sequence[Member]) -> Found:
    return _release_tree(members, lambda f: "rrshid" in f)


def find_gtrain(members: Sequence[Member]) -> Found:
    # Keep the GT-RAIN_test folder: the reader groups by scene folders below it.
    return _release_tree(members, lambda f: "gt-rain" in f or "gt_rain" in f or f == "gtrain", keep_root=True)


def find_reloblur(members: Sequence[Member]) -> Found:
    return _release_tree(
        members, lambda f: "reloblur" in f, skip=lambda rel: any("mask" in p.lower() for p in rel.split("/")[:-1])
    )


def find_lolistreet(members: Sequence[Member]) -> Found:
    return _release_tree(members, lambda f: "loli" in f and "street" in f)


_SIDD_MATS = {"validationnoisyblockssrgb.mat", "validationgtblockssrgb.mat"}


def find_sidd(members: Sequence[Member]) -> Found:
    out = Found()
    for m in members:
        if m.name.lower() in _SIDD_MATS and all(d != m.name for _, d in out.files):
            out.files.append((m, m.name))
    return out


# --------------------------------------------------------------------------- the registry

_ADAIR = "links in github.com/c-yn/AdaIR INSTALL.md"
RELEASES: tuple[Release, ...] = (
    Release(
        "wed",
        "Waterloo Exploration Database (WED)",
        "Train/Denoise",
        "train",
        4744,
        "clean images",
        "exploration_database_and_code.rar, ece.uwaterloo.ca/~k29ma/exploration (also the Google "
        f"Drive file in the {_ADAIR})",
        True,
        find_wed,
        "noisy/denoise.txt",
    ),
    Release(
        "bsd400",
        "BSD400",
        "Train/Denoise",
        "train",
        400,
        "clean images",
        f"the BSD400 Google Drive file ({_ADAIR}); keep 'BSD400' in its file or folder name",
        False,
        find_bsd400,
        "noisy/denoise.txt",
    ),
    Release(
        "raintrainl",
        "Rain100L training set (RainTrainL)",
        "Train/Derain",
        "train",
        200,
        "pairs",
        f"'Train100L&Rain100L' Google Drive folder ({_ADAIR}); RainTrainL in github.com/csdwren/PReNet",
        True,
        find_raintrainl,
        "rainy/rainTrain.txt",
    ),
    Release(
        "ots",
        "RESIDE-beta OTS",
        "Train/Dehaze",
        "train",
        72135,
        "hazy/clear pairs",
        "sites.google.com/view/reside-dehaze-datasets (RESIDE-beta, OTS: haze/part1-4 + clear)",
        True,
        find_ots,
        "hazy/hazy_outside.txt",
    ),
    Release(
        "gopro_train",
        "GoPro training set",
        "Train/Deblur",
        "train",
        2103,
        "pairs",
        "GOPRO_Large.zip, seungjunnah.github.io/Datasets/gopro",
        True,
        find_gopro_train,
    ),
    Release(
        "lol_train",
        "LOL training set (our485)",
        "Train/Enhance",
        "train",
        485,
        "pairs",
        "LOLdataset.zip, daooshee.github.io/BMVC2018website",
        True,
        find_lol_train,
    ),
    Release(
        "sots",
        "SOTS outdoor",
        "test/dehaze",
        "test",
        500,
        "pairs",
        "sites.google.com/view/reside-dehaze-datasets (RESIDE-standard, SOTS)",
        True,
        find_sots,
        eval_set="sots",
    ),
    Release(
        "rain100l",
        "Rain100L test set",
        "test/derain/Rain100L",
        "test",
        100,
        "pairs",
        f"'Train100L&Rain100L' Google Drive folder ({_ADAIR}); Rain100L in github.com/csdwren/PReNet",
        True,
        find_rain100l,
        eval_set="rain100l",
    ),
    Release(
        "bsd68",
        "CBSD68",
        "test/denoise/bsd68",
        "test",
        68,
        "clean images",
        "github.com/clausmichele/CBSD68-dataset (its CBSD68/original folder)",
        True,
        find_bsd68,
        eval_set="bsd68",
    ),
    Release(
        "gopro_test",
        "GoPro test set",
        "test/deblur/gopro",
        "test",
        1111,
        "pairs",
        "GOPRO_Large.zip, seungjunnah.github.io/Datasets/gopro",
        True,
        find_gopro_test,
        eval_set="gopro",
    ),
    Release(
        "lol_test",
        "LOL test set (eval15)",
        "test/enhance/lol",
        "test",
        15,
        "pairs",
        "LOLdataset.zip, daooshee.github.io/BMVC2018website",
        True,
        find_lol_test,
        eval_set="lol",
    ),
    Release(
        "rrshid",
        "RRSHID (real remote-sensing haze)",
        "test/ood/rrshid",
        "ood",
        None,
        "pairs",
        "RRSHID.zip, github.com/lwCVer/RRSHID releases; keep 'RRSHID' in its name",
        False,
        find_rrshid,
        eval_set="rrshid",
    ),
    Release(
        "gtrain",
        "GT-Rain test set",
        "test/ood/gtrain",
        "ood",
        None,
        "rainy frames",
        "GT-RAIN_test from the Google Drive folder in github.com/UCLA-VMG/GT-RAIN's README",
        True,
        find_gtrain,
        eval_set="gtrain",
    ),
    Release(
        "sidd",
        "SIDD sRGB validation blocks",
        "test/ood/sidd",
        "ood",
        1280,
        "blocks",
        "ValidationNoisyBlocksSrgb.mat + ValidationGtBlocksSrgb.mat, abdokamel.github.io/sidd",
        True,
        find_sidd,
        eval_set="sidd",
    ),
    Release(
        "reloblur",
        "ReLoBlur test set",
        "test/ood/reloblur",
        "ood",
        395,
        "pairs",
        "'ReLoBlur test' in github.com/LeiaLi/ReLoBlur's README; keep 'ReLoBlur' in its name",
        True,
        find_reloblur,
        eval_set="reloblur",
    ),
    Release(
        "lolistreet",
        "LoLI-Street",
        "test/ood/lolistreet",
        "ood",
        None,
        "pairs",
        "Kaggle tanvirnwu/loli-street-low-light-image-enhancement-of-street, or the Google Drive file "
        "in github.com/tanvirnwu/TriFuse's README",
        False,
        find_lolistreet,
        eval_set="lolistreet",
    ),
)

UNITS: tuple[str, ...] = tuple(dict.fromkeys(r.unit for r in RELEASES))


def releases_by_unit(names: Sequence[str] | None = None) -> dict[str, list[Release]]:
    """``{unit: [releases]}`` in :data:`RELEASES` order, limited to ``names`` (None: all)."""
    out: dict[str, list[Release]] = {}
    for r in RELEASES:
        if names is None or r.name in names:
            out.setdefault(r.unit, []).append(r)
    return out
