"""``--out preds.parquet``: the predictions CSV's columns in Parquet, probabilities as float64, written as it goes.

A Parquet file is only valid once its footer is written, at the end, so a killed run would lose everything. The
rows in progress therefore stream into ``OUT.partial.csv``, the same CSV (and the same code: flushed per batch,
a half row cut on ``--resume``, a failed write cut back to its last batch) that ``--out x.csv`` writes; the
finished run turns it into ``OUT`` and removes it. The probabilities are the CSV's 6-decimal values, so both
formats hold the same numbers, and a finished Parquet can be turned back into that CSV exactly (``--resume``
after files were added).

The writer is deterministic (fixed row groups of ``ROW_GROUP_ROWS`` rows, each one contiguous chunk; fixed
compression), so ``tl merge-predictions`` of Parquet shards is byte for byte the file one process writes.
Empty CSV cells are nulls. A file name that is not UTF-8 cannot be a Parquet string: its bad bytes are written as
``\\xNN``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from tl.errors import TLError
from tl.inference.predictions_csv import csv_safe, csv_unsafe
from tl.inference.replace_file import replaced_when_written

if TYPE_CHECKING:
    import pyarrow as pa

ROW_GROUP_ROWS = 65_536
WRITER = {"compression": "zstd", "compression_level": 3, "use_dictionary": True, "write_statistics": True,
          "version": "2.6", "data_page_version": "1.0"}


def is_parquet(out: Path) -> bool:
    return out.suffix.lower() == ".parquet"


def journal_of(out: Path) -> Path:
    """Where the rows of a Parquet --out are written until the run finishes."""
    return out.with_name(out.name + ".partial.csv")


def _is_float(column: str) -> bool:
    return column == "confidence" or column.startswith(("p_", "prob_"))


def arrow_schema(header: list[str]) -> "pa.Schema":
    import pyarrow as pa

    return pa.schema([(name, pa.float64() if _is_float(name) else pa.string()) for name in header])


def _strings(values: list[str | None]) -> "pa.Array":
    import pyarrow as pa

    try:
        return pa.array(values, pa.string())
    except (UnicodeEncodeError, pa.ArrowException):  # a name that is not UTF-8 (surrogate-escaped bytes)
        return pa.array([None if v is None else v.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                         for v in values], pa.string())


def _table(rows: list[list[str]], schema: "pa.Schema") -> "pa.Table":
    import pyarrow as pa

    columns = []
    for number, field in enumerate(schema):
        cells = [row[number] for row in rows]
        if pa.types.is_floating(field.type):
            columns.append(pa.array([float(c) if c else None for c in cells], pa.float64()))
        else:
            columns.append(_strings([csv_unsafe(c) if c else None for c in cells]))
    return pa.Table.from_arrays(columns, schema=schema)


def csv_tables(path: Path, schema: "pa.Schema") -> Iterator["pa.Table"]:
    """The rows of a predictions CSV as tables of ``ROW_GROUP_ROWS`` rows."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        rows: list[list[str]] = []
        for row in reader:
            rows.append(row)
            if len(rows) == ROW_GROUP_ROWS:
                yield _table(rows, schema)
                rows = []
        if rows:
            yield _table(rows, schema)


def parquet_tables(path: Path, schema: "pa.Schema") -> Iterator["pa.Table"]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP_ROWS):
        yield pa.Table.from_batches([batch]).cast(schema)


def write_parquet(tables: Iterable["pa.Table"], out: Path, schema: "pa.Schema") -> int:
    """Write ``tables`` to ``out`` in row groups of exactly ``ROW_GROUP_ROWS`` rows (the last one shorter), each
    one contiguous chunk, so that the same rows give the same bytes however they arrived; atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    held, rows, total = [], 0, 0
    with replaced_when_written(out, "writing", "fix that (e.g. free some space), then run the same command with --resume") as partial:
        with pq.ParquetWriter(partial, schema, **WRITER) as writer:
            for table in tables:
                held.append(table)
                rows += table.num_rows
                while rows >= ROW_GROUP_ROWS:
                    whole = pa.concat_tables(held)
                    writer.write_table(whole.slice(0, ROW_GROUP_ROWS).combine_chunks(), row_group_size=ROW_GROUP_ROWS)
                    held, rows, total = [whole.slice(ROW_GROUP_ROWS)], rows - ROW_GROUP_ROWS, total + ROW_GROUP_ROWS
            if rows:
                writer.write_table(pa.concat_tables(held).combine_chunks(), row_group_size=ROW_GROUP_ROWS)
                total += rows
    return total


def finalise(journal: Path, out: Path, header: list[str]) -> None:
    """The finished rows of ``journal`` become the Parquet ``out``; the journal goes (a kill before leaves both)."""
    schema = arrow_schema(header)
    write_parquet(csv_tables(journal, schema), out, schema)
    journal.unlink()


def read_parquet_done(out: Path, header: list[str], done) -> int:
    """Add the paths of a finished Parquet --out to ``done``; the number of its failed rows."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(out)
    except Exception as exc:  # pyarrow raises its own errors for a file that is not Parquet
        raise TLError(f"--resume: {out} is not a Parquet file ({exc})", "choose a new --out, or pass --overwrite") from exc
    if parquet.schema_arrow.names != header:
        raise TLError(f"--resume: {out} has other columns than this prediction would write",
                      "resume with the same checkpoint, --top-k and --label-names, or choose a new --out")
    failed = 0
    for batch in parquet.iter_batches(batch_size=ROW_GROUP_ROWS, columns=["path", "error"]):
        for path in batch.column(0).to_pylist():
            done.add(path)
        failed += batch.num_rows - batch.column(1).null_count
    return failed


def parquet_to_journal(out: Path, journal: Path, header: list[str]) -> None:
    """A finished Parquet back into its CSV rows (exactly: the floats are the CSV's 6-decimal values), to add rows."""
    partial = journal.with_name(journal.name + ".new")
    with open(partial, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for table in parquet_tables(out, arrow_schema(header)):
            columns = [column.to_pylist() for column in table.columns]
            for row in zip(*columns):
                writer.writerow(["" if v is None else f"{v:.6f}" if isinstance(v, float) else csv_safe(v) for v in row])
    os.replace(partial, journal)


def check_parquet_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Besides ``check_out``: the rows of an unfinished Parquet run are not replaced without --overwrite."""
    journal = journal_of(out)
    if is_parquet(out) and journal.exists() and not (resume or overwrite):
        raise TLError(f"--out: {journal} holds the rows of an unfinished run into {out}",
                      "pass --resume to continue it, or --overwrite to start again")
