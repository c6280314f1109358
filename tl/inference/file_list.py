"""The files predict-dir reads, in order: a folder's images (scanned once, sorted) or a list file (``--files``).

Held compactly because a cluster job lists millions of them: every name (the path column, as written) in one
bytes buffer with an offset each, ~(name length + 8) bytes a file. A Python list of ``Path`` objects cost ~250
bytes a file (and a set of the names done another ~100), which at 1,000,000 files was most of the process.
"""

from __future__ import annotations

import csv
import hashlib
import os
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from tl.errors import TLError

if TYPE_CHECKING:
    import numpy as np

ENCODING = ("utf-8", "surrogateescape")  # a file name that is not UTF-8 round-trips byte for byte


def name_hash(name: str) -> bytes:
    """128 bits of a name: what ``--resume`` compares instead of the names (no collision in any folder that exists)."""
    return hashlib.blake2b(name.encode(*ENCODING), digest_size=16).digest()


class NameSet:
    """The names already written, as hashes: ``add`` them one by one, then ``array()`` for ``FileList.pending``."""

    def __init__(self) -> None:
        self._hashes = bytearray()
        self.count = 0

    def add(self, name: str) -> None:
        self._hashes += name_hash(name)
        self.count += 1

    def array(self) -> "np.ndarray":
        import numpy as np

        return np.frombuffer(self._hashes, dtype="S16")  # no copy (and no more ``add`` while it lives)


class NameDigest:
    """One digest of a sequence of names, in order: two blocks of files are the same when their digests are."""

    def __init__(self) -> None:
        self._hash, self.count = hashlib.blake2b(digest_size=16), 0

    def add(self, name: str) -> None:
        raw = name.encode(*ENCODING)
        self._hash.update(len(raw).to_bytes(8, "little") + raw)
        self.count += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class FileList:
    """``names`` in order, each read from ``os.path.join(root, name)`` (an absolute name stays as it is), and
    ``errors``: {index: why that file cannot be read} found while listing (a broken link)."""

    def __init__(self, root: str, blob: bytes, offsets: array, errors: dict[int, str]) -> None:
        self.root, self._blob, self._offsets, self.errors = root, blob, offsets, errors

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def name(self, index: int) -> str:
        return self._blob[self._offsets[index]:self._offsets[index + 1]].decode(*ENCODING)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.name(index))

    def __iter__(self) -> Iterator[str]:
        return (self.name(i) for i in range(len(self)))

    def digest(self, start: int = 0, stop: int | None = None) -> str:
        digest = NameDigest()
        for index in range(start, len(self) if stop is None else stop):
            digest.add(self.name(index))
        return digest.hexdigest()

    def pending(self, start: int, stop: int, done: "np.ndarray") -> "np.ndarray":
        """Indices in [start, stop) whose names are not among the ``done`` hashes, in order."""
        import numpy as np

        indices = np.arange(start, stop, dtype=np.int64)
        if not len(done) or not len(indices):
            return indices
        hashes = bytearray()
        for index in range(start, stop):
            hashes += name_hash(self.name(index))
        return indices[~np.isin(np.frombuffer(hashes, dtype="S16"), done)]


class _Packer:
    def __init__(self) -> None:
        self.blob, self.offsets, self.errors = bytearray(), array("q", [0]), {}

    def add(self, name: str, error: str = "") -> None:
        if error:
            self.errors[len(self.offsets) - 1] = error
        self.blob += name.encode(*ENCODING)
        self.offsets.append(len(self.blob))

    def done(self, root: str) -> FileList:
        return FileList(root, bytes(self.blob), self.offsets, self.errors)


