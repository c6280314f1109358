"""The command line as a user meets it: help, the same flags everywhere, one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT, cli


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"--[a-z][a-z0-9-]+", help_text))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**__import__("os").environ, "COLUMNS": "200"})


def test_tl_train_and_module_help_list_the_same_options():
    via_tl = _run("-m", "tl.cli", "train", "--help")
    via_module = _run("-m", "tl.train", "--help")
    assert via_tl.returncode == 0 and via_module.returncode == 0
    options = _options(via_tl.stdout)
    assert {"--arch", "--weights", "--strategy", "--freeze-depth", "--lr", "--epochs", "--mixed-precision", "--ema"} <= options
    assert options == _options(via_module.stdout)


def test_error_is_one_line_with_hint_and_no_traceback(tmp_path):
    result = _run("-m", "tl.cli", "train", "--arch", "resnet_18", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "error: --arch: unknown architecture 'resnet_18'"
    assert "did you mean resnet18" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_wrong_data_dir_is_one_line(tmp_path):
    result = _run("-m", "tl.train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a folder" in result.stderr


def test_archs_lists_heads():
    result = cli("archs", "squeezenet")
    assert result.exit_code == 0
    assert "squeezenet1_0" in result.output and "classifier" in result.output
    assert cli("archs", "no-such-net").exit_code != 0
