"""``tl check-data``: the preflight that finds broken data before it costs GPU hours.

Image folders (imagefolder, caltech101) are checked file by file, in DataLoader workers: bytes, hash, header
(format, mode, size) and, unless ``--quick``, a full decode, since only a decode finds a truncated JPEG
(``verify()`` does not). Other datasets are read through their loaders: counts, sizes, duplicates.

Exit status: 0 clean (notes allowed), 1 problems found (unreadable files, exact duplicates, a class without
training images), 2 the data could not be opened at all.
"""

from __future__ import annotations

import hashlib
import io
import os
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer

from tl.data import flags

MODE_NAMES = {"1": "bilevel", "L": "greyscale", "LA": "greyscale+alpha", "P": "palette", "PA": "palette+alpha",
              "RGBA": "RGBA", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV", "I": "32-bit int",
              "F": "32-bit float", "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "RGB": "RGB"}
FEW_COLOURS = 64  # distinct colours in a 64x64 sample; photos have thousands, placeholders and blank frames a few
EXAMPLES = 3
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "WEBP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


# --------------------------------------------------------------------------------------------------
# One image each (these run in the loader's workers: plain values in, plain dicts out)
# --------------------------------------------------------------------------------------------------


def _not_an_image(head: bytes) -> str:
    if head[4:8] == b"ftyp":
        return "not readable: HEIC/AVIF container, which PIL reads only with a plugin"
    if head.lstrip().startswith(b"<"):
        return "not an image: HTML/XML (a saved error page?)"
    if head.startswith(b"%PDF"):
        return "not an image: PDF"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"not an image: text ({head[:24].decode(errors='replace')!r}...)"
    return f"not an image: unknown format (starts {head[:8].hex()})"


def _few_colours(image: Any) -> int | None:
    """Distinct colours of a nearest-neighbour sample when there are few (None for a photo)."""
    from PIL import Image

    if image.mode.startswith(("I", "F")):  # 16/32-bit: convert("RGB") clips rather than scales, so it would look flat
        return None
    try:
        colours = image.convert("RGB").resize((64, 64), Image.Resampling.NEAREST).getcolors(FEW_COLOURS)
    except Exception:  # a heuristic must never turn a readable image into a problem
        return None
    return len(colours) if colours else None


def probe_file(path: str, decode: bool) -> dict[str, Any]:
    """Size, hash (when decoding), format/mode/size from the header, and the reason it is unreadable, if it is."""
    from PIL import Image, UnidentifiedImageError

    from tl.data.decode import bomb_reason, orientation, upright_size

    found: dict[str, Any] = {"nbytes": os.path.getsize(path)}
    if found["nbytes"] == 0:
        return found | {"problem": "empty file (0 bytes)"}
    data = Path(path).read_bytes() if decode else None
    if data is not None:
        found["digest"] = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            found |= {"format": image.format, "mode": image.mode, "size": upright_size(image.size, orientation(image))}
            if decode:
                image.load()
                found["colours"] = _few_colours(image)
    except UnidentifiedImageError:
        with open(path, "rb") as file:
            found["problem"] = _not_an_image(file.read(64))
    except Image.DecompressionBombError:
        found["problem"] = bomb_reason()
    except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error, EOFError... on broken files
        with open(path, "rb") as file:  # PIL may fail before it names the format: tell it from the first bytes
            head = file.read(8)
        what = found.get("format") or next((f for magic, f in MAGIC.items() if head.startswith(magic)), "image")
        text = str(exc) or type(exc).__name__
        found["problem"] = f"truncated {what} ({text})" if "truncat" in text.lower() else f"{what} cannot be decoded: {text}"
    return found


def probe_item(image: Any, readable: bool) -> dict[str, Any]:
    """What a dataset's loader handed out: size, pixel hash, and whether it could decode it."""
    if not readable:
        return {"problem": "the loader could not decode it"}
    digest = hashlib.blake2b(f"{image.size}".encode() + image.tobytes(), digest_size=16).hexdigest()
    return {"mode": image.mode, "size": image.size, "digest": digest, "colours": _few_colours(image)}


class Probes:
    """One finding per image of every split; a map-style dataset for DataLoader (no torch import needed here)."""

    def __init__(self, parts: list[tuple[str, Any]], root: Path | None, decode: bool) -> None:
        self.index = [(split, data, i) for split, data in parts for i in range(len(data))]
        self.root = root
        self.decode = decode

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, n: int) -> dict[str, Any]:
        split, data, i = self.index[n]
        if self.root is not None:  # image files: read them here rather than through the loader's RGB conversion
            path, label = data.samples[i]
            found = probe_file(str(path), self.decode)
            found["key"], found["path"] = str(Path(path).relative_to(self.root)), str(path)
        else:
            image, label, readable = data[i]
            found = probe_item(image, readable)
            found["key"] = f"{split}[{i}]"
        return found | {"split": split, "label": _label_key(label)}