def scan_folder(folder: Path) -> FileList:
    """Image files under ``folder`` as ``tl.data.datasets.scan_images`` finds them (hidden ones skipped, symlinked
    folders not entered, broken links as errors), in its order (part by part), without a stat per file: each folder
    is listed sorted and walked depth first, which yields that order with no sort over all the files."""
    from tl.data.datasets import IMAGE_EXTENSIONS

    packer = _Packer()
    stack: list[tuple[Iterator[os.DirEntry], str]] = [(_sorted_entries(str(folder)), "")]
    while stack:
        entries, prefix = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                stack.append((_sorted_entries(entry.path), f"{prefix}{entry.name}/"))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                if entry.is_file():
                    packer.add(prefix + entry.name)
                elif entry.is_symlink():  # is_file() follows the link: its target is gone
                    packer.add(prefix + entry.name, f"broken link: its target {os.readlink(entry.path)} does not exist")
        except OSError:  # deleted or unreadable between listing and looking
            continue
    if len(packer.offsets) == 1:
        raise TLError(f"no images under {folder}", f"supported extensions (any case): {' '.join(IMAGE_EXTENSIONS)}")
    return packer.done(str(folder))


def _sorted_entries(directory: str) -> Iterator[os.DirEntry]:
    try:
        with os.scandir(directory) as found:
            entries = sorted((e for e in found if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        entries = []
    return iter(entries)


def read_file_list(listing: Path) -> FileList:
    """``--files``: a text file of paths, one a line, or a CSV (``.csv``) with a ``path`` column; relative paths are
    relative to the list's folder. The order is the list's, and the path column repeats each path as listed."""
    if not listing.is_file():
        raise TLError(f"--files: {listing} is not a file", "pass a text file of image paths (one a line) or a CSV with a path column")
    import numpy as np

    packer, hashes = _Packer(), NameSet()
    try:
        with open(listing, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:  # -sig: a spreadsheet's BOM
            for name in _listed(handle, listing):
                if name.strip():
                    packer.add(name)
                    hashes.add(name)
    except (OSError, csv.Error) as exc:
        raise TLError(f"--files: cannot read {listing} ({exc})", "pass a text file of paths or a CSV with a path column") from exc
    if len(packer.offsets) == 1:
        raise TLError(f"--files: {listing} lists no files", "one image path a line, or a CSV with a path column")
    found = packer.done(str(listing.parent))
    keys = hashes.array()
    order = np.argsort(keys, kind="stable")
    twice = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if len(twice):
        name = found.name(int(order[twice[0] + 1]))
        raise TLError(f"--files: {name!r} is listed twice in {listing}", "list each file once: its row would be written twice")
    return found


def _listed(handle, listing: Path) -> Iterator[str]:
    if listing.suffix.lower() != ".csv":
        for line in handle:
            yield line.rstrip("\r\n")
        return
    reader = csv.reader(handle)
    header = next(reader, [])
    if "path" not in header:
        raise TLError(f"--files: {listing} has no `path` column (its columns: {', '.join(header) or 'none'})",
                      "name the column of image paths `path`, or pass a plain text list")
    column = header.index("path")
    for row in reader:
        yield row[column] if column < len(row) else ""


def check_inputs(images: Path | None, files: Path | None) -> None:
    """Exactly one of IMAGES (a folder, scanned) and ``--files`` (a list, which needs no walk of a folder)."""
    if images is not None and files is not None:
        raise TLError("give either a folder of IMAGES or --files LIST, not both", "tl predict-dir photos/ ...  or  tl predict-dir --files list.txt ...")
    if images is None and files is None:
        raise TLError("no images given", "tl predict-dir photos/ ...  or  tl predict-dir --files list.txt ...")
    if images is not None and not images.is_dir():
        raise TLError(f"{images} is not a folder", "pass a folder of images (searched recursively); for a list of files use --files, for a few `tl predict`")
    if files is not None and not files.is_file():
        raise TLError(f"--files: {files} is not a file", "pass a text file of image paths (one a line) or a CSV with a path column")


def load_files(images: Path | None, files: Path | None) -> FileList:
    check_inputs(images, files)
    return scan_folder(images) if files is None else read_file_list(files)
