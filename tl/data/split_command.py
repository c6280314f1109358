"""``tl split``: a seeded, stratified train/val/test split of one folder of class folders, made once.

The split is tl's own (``tl.data.splits``, through ``build_datasets``), so ``OUT/split.json`` is exactly the manifest a
run writes and reads: ``tl train --data-dir DIR --out OUT`` trains on it. ``--materialize`` instead lays the split
out as ``OUT/train|val|test/<class>/`` links, for tools that want folders (and for ``--data-dir OUT``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

from tl.data.splits import MANIFEST
from tl.errors import TLError

PARTS = ("train", "val", "test")
SPLIT_HINTS = {  # the data code's hints speak of train/ and val/ folders, which tl split makes from --fractions
    " has no image of class": "a class needs 2 images to give one to val, 3 with a test share, and some left for train: "
                              "add images to it, remove its folder, or change --fractions (e.g. 0.8,0.2: no test share)",
    "no validation images": "add images to each class, or give val a larger share with --fractions",
    " class folder(s)": "tl split takes a folder with one sub-folder per class, at least two",
}


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
    """Write ``out/split.json`` (and the linked tree when ``materialize``): ({part: keys relative to ``folder``}, links by kind).

    Everything is checked before anything is written: a split that fails leaves ``out`` as it was, so the same
    command runs again. ``overwrite`` removes only what an earlier ``tl split`` wrote there."""
    if not folder.is_dir():
        raise TLError(f"{folder} is not a folder", "pass a folder with one sub-folder per class")
    if (folder / "train").is_dir():
        raise TLError(f"{folder} already has train/", "tl split takes one folder of class folders; this one is split already")
    shown, folder = folder, folder.resolve()
    if materialize and out.resolve().is_relative_to(folder):
        raise TLError(f"--out: {out} is inside {shown}", "tl would read the new train/ as a class: choose a folder outside it")
    manifest = out / MANIFEST
    stale = _earlier_split(out, materialize, overwrite)
    created = _make_folder(out)
    try:
        with tempfile.TemporaryDirectory() as scratch:  # the split is made and checked there, then moved in
            staged = Path(scratch) / MANIFEST
            _split_into(staged, shown, folder, fractions, seed)
            try:
                _remove(stale, out)
                shutil.copyfile(staged, manifest.with_name(f".{MANIFEST}.tmp"))
                manifest.with_name(f".{MANIFEST}.tmp").replace(manifest)
            except OSError as exc:
                raise TLError(f"--out: cannot write {manifest} ({exc.strerror or exc})",
                              "fix that (e.g. free some space), then run the same command with --overwrite") from exc
    except BaseException:
        _unmake(created)
        raise
    parts = json.loads(manifest.read_text())["splits"]
    try:
        ways = Counter(link(folder / key, out / part / key) for part, keys in parts.items() for key in keys) if materialize else Counter()
    except OSError as exc:
        raise TLError(f"--out: cannot write the links under {out} ({exc.strerror or exc})",
                      "fix that (e.g. free some space), then run the same command with --overwrite") from exc
    return parts, ways


def _split_into(manifest: Path, shown: Path, folder: Path, fractions: tuple[float, float, float], seed: int) -> None:
    """The split, made by tl's own data code (as ``tl train`` on the folder would make it), written to ``manifest``.
    That code names its folder ``--data-dir``: here it is FOLDER, as typed, and --fractions is what changes the split."""
    from tl.config import DataConfig
    from tl.data import flags
    from tl.data.datasets import build_datasets
    from tl.data.splits import pin

    _, val, test = fractions
    cfg = DataConfig(dataset="imagefolder", data_dir=str(folder), val_fraction=val, test_fraction=test)
    try:
        build_datasets(cfg, seed=seed, train_tf=flags.keep, eval_tf=flags.keep, manifest=manifest)
    except TLError as error:
        message = error.message.removeprefix("--data-dir: ").replace(str(folder), str(shown))
        hint = next((hint for part, hint in SPLIT_HINTS.items() if part in message), error.hint)
        raise TLError(message if str(shown) in message.split() else f"{shown}: {message}", hint) from error
    pin(manifest, "tl split")  # a run started in --out keeps this split


def _earlier_split(out: Path, materialize: bool, overwrite: bool) -> list[Path]:
    """The files an earlier ``tl split`` left in ``out`` that this one replaces: its links, the ones its split.json
    lists (it is replaced by renaming, not listed). Refuses without ``overwrite``, and refuses anything else in the
    train/ val/ test/ folders that ``materialize`` writes: tl did not make it, so it is not tl's to delete."""
    if out.exists() and not out.is_dir():
        raise TLError(f"--out {out} is a file", "give a folder (it is created if missing)")
    manifest = out / MANIFEST
    folders = [out / part for part in PARTS if (out / part).exists() or (out / part).is_symlink()]
    existing = ([manifest] if manifest.exists() else []) + (folders if materialize else [])
    if existing and not overwrite:
        raise TLError(f"--out: {existing[0]} already exists", "pass --overwrite to replace the split, or choose another --out")
    if not existing:
        return []
    listed = set()
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text())["splits"]
            listed = {(part, key) for part, keys in recorded.items() for key in keys
                      if part in PARTS and not os.path.isabs(key) and ".." not in Path(key).parts}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise TLError(f"--out: {manifest} is not a split tl can read", "move it away, or choose another --out")
    ours, foreign = [], []
    for part in PARTS:
        top = out / part
        if top.is_symlink() or top.is_file():
            foreign.append(top)
            continue
        for root, dirs, names in os.walk(top):  # symlinked folders are listed in dirs, not entered
            for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                path = Path(root, name)
                key = path.relative_to(top).as_posix()
                (ours if (part, key) in listed and not path.is_dir() else foreign).append(path)
    if foreign and materialize:
        raise TLError(f"--out: {foreign[0]} was not written by tl split, and --materialize writes "
                      f"{foreign[0].relative_to(out).parts[0]}/ there", "move it away (tl deletes only what it made), or choose another --out")
    return ours


