"""``tl merge-predictions``: the shards of a ``predict-dir --shard K/N`` run joined into the file one process writes.

The shards' records (``OUT.shard.json``, see ``shards``) say which block each holds, so the arguments can come in
any order. Before writing, every shard is checked: all N are there, each once, each finished, all made from the
same file list, and each holds exactly the files of its block, in order (the digest of its path column). Then
the rows are joined in block order: a CSV's bytes are copied as they are, Parquet goes through the same
deterministic writer as a single run's, so either way the result is byte for byte what one process writes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from tl.errors import TLError
from tl.inference.file_list import NameDigest
from tl.inference.predictions_csv import read_done
from tl.inference.predictions_parquet import arrow_schema, is_parquet, journal_of, parquet_tables, write_parquet
from tl.inference.replace_file import replaced_when_written
from tl.inference.shards import ShardRecord, read_record, record_path


@dataclass
class Merged:
    shards: int
    rows: int
    out: Path


def _records(shard_files: list[Path]) -> list[tuple[ShardRecord, Path]]:
    """(record, file) of each shard, in block order; refuses a set of shards that is not exactly one whole run."""
    found, by_index = [], {}
    for path in shard_files:
        if not path.is_file():
            raise TLError(f"no such shard file: {path}", "pass the --out files of every `tl predict-dir --shard K/N` run")
        record = read_record(path)
        if record is None:
            raise TLError(f"{path} has no shard record ({record_path(path).name} beside it)",
                          "merge the files that `tl predict-dir --shard K/N` wrote, with their .shard.json records")
        by_index.setdefault(record.shard[0], []).append(path)
        found.append((record, path))
    twice = {index: paths for index, paths in by_index.items() if len(paths) > 1}
    if twice:
        paths = twice[min(twice)]
        label = next(record.label for record, path in found if path == paths[0])
        raise TLError(f"shard {label} given twice: {', '.join(map(str, paths))}", "pass each shard once")
    counts = {record.shard[1] for record, _ in found}
    if len(counts) > 1:
        raise TLError(f"these shards split the files in different numbers of parts ({', '.join(f'{r.label} {p}' for r, p in found)})",
                      "merge the shards of one run: the same --shard K/N with the same N")
    if len({record.list_digest for record, _ in found}) > 1:
        raise TLError(f"these shards were made from different file lists ({', '.join(f'{r.list_files} files: {p}' for r, p in found)})",
                      "predict every shard from the same folder or --files list (resume the odd ones with --overwrite)")
    total = counts.pop()
    missing = [f"{k}/{total}" for k in range(total) if k not in by_index]
    if missing:
        raise TLError(f"missing shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} (given: {', '.join(sorted(f'{r.label} {p}' for r, p in found))})",
                      f"predict {'them' if len(missing) > 1 else 'it'} with tl predict-dir --shard K/N, then merge all {total}")
    unfinished = [f"{path} (shard {record.label})" for record, path in found
                  if not record.complete or journal_of(path).exists()]
    if unfinished:
        raise TLError(f"unfinished: {', '.join(unfinished)}", "finish each with its own command and --resume, then merge")
    return sorted(found, key=lambda item: item[0].shard[0])


def _check_rows(record: ShardRecord, path: Path, names: NameDigest) -> None:
    first, end = record.block
    if names.count != end - first or names.hexdigest() != record.block_digest:
        raise TLError(f"{path} does not hold exactly the files of shard {record.label} ({names.count} rows, its block has {end - first} files)",
                      "was it edited? predict that shard again with --overwrite")


def merge_predictions(shard_files: list[Path], out: Path, *, overwrite: bool = False) -> Merged:
    """Join the shard files (CSV or Parquet, as ``out``) into ``out``; see the module's docstring."""
    if not shard_files:
        raise TLError("no shard files given", "tl merge-predictions preds-0.csv preds-1.csv ... --out preds.csv")
    odd = [str(p) for p in shard_files if is_parquet(p) != is_parquet(out)]
    if odd:
        kind = "Parquet" if is_parquet(out) else "CSV"
        raise TLError(f"--out {out} is {kind}, but not {', '.join(odd)}", "merge CSV shards into a .csv, Parquet shards into a .parquet")
    if out.exists() and not overwrite:
        raise TLError(f"--out: {out} already exists", "pass --overwrite to replace it")
    if any(out.resolve() == p.resolve() for p in shard_files if p.exists()):
        raise TLError(f"--out {out} is one of the shards", "write the merged file elsewhere")
    ordered = _records(shard_files)
    out.parent.mkdir(parents=True, exist_ok=True)
    if is_parquet(out):
        rows = _merge_parquet(ordered, out)
    else:
        rows = _merge_csv(ordered, out)
    return Merged(len(ordered), rows, out)


