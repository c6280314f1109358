"""Every command's --help reads in an 80-column terminal: each flag in full, nothing cut with an ellipsis.

The commands are read from the registrar (``tl.cli``) at test time, so a command added there is checked too;
the option names come from the click command's own params (``opts`` and ``secondary_opts``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from tests.conftest import ROOT
from tl.cli import app

WIDTH = 80


def _walk(command, path=()):
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


COMMANDS = dict(_walk(typer.main.get_command(app)))
PROGRAMS = {"tl.train": ("train",), "tl.predict_dir": ("predict-dir",), "tl.doctor": ("doctor",)}


def _option_names(command) -> list[str]:
    return [name for param in command.params if not getattr(param, "hidden", False)
            for name in (*param.opts, *getattr(param, "secondary_opts", ())) if name.startswith("-")]


def _problems(command, output: str) -> list[str]:
    problems = [f"{name} not shown in full" for name in _option_names(command)
                if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", output)]
    problems += [f"cut: {cut!r}" for cut in re.findall(r"-[\w-]*…", output)]
    if "…" in output:  # tl's help texts never contain one: any is a cut default, choice or help text
        problems.append("an ellipsis in: " + " / ".join(line.strip() for line in output.splitlines() if "…" in line))
    problems += [f"line wider than {WIDTH}: {line!r}" for line in output.splitlines() if len(line) > WIDTH]
    # the choices (<a|b|c>) and defaults ([default: x]) of each option's help record, whole (line breaks aside)
    ctx, flat = typer.Context(command, info_name=command.name), " ".join(output.split())
    records = [record for param in command.params if (record := param.get_help_record(ctx))]
    problems += [f"{piece} not shown whole" for name, text in records
                 for piece in re.findall(r"<[^<>]+>", name) + re.findall(r"\[default: [^\]]+\]", text) if piece not in flat]
    return problems


def test_every_registered_command_is_checked():
    assert {("train",), ("predict-dir",), ("doctor",), ("slurm", "submit"), ("check-data",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda path: " ".join(("tl", *path)))
def test_help_at_80_columns_shows_every_option_in_full(path):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    assert _problems(COMMANDS[path], result.output) == []


@pytest.mark.parametrize("module", list(PROGRAMS))
def test_python_m_programs_help_at_80_columns(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                            check=False, timeout=120, env={**os.environ, "COLUMNS": str(WIDTH)})
    assert result.returncode == 0, result.stderr
    assert _problems(COMMANDS[PROGRAMS[module]], result.stdout) == []