def _label_key(label: Any) -> Any:
    """An int for one class; a tuple of class indices for a multi-label row (a label file's tuple, or the 0/1 vector
    a Hugging Face Sequence(ClassLabel) row gives)."""
    if isinstance(label, tuple):
        return label
    if getattr(label, "ndim", 0) == 1:
        return tuple(int(i) for i in label.nonzero().flatten().tolist())
    return int(label)


def _batch_as_list(batch: list) -> list:
    return batch


# --------------------------------------------------------------------------------------------------
# The whole dataset
# --------------------------------------------------------------------------------------------------


def _file_root(parts: list[tuple[str, Any]], cfg) -> Path | None:
    """The folder image keys are relative to; None where the data are not files."""
    from tl.data.datasets import ImageFiles

    if not all(isinstance(data, ImageFiles) for _, data in parts):
        return None
    if cfg.dataset == "imagefolder" or (cfg.dataset == "labels" and cfg.data_dir):
        return Path(cfg.data_dir)
    if cfg.dataset == "labels":  # paths relative to the label file's folder
        return Path(cfg.labels).parent
    return Path(os.path.commonpath([str(p.parent.parent) for _, data in parts for p, _ in data.samples]))


def hash_same_sizes(found: list[dict[str, Any]]) -> None:
    """--quick reads no file whole: only files whose byte counts collide can be duplicates, so hash just those."""
    by_size = defaultdict(list)
    for item in found:
        if "path" in item and item.get("nbytes"):
            by_size[item["nbytes"]].append(item)
    for group in by_size.values():
        if len(group) > 1:
            for item in group:
                item["digest"] = hashlib.blake2b(Path(item["path"]).read_bytes(), digest_size=16).hexdigest()


def _duplicate_reason(group: list[dict[str, Any]], classes: list[str]) -> str:
    labels, parts = {g["label"] for g in group}, {g["split"] for g in group}
    name = lambda label: ";".join(classes[c] for c in label) if isinstance(label, tuple) else classes[label]  # multi-label: a set
    if len(labels) > 1:
        return f"same image in classes {', '.join(name(l) for l in sorted(labels))}: one label is wrong"
    if len(parts) > 1:
        return f"same image in {' and '.join(sorted(parts))}: evaluation sees a training image"
    return f"same image {len(group)} times in {name(group[0]['label'])}: it counts {len(group)}x"


