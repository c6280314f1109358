"""``tl split``: a seeded, stratified train/val/test split of one folder of class folders, made once.

The split is tl's own (``tl.data.splits``, through ``build_datasets``), so ``OUT/split.json`` is exactly the manifest a
run writes and reads: ``tl train --data-dir DIR --out OUT`` trains on it. ``--materialize`` instead lays the split
out as ``OUT/train|val|test/<class>/`` links, for tools that want folders (and for ``--data-dir OUT``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from tl.errors import TLError

PARTS = ("train", "val", "test")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``train,val[,test]`` shares summing to 1 -> (train, val, test)."""
    try:
        shares = [float(v) for v in text.split(",")]
    except ValueError:
        shares = []
    if len(shares) == 2:
        shares.append(0.0)
    if len(shares) != 3 or shares[0] <= 0 or shares[1] <= 0 or shares[2] < 0 or abs(sum(shares) - 1) > 1e-6:
        raise TLError(f"--fractions: expected train,val[,test] shares above 0 that sum to 1, got {text!r}",
                      "e.g. --fractions 0.8,0.1,0.1 or --fractions 0.8,0.2")
    return shares[0], shares[1], shares[2]


def link(source: Path, target: Path) -> str:
    """Symlink, else hard link (file systems or Windows accounts without symlinks), else copy; returns which."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for name, make in (("symlink", os.symlink), ("hard link", os.link)):
        try:
            make(source, target)
            return name
        except OSError:
            continue
    shutil.copy2(source, target)
    return "copy"


def make_split(folder: Path, out: Path, *, fractions: tuple[float, float, float], seed: int,
               materialize: bool = False, overwrite: bool = False) -> tuple[dict[str, list[str]], Counter]:
    """Write ``out/split.json`` (and the linked tree when ``materialize``): ({part: keys relative to ``folder``}, links by kind)."""
    from tl.config import DataConfig
    from tl.data import flags
    from tl.data.datasets import build_datasets
    from tl.data.splits import MANIFEST, pin

    if not folder.is_dir():
        raise TLError(f"{folder} is not a folder", "pass a folder with one sub-folder per class")
    if (folder / "train").is_dir():
        raise TLError(f"{folder} already has train/", "tl split takes one folder of class folders; this one is split already")
    folder, out = folder.resolve(), out.resolve()
    if materialize and out.is_relative_to(folder):
        raise TLError(f"--out: {out} is inside {folder}", "tl would read the new train/ as a class: choose a folder outside it")
    manifest = out / MANIFEST
    existing = [p for p in (manifest, *(out / part for part in PARTS)) if p.exists()]
    if existing and not overwrite:
        raise TLError(f"--out: {existing[0]} already exists", "pass --overwrite to replace the split, or choose another --out")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

    _, val, test = fractions
    cfg = DataConfig(dataset="imagefolder", data_dir=str(folder), val_fraction=val, test_fraction=test)
    build_datasets(cfg, seed=seed, train_tf=flags.keep, eval_tf=flags.keep, manifest=manifest)
    pin(manifest, "tl split")  # a run started in --out keeps this split
    parts = json.loads(manifest.read_text())["splits"]
    ways = Counter(link(folder / key, out / part / key) for part, keys in parts.items() for key in keys) if materialize else Counter()
    return parts, ways


def command(
    folder: Annotated[Path, typer.Argument(help="Folder of class folders: FOLDER/<class>/*.jpg.", metavar="FOLDER")],
    out: Annotated[Path, typer.Option(help="Where split.json goes (and, with --materialize, train/ val/ test/).")],
    fractions: Annotated[str, typer.Option(help="train,val[,test] shares of every class, summing to 1.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Random seed of the split.")] = 0,
    materialize: Annotated[bool, typer.Option(help="Also write OUT/train|val|test/<class>/ as symlinks (hard links or copies where those fail).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a split already in --out.")] = False,
) -> None:
    """Split a folder of class folders into train/val/test, stratified and seeded, once and for all.

    Examples:

      tl split data/flowers --out runs/flowers --fractions 0.7,0.15,0.15   # then: tl train --data-dir data/flowers --out runs/flowers

      tl split data/flowers --out data/flowers_split --materialize        # then: tl train --data-dir data/flowers_split
    """
    parts, ways = make_split(folder, out, fractions=parse_fractions(fractions), seed=seed, materialize=materialize, overwrite=overwrite)
    from rich.console import Console
    from rich.table import Table

    counts = {part: Counter(Path(key).parts[0] for key in keys) for part, keys in parts.items() if keys}
    table = Table(title=f"{folder} seed {seed}", title_justify="left")
    table.add_column("class")
    for part in counts:
        table.add_column(part, justify="right")
    for name in sorted(set().union(*counts.values())):
        table.add_row(name, *(str(c[name]) for c in counts.values()))
    table.add_row("total", *(str(sum(c.values())) for c in counts.values()), style="bold")
    console = Console(highlight=False, soft_wrap=True)
    console.print(table)
    resolved = out.resolve()
    console.print(f"wrote {resolved / 'split.json'}" + (f" and {', '.join(counts)} under {resolved} ("
                                                       + ", ".join(f"{n} {way}s" for way, n in ways.items()) + ")" if materialize else ""))
    console.print(f"train on it: tl train --dataset imagefolder --data-dir {resolved if materialize else folder.resolve()}"
                  + ("" if materialize else f" --out {resolved}"))
