"""How a tl command runs as a program: a TLError becomes one line and a hint on stderr (exit 2), no traceback.

Used by the ``tl`` registrar (``tl.cli``) and by the single-command programs (``python -m tl.train``,
``python -m tl.predict_dir``, ``python -m tl.doctor``), so they all fail the same way. ``TL_DEBUG=1`` re-raises.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn

import typer

from tl.errors import TLError


def report(error: TLError) -> NoReturn:
    if os.environ.get("TL_DEBUG"):
        raise error
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    print(f"{prefix}error: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"{prefix}hint: {error.hint}", file=sys.stderr)
    sys.exit(2)


def run_single(command: Callable, context_settings: dict | None = None) -> None:
    """Run one command function as a program of its own (``python -m tl.train``), with the same error handling."""
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(context_settings=context_settings)(command)
    try:
        single()
    except TLError as error:
        report(error)