def check(cfg, *, seed: int, quick: bool) -> dict[str, Any]:
    """Scan the data ``cfg`` names; a dict of counts, sizes, modes, problems and notes (see ``print_report``)."""
    from torch.utils.data import DataLoader

    from tl.data.datasets import scan_images
    from tl.runtime import num_workers

    start = time.perf_counter()
    bundle = flags.build(cfg, seed=seed)
    parts = flags.splits(bundle)
    root = _file_root(parts, cfg)
    counts = {split: Counter(c for t in data.targets for c in (t if isinstance(t, tuple) else (t,))) for split, data in parts}
    found: list[dict[str, Any]] = []
    if root is not None or not quick:  # --quick on decoded datasets: counts only
        probes = Probes(parts, root, decode=not quick)
        workers = min(num_workers(cfg.num_workers, 1), max(1, len(probes) // 64))
        loader = DataLoader(probes, batch_size=32, num_workers=workers, collate_fn=_batch_as_list)
        found = [item for batch in loader for item in batch]
    if quick:
        hash_same_sizes(found)

    problems = [(f["key"], f["problem"]) for f in found if f.get("problem")]
    by_digest = defaultdict(list)
    for item in found:
        if item.get("digest"):
            by_digest[item["digest"]].append(item)
    duplicates = [(" = ".join(g["key"] for g in group), _duplicate_reason(group, bundle.class_names))
                  for group in by_digest.values() if len(group) > 1]
    empty = [(name, "no training images") for label, name in enumerate(bundle.class_names) if not counts["train"][label]]
    modes, mode_examples = Counter(), defaultdict(list)
    for item in found:
        if item.get("mode"):
            modes[item["mode"]] += 1
            if item["mode"] != "RGB" and len(mode_examples[item["mode"]]) < EXAMPLES:
                mode_examples[item["mode"]].append(item["key"])
    sizes = [item["size"] for item in found if item.get("size") and not item.get("problem")]
    used = {f["path"] for f in found if "path" in f}
    # every non-hidden file, walked as the datasets walk (symlinked folders not entered: a link loop cannot hang it)
    label_file = Path(cfg.labels).resolve() if cfg.labels else None  # --labels: the CSV itself is read, not ignored
    ignored = [p for p in scan_images(root, extensions=None) if str(p) not in used and p.resolve() != label_file] if root is not None else []
    return {
        "dataset": cfg.dataset, "root": str(root) if root else cfg.data_dir, "classes": bundle.class_names,
        "counts": {split: [c[label] for label in range(len(bundle.class_names))] for split, c in counts.items()},
        "images": {split: len(data.targets) for split, data in parts},  # several labels each: fewer than the counts' sum
        "scanned": len(found), "decoded": not quick, "seconds": time.perf_counter() - start,
        "sizes": {axis: (min(v), statistics.median(v), max(v)) for axis, v in
                  (("width", [s[0] for s in sizes]), ("height", [s[1] for s in sizes])) if v},
        "modes": dict(modes.most_common()), "mode_examples": dict(mode_examples),
        "formats": dict(Counter(f["format"] for f in found if f.get("format")).most_common()),
        "unreadable": problems, "duplicates": duplicates, "empty_classes": empty,
        "few_colours": [(f["key"], f["colours"]) for f in found if f.get("colours")],
        "ignored": [str(p.relative_to(root)) for p in ignored] if root is not None else [],
    }


def _mode(mode: str) -> str:
    name = MODE_NAMES.get(mode, mode)
    return name if name == mode else f"{name} ({mode})"


def print_report(report: dict[str, Any]) -> int:
    """Print the report to stdout; the number of problems (not counting notes)."""
    from rich.table import Table

    from tl.progress import out_console

    out = out_console()
    splits = list(report["counts"])
    table = Table(title=f"{report['dataset']} {report['root'] or ''}: {len(report['classes'])} classes", title_justify="left")
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    for label, name in enumerate(report["classes"]):
        table.add_row(name, *(str(report["counts"][s][label]) for s in splits))
    table.add_row("total", *(str(report["images"][s]) for s in splits), style="bold")  # images: several labels each add up to more
    out.print(table)
    for axis, (low, mid, high) in report["sizes"].items():
        out.print(f"{axis:<8} min {low}  median {mid:g}  max {high}")
    if report["modes"]:
        out.print("modes    " + ", ".join(f"{_mode(m)} {n}" for m, n in report["modes"].items()))
        for mode, keys in report["mode_examples"].items():
            out.print(f"  {_mode(mode)}: {', '.join(keys)}" + (" ..." if report["modes"][mode] > len(keys) else ""))
    if report["formats"]:
        out.print("formats  " + ", ".join(f"{f} {n}" for f, n in report["formats"].items()))
    notes = [f"few colours ({n}): {key}: a placeholder, blank or drawing?" for key, n in report["few_colours"]]
    if report["ignored"]:
        shown = ", ".join(report["ignored"][:EXAMPLES]) + (" ..." if len(report["ignored"]) > EXAMPLES else "")
        notes.append(f"{len(report['ignored'])} file(s) tl does not read (no image extension, or outside the class folders): {shown}")
    for note in notes:
        out.print(f"note     {note}")
    problems = ([f"unreadable {key}: {why}" for key, why in report["unreadable"]]
                + [f"duplicate  {keys}: {why}" for keys, why in report["duplicates"]]
                + [f"empty      {name}: {why}" for name, why in report["empty_classes"]])
    for line in problems:
        out.print(line)
    what = "files read and decoded" if report["decoded"] else "file headers read (--quick: truncation not checked)"
    out.print(f"{report['scanned']} {what} in {report['seconds']:.1f} s: "
              + (f"{len(problems)} problem(s)" if problems else "no problems"))
    return len(problems)


def command(
    dataset: flags.Dataset = None,
    data_dir: flags.DataDir = None,
    val_fraction: flags.ValFraction = None,
    test_fraction: flags.TestFraction = None,
    seed: flags.Seed = 0,
    download: flags.Download = False,
    image_column: flags.ImageColumn = None,
    label_column: flags.LabelColumn = None,
    caltech_background: flags.CaltechBackground = False,
    labels: flags.Labels = None,
    label_sep: flags.LabelSep = None,
    task: flags.Task = "auto",
    num_workers: flags.NumWorkers = -1,
    quick: Annotated[bool, typer.Option(help="Read headers only: much faster, but truncated files go unnoticed.")] = False,
) -> None:
    """Check a dataset before training: classes and counts per split, image sizes and modes, exact duplicates,
    and every unreadable file with the reason.

    Exit status: 0 clean, 1 problems found (unreadable files, duplicates, classes without training images), 2 bad flags or data that cannot be opened.

    Example:

      tl check-data --dataset imagefolder --data-dir data/hymenoptera
    """
    cfg = flags.data_config(dataset=dataset, data_dir=data_dir, val_fraction=val_fraction, test_fraction=test_fraction,
                            download=download, image_column=image_column, label_column=label_column,
                            caltech_background=caltech_background, batch_size=32, num_workers=num_workers,
                            labels=labels, label_sep=label_sep, task=task)
    if cfg.dataset == "labels":  # the label file's own problems first; its images only once every row is usable
        from tl.data.label_check import findings
        from tl.progress import out_console

        problems, notes = findings(cfg)
        for line in notes + problems:
            out_console().print(line, highlight=False, markup=False)
        if any(not line.startswith(("unlabelled", "few")) for line in problems):
            out_console().print(f"{len(problems)} problem(s) in {labels}; the images are checked once its rows are fixed")
            raise typer.Exit(1)
        if print_report(check(cfg, seed=seed, quick=quick)) or problems:
            raise typer.Exit(1)
        return
    if print_report(check(cfg, seed=seed, quick=quick)):
        raise typer.Exit(1)
