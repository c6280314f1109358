"""Files that appear whole or not at all: written beside their place, then moved into it (``os.replace``)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tl.errors import TLError


@contextmanager
def replaced_when_written(out: Path, suffix: str, hint: str) -> Iterator[Path]:
    """A hidden partial file beside ``out`` (``.NAME.suffix``) to write in the block; it takes ``out``'s place only
    when the block ends without error, so a failure or a kill leaves ``out`` as it was. An OSError (no space, no
    permission) is one TLError line naming ``out``, with ``hint``. The partial file never stays behind."""
    partial = out.with_name(f".{out.name}.{suffix}")
    try:
        yield partial
        os.replace(partial, out)
    except OSError as exc:
        raise TLError(f"cannot write {out} ({exc.strerror or exc})", hint) from exc
    finally:
        partial.unlink(missing_ok=True)