def _remove(links: list[Path], out: Path) -> None:
    """An earlier split's links, then the folders they leave empty, up to ``out``."""
    for path in links:
        path.unlink()
    for folder in sorted({path.parent for path in links}, key=lambda folder: -len(folder.parts)):
        while folder != out and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def _make_folder(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; returns those it made, from the top."""
    missing = [path for path in (out, *out.parents) if not path.exists()][::-1]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((path for path in out.parents if path.exists() and not path.is_dir()), None)
        reason = f"{blocker} is a file" if blocker is not None else exc.strerror or str(exc)
        raise TLError(f"--out {out}: cannot create it ({reason})", "choose another --out") from exc
    try:
        tempfile.NamedTemporaryFile(dir=out, prefix=f".{MANIFEST}.").close()
    except OSError as exc:
        _unmake(missing)
        raise TLError(f"--out: cannot write in {out} ({exc.strerror or exc})", "choose another --out") from exc
    return missing


def _unmake(created: list[Path]) -> None:
    """Remove the folders ``_make_folder`` made, deepest first, as long as nothing went into them."""
    for path in reversed(created):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def command(
    folder: Annotated[Path, typer.Argument(help="Folder of class folders: FOLDER/<class>/*.jpg.", metavar="FOLDER")],
    out: Annotated[Path, typer.Option(help="Where split.json goes (and, with --materialize, train/ val/ test/).")],
    fractions: Annotated[str, typer.Option(help="train,val[,test] shares of every class, summing to 1.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Random seed of the split.")] = 0,
    materialize: Annotated[bool, typer.Option(help="Also write OUT/train|val|test/<class>/ as symlinks (hard links or copies where those fail).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a split already in --out.")] = False,
    labels: Annotated[Optional[Path], typer.Option(help="A label file (CSV of path,label rows) whose images are in FOLDER: split its rows instead (multi-label: every class in every split), for tl train --labels FILE --data-dir FOLDER --out OUT.")] = None,
) -> None:
    """Split a folder of class folders into train/val/test, stratified and seeded, once and for all.

    Examples:

      tl split data/flowers --out runs/flowers --fractions 0.7,0.15,0.15   # then: tl train --data-dir data/flowers --out runs/flowers

      tl split data/flowers --out data/flowers_split --materialize        # then: tl train --data-dir data/flowers_split
    """
    from rich.console import Console
    from rich.table import Table

    if labels is not None:
        if materialize:
            raise TLError("--materialize: a label file's split stays in split.json", "drop --materialize; tl train --labels reads it from --out")
        from tl.data.labelled import pin_split

        _, val, test = parse_fractions(fractions)
        per_class, images = pin_split(labels, folder, out, val=val, test=test, seed=seed, overwrite=overwrite)
        counts = {part: Counter(c) for part, c in per_class.items()}
        parts, ways = {}, Counter()
    else:
        parts, ways = make_split(folder, out, fractions=parse_fractions(fractions), seed=seed, materialize=materialize, overwrite=overwrite)
        counts = {part: Counter(Path(key).parts[0] for key in keys) for part, keys in parts.items() if keys}
        images = {part: len(keys) for part, keys in parts.items() if keys}
    table = Table(title=f"{folder} seed {seed}", title_justify="left")
    table.add_column("class")
    for part in counts:
        table.add_column(part, justify="right")
    for name in sorted(set().union(*counts.values())):
        table.add_row(name, *(str(c[name]) for c in counts.values()))
    table.add_row("total", *(str(images[part]) for part in counts), style="bold")  # images: several labels each add up to more
    console = Console(highlight=False, soft_wrap=True)
    console.print(table)
    resolved = out.resolve()
    console.print(f"wrote {resolved / 'split.json'}" + (f" and {', '.join(counts)} under {resolved} ("
                                                       + ", ".join(f"{n} {way}s" for way, n in ways.items()) + ")" if materialize else ""))
    console.print("train on it: tl train " + (f"--labels {labels.resolve()} --data-dir {folder.resolve()} --out {resolved}" if labels else
                  f"--dataset imagefolder --data-dir {resolved if materialize else folder.resolve()}" + ("" if materialize else f" --out {resolved}")))
