"""How a tl command runs as a program: a TLError becomes one line and a hint on stderr (exit 2), no traceback; a
run asked to stop (SIGTERM/SIGUSR1, as SLURM sends) exits 75 with the line that says how to continue (``stop_codes``).

Used by the ``tl`` registrar (``tl.cli``) and by the single-command programs (``python -m tl.train``,
``python -m tl.predict_dir``, ``python -m tl.doctor``), so they all fail the same way. ``TL_DEBUG=1`` re-raises.
They also share the help layout (``Typer`` below), so ``--help`` reads the same, and in full, at 80 columns.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from tl.errors import TLError

# Help is click's plain layout, not typer's rich panels. Typer's rich help lays every option out as a table of six
# columns (name | short | --no-name | short | type | help) that rich shrinks evenly to fit the terminal, and typer
# has no setting for those columns (rich_utils' STYLE_* settings are boxes and padding; rich ignores
# max_content_width). So at 80 columns any name over ~20 characters ended in "…" (`--synthetic-clas…`, 12 in
# `tl train`), a --x/--no-x pair took two name columns and the help got two or three words a line (433 lines for
# `tl train`). Click's layout puts name and type on one line with the help beside them, or below a long name:
# nothing is cut at any width and the help keeps 44 columns at 80, 66 at 100+. The classes below keep what the
# rich help had and click's lacks: the option groups (rich_help_panel) as headings, one name column for all of
# them, wrapping at spaces only (click's splits `--data-dir` and `no-resume` at the hyphen), and examples (the
# indented paragraphs of a docstring) one per line, wrapped as shell continuation lines so they still paste.
HELP_WIDTH = 100  # on a wider terminal the help stops here: longer lines are harder to read
NAME_WIDTH = 30  # the name column; a longer name has its help on the next line


def _wrap(text: str, width: int, indent: str = "") -> list[str]:
    """Wrap at spaces only; words joined by NUL (a flag and its value, ``[default: x]``) stay on one line."""
    lines = textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False)
    return [line.replace("\0", " ") for line in lines]


def _example(line: str, width: int) -> list[str]:
    """One example command, wrapped into `` \\``-continued lines; a trailing ``  # comment`` goes on its own line."""
    command, _, comment = line.partition("  # ")
    if command.startswith("#"):
        return _wrap(command, width, "# ")
    units: list[str] = []
    for word in re.findall(r"""(?:"[^"]*"|'[^']*'|\S)+""", command):  # a quoted argument is one word
        word = word.replace(" ", "\0")
        if units and units[-1].startswith("-") and "\0" not in units[-1] and not word.startswith("-"):
            units[-1] += "\0" + word  # --flag value
        else:
            units.append(word)
    parts = _wrap(" ".join(units), width - 2, "    ")
    return [part + " \\" for part in parts[:-1]] + parts[-1:] + (_wrap("# " + comment.strip(), width, "# ") if comment else [])


def _write_text(formatter, text: str) -> None:
    width = formatter.width - formatter.current_indent
    for number, paragraph in enumerate(text.split("\n\n")):
        if number:
            formatter.write("\n")
        if paragraph[:1].isspace():  # examples: indented in the docstring, one per line
            lines = [f"  {part}" for line in paragraph.splitlines() if line.strip() for part in _example(line.strip(), width - 2)]
        else:
            lines = _wrap(" ".join(paragraph.split()), width)
        formatter.write("".join(f"{'':>{formatter.current_indent}}{line}\n" for line in lines))


def _write_sections(formatter, sections: dict[str, list[tuple[str, str]]]) -> None:
    rows = [row for section in sections.values() for row in section]
    column = min(max((len(name) for name, _ in rows), default=0), NAME_WIDTH) + 2
    for title, section in sections.items():
        with formatter.section(title):
            indent = " " * formatter.current_indent
            for name, text in section:
                text = re.sub(r"\[default: \S+\]", lambda found: found.group().replace(" ", "\0"), text)
                lines = _wrap(text, max(formatter.width - formatter.current_indent - column, 20))
                first = lines.pop(0) if lines and len(name) < column - 1 else ""
                formatter.write(f"{indent}{name:<{column}}{first}".rstrip() + "\n")
                formatter.write("".join(f"{indent}{'':<{column}}{line}\n" for line in lines))


class _Help:
    """The help layout (see above) of a tl command or group, on top of typer's plain (non-rich) help."""

    def __init__(self, *args, context_settings: dict | None = None, **kwargs) -> None:
        super().__init__(*args, context_settings={"max_content_width": HELP_WIDTH, **(context_settings or {})}, **kwargs)

    def format_help_text(self, ctx, formatter) -> None:
        text = inspect.cleandoc(self.help or "").partition("\f")[0]
        if text:
            formatter.write_paragraph()
            with formatter.indentation():
                _write_text(formatter, text)

    def help_sections(self, ctx) -> dict[str, list[tuple[str, str]]]:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record:
                default = "Arguments" if param.param_type_name == "argument" else "Options"
                sections.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(record)
        return sections

    def format_options(self, ctx, formatter) -> None:
        _write_sections(formatter, self.help_sections(ctx))


class Command(_Help, TyperCommand):
    pass


class Group(_Help, TyperGroup):
    def help_sections(self, ctx) -> dict[str, list[tuple[str, str]]]:
        sections = super().help_sections(ctx)
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                summary = inspect.cleandoc(command.short_help or command.help or "").partition("\n\n")[0]
                sections.setdefault(getattr(command, "rich_help_panel", None) or "Commands", []).append((name, summary))
        return sections


class Typer(typer.Typer):
    """``typer.Typer`` with tl's help: plain layout, ``Command``/``Group``, for sub-apps' commands too (tl slurm)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**{"rich_markup_mode": None, "cls": Group, **kwargs})

    def command(self, *args, **kwargs):
        return super().command(*args, **{**kwargs, "cls": kwargs.get("cls") or Command})

    def add_typer(self, typer_instance: typer.Typer, **kwargs) -> None:
        for info in typer_instance.registered_commands:  # typer.Typer.command fills in TyperCommand itself
            info.cls = Command if info.cls in (None, TyperCommand) else info.cls
        super().add_typer(typer_instance, **{**kwargs, "cls": kwargs.get("cls") or Group})


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
    single = Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(context_settings=context_settings)(command)
    try:
        single()
    except TLError as error:
        report(error)


@contextmanager
def stop_codes(resume_hint: str = "continue with the same command and --resume auto") -> Iterator[None]:
    """A command's ending for a run that stopped as asked (tl.errors.Stopped): the hint, and EXIT_REQUEUE, on which
    SLURM's job script requeues; a second Ctrl-C, which stops at once: 130."""
    from tl.errors import EXIT_REQUEUE, Stopped
    from tl.progress import log

    try:
        yield
    except Stopped as stopped:
        log.warning(f"{stopped.where}; {resume_hint}")
        raise SystemExit(EXIT_REQUEUE)
    except KeyboardInterrupt:
        raise SystemExit(130)