def _merge_csv(ordered: list[tuple[ShardRecord, Path]], out: Path) -> int:
    heads, ends, rows = [], [], 0
    for record, path in ordered:
        with open(path, "rb") as handle:
            head = handle.readline()
        header = next(csv.reader([head.decode("utf-8", "surrogateescape")]), [])
        if heads and head != heads[0]:
            raise TLError(f"{path} has other columns than {ordered[0][1]}", "merge shards predicted with the same model and --top-k")
        names = NameDigest()
        _, _, end = read_done(path, header, (), names)
        _check_rows(record, path, names)
        heads.append(head)
        ends.append(end)
        rows += names.count
    with replaced_when_written(out, "merging", "choose another --out, or free some space") as partial:
        with open(partial, "wb") as target:
            target.write(heads[0])
            for (_, path), end in zip(ordered, ends):
                with open(path, "rb") as source:
                    source.seek(len(heads[0]))
                    left = end - len(heads[0])
                    while left > 0:
                        chunk = source.read(min(left, 1 << 22))
                        target.write(chunk)
                        left -= len(chunk)
    return rows


def _merge_parquet(ordered: list[tuple[ShardRecord, Path]], out: Path) -> int:
    import pyarrow.parquet as pq

    schemas = []
    for record, path in ordered:
        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow's own errors for a file that is not Parquet
            raise TLError(f"{path} is not a Parquet file ({exc})", "predict that shard again with --overwrite") from exc
        schema = parquet.schema_arrow.remove_metadata()
        if schemas and schema != schemas[0]:
            raise TLError(f"{path} has other columns than {ordered[0][1]}", "merge shards predicted with the same model and --top-k")
        names = NameDigest()
        for batch in parquet.iter_batches(columns=["path"]):
            for name in batch.column(0).to_pylist():
                names.add(name)
        _check_rows(record, path, names)
        schemas.append(schema)
    schema = arrow_schema(schemas[0].names)
    return write_parquet((table for _, path in ordered for table in parquet_tables(path, schema)), out, schema)


def command(
    shards: Annotated[list[Path], typer.Argument(help="The --out files of every `tl predict-dir --shard K/N` run (any order; their .shard.json records beside them).", show_default=False)],
    out: Annotated[Path, typer.Option(help="The merged file (.csv or .parquet, as the shards).")] = ...,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Join the shards of `tl predict-dir --shard K/N` into one file, byte for byte the one a single process writes
    for all the files. Refuses (exit 2, naming them) shards missing, repeated, unfinished or from another file list.

    Examples:

      tl merge-predictions preds-0.csv preds-1.csv preds-2.csv preds-3.csv --out preds.csv

      tl merge-predictions preds-*.parquet --out preds.parquet
    """
    from tl.progress import out_console

    merged = merge_predictions(list(shards), out, overwrite=overwrite)
    out_console().print(f"merged {merged.shards} shards, {merged.rows} rows: {merged.out}", highlight=False, markup=False, soft_wrap=True)
