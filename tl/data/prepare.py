"""``tl prepare``: a dataset written once as Hugging Face ``datasets`` Arrow shards that ``tl train --dataset hf:PREP`` reads.

On a cluster the slow part of a folder of photos is not the model: it is hundreds of thousands of small files on a
network file system, each opened, stat'ed and decoded at camera size every epoch by every node. Preparing once
reads each file once, keeps the splits tl would make (``flags.build``: the same seeded split as ``tl train`` with
the same flags and ``--seed``), shrinks every image to the short side training needs (re-encoded as JPEG, quality
90; a JPEG already small enough keeps its bytes) and writes a few large shards (``DatasetDict.save_to_disk``) with
a ``label`` ClassLabel that carries the class names. Rows stream through ``Dataset.from_generator``, so memory
stays bounded whatever the set's size; unreadable files are left out, listed in ``PREP/unreadable.txt`` and on stderr.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from tl.data import flags
from tl.errors import TLError

SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}  # tl's split -> the hub's convention
UNREADABLE = "unreadable.txt"
QUALITY = 90


def shrink(image: Any, short_side: int):
    """An RGB PIL image whose short side is at most ``short_side`` (never enlarged) from a PIL image or a uint8
    (3, H, W) tensor (what ``read_image`` gives)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image.permute(1, 2, 0).numpy())
    width, height = image.size
    if min(width, height) > short_side:
        factor = short_side / min(width, height)
        image = image.resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.BICUBIC, reducing_gap=3.0)
    return image.convert("RGB")


def _jpeg_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=QUALITY)
    return buffer.getvalue()


def _file_row(path: Path, short_side: int) -> bytes:
    """The JPEG bytes of one file: its own when it is an RGB/greyscale JPEG no larger than needed, else re-encoded
    from a (reduced-size) decode. Raises TLError for an unreadable file."""
    from PIL import Image

    from tl.data.decode import read_image

    try:
        with Image.open(path) as header:
            small_jpeg = header.format == "JPEG" and header.mode in ("RGB", "L") and min(header.size) <= short_side
    except Exception:
        small_jpeg = False
    if small_jpeg:
        read_image(path)  # the same check training makes: a damaged file is left out now, not found mid-epoch
        return path.read_bytes()
    return _jpeg_bytes(shrink(read_image(path, short_side), short_side))


def _rows(datasets: list, shards: list[list[int]], short_side: int, unreadable_file: str) -> Iterator[dict]:
    """Rows {"image": {"bytes", "path"}, "label"} of ``dataset[shard]`` for each (dataset, shard) pair (``from_generator``
    hands each process some of the pairs); files that cannot be read are appended to ``unreadable_file``.PID."""
    for dataset, indices in zip(datasets, shards):
        yield from _shard_rows(dataset, indices, short_side, unreadable_file)


def _shard_rows(dataset: Any, indices: list[int], short_side: int, unreadable_file: str) -> Iterator[dict]:
    samples = getattr(dataset, "samples", None)  # ImageFiles: read the files here, for the reason and the size
    for index in indices:
        if samples is not None:
            path, label = samples[index]
            try:
                data = _file_row(Path(path), short_side)
            except TLError as error:
                with open(f"{unreadable_file}.{os.getpid()}", "a") as notes:
                    notes.write(f"{path}\t{error.message}\n")
                continue
        else:  # arrays (cifar10), hub datasets, the synthetic set: images in memory
            image, label, readable = dataset[index]
            if not readable:
                with open(f"{unreadable_file}.{os.getpid()}", "a") as notes:
                    notes.write(f"{index}\tunreadable row\n")
                continue
            data = _jpeg_bytes(shrink(image, short_side))
        yield {"image": {"bytes": data, "path": None}, "label": _label_value(label)}


def _label_value(label: Any) -> Any:
    """A class index, or a multi-label image's list of them (from a tuple, or a 0/1 vector)."""
    if isinstance(label, tuple):
        return list(label)
    if getattr(label, "ndim", 0) == 1:
        return label.nonzero().flatten().tolist()
    return int(label)


def prepare(cfg, out: Path, *, seed: int = 0, short_side: int = 256, num_proc: int = 1, overwrite: bool = False) -> dict:
    """Write the splits tl would use for ``cfg`` and ``seed`` to ``out`` (``DatasetDict.save_to_disk``).

    Returns {"splits": {name: rows}, "classes": [...], "unreadable": ["path<TAB>reason", ...]}."""
    import datasets

    if short_side < 8:
        raise TLError(f"--short-side {short_side}: too small", "pass the resize size training uses, e.g. 256 for 224 px crops")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise TLError(f"--out: {out} is not empty", "choose another --out, or pass --overwrite to replace it")
        shutil.rmtree(out)
    bundle = flags.build(cfg, seed=seed)
    work = out / ".work"
    work.mkdir(parents=True)
    label = datasets.ClassLabel(names=list(bundle.class_names))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Sequence(label) if bundle.multilabel else label})
    notes = str(work / "unreadable")
    parts = {}
    try:
        for name, dataset in flags.splits(bundle):
            procs = max(1, min(num_proc, len(dataset)))
            shards = [list(range(len(dataset)))[i::procs] for i in range(procs)]
            parts[SPLIT_NAMES[name]] = datasets.Dataset.from_generator(
                _rows, features=features, cache_dir=str(work / "cache"), num_proc=procs if procs > 1 else None,
                split=datasets.NamedSplit(SPLIT_NAMES[name]), keep_in_memory=False,
                gen_kwargs={"datasets": [dataset] * procs, "shards": shards, "short_side": short_side, "unreadable_file": notes})
        unreadable = sorted(line.rstrip("\n") for file in work.glob("unreadable.*") for line in open(file))
        if not len(parts["train"]):
            (out / UNREADABLE).write_text("".join(f"{line}\n" for line in unreadable))  # the list the hint points to
            raise TLError(f"--data-dir: no readable training image under {cfg.data_dir}", f"see {out / UNREADABLE}")
        datasets.DatasetDict(parts).save_to_disk(str(out), num_proc=num_proc if num_proc > 1 else None)
    finally:
        parts.clear()  # release the cache files' memory maps before they are removed
        shutil.rmtree(work, ignore_errors=True)
    (out / UNREADABLE).write_text("".join(f"{line}\n" for line in unreadable))
    loaded = datasets.load_from_disk(str(out))
    return {"splits": {name: len(split) for name, split in loaded.items()}, "classes": list(bundle.class_names),
            "unreadable": unreadable}


PrepareDataset = Annotated[Optional[str], typer.Option(help=flags.DATASET_HELP + "; without --data-dir, imagefolder (which needs one).",
                                                        rich_help_panel=flags.DATA, show_default=False)]


def command(
    dataset: PrepareDataset = None,
    data_dir: flags.DataDir = None,
    out: Annotated[Path, typer.Option(help="Folder to write (save_to_disk layout): train with --dataset hf:OUT.")] = Path("prepared"),
    short_side: Annotated[int, typer.Option(help="Shrink every image to this short side (never enlarged): the resize "
                                                 "size training uses (256 for 224 px crops).")] = 256,
    val_fraction: flags.ValFraction = None,
    test_fraction: flags.TestFraction = None,
    seed: flags.Seed = 0,
    num_proc: Annotated[int, typer.Option(help="Processes that read and encode images.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    download: flags.Download = False,
    image_column: flags.ImageColumn = None,
    label_column: flags.LabelColumn = None,
    caltech_background: flags.CaltechBackground = False,
    labels: flags.Labels = None,
    label_sep: flags.LabelSep = None,
) -> None:
    """Write a dataset once as Arrow shards with tl's splits, images shrunk to --short-side.

    Example: tl prepare --dataset imagefolder --data-dir photos --out photos-prep && tl train --dataset hf:photos-prep ...
    """
    from tl.progress import log, out_console, setup_logging

    setup_logging(True)
    cfg = flags.data_config(dataset=dataset, data_dir=data_dir, val_fraction=val_fraction, test_fraction=test_fraction,
                            download=download, image_column=image_column, label_column=label_column,
                            caltech_background=caltech_background, batch_size=32, num_workers=0, fallback="imagefolder",
                            labels=labels, label_sep=label_sep)
    result = prepare(cfg, out, seed=seed, short_side=short_side, num_proc=num_proc, overwrite=overwrite)
    for line in result["unreadable"]:
        log.warning(f"left out: {line}")
    counts = ", ".join(f"{name} {rows}" for name, rows in result["splits"].items())
    out_console().print(f"{out}: {len(result['classes'])} classes; {counts}; {len(result['unreadable'])} unreadable "
                        f"({out / UNREADABLE}). Train with --dataset hf:{out}")
