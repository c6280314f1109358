"""tl's figures in a real Jupyter kernel (nbclient): a Figure returned by a cell shows as an image without
``%matplotlib inline``, as the README's ``tl.plot(run)`` promises; a plain script stays headless (no pyplot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tl
from tests.conftest import ROOT, make_image_folder

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("notebook")
    data = make_image_folder(root / "data", {"red": (220, 30, 30), "blue": (30, 40, 220)}, 2)
    return tl.train(dataset="imagefolder", data_dir=data, out=root / "run", progress=False, arch="resnet18", weights="none",
                    image_size=32, num_workers=0, batch_size=4, epochs=1, log_every=1000).out


def test_figures_show_inline_in_a_fresh_kernel(run, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # as a fresh kernel starts: ipykernel picks the inline backend
    image = next((run.parent / "data" / "val" / "red").iterdir())
    cells = [f"import tl\ntl.plot({str(run)!r})",  # the README's cell, nothing before it
             f"tl.load({str(run)!r}).show_predictions([{str(image)!r}])"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in cells])
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    for cell in notebook.cells:
        kinds = [sorted(o.get("data", {})) for o in cell.outputs if o.output_type != "stream"]
        assert kinds == [["image/png", "text/plain"]], (cell.source, cell.outputs)  # one image, shown once


def test_a_script_stays_headless(run, tmp_path):
    code = ("import sys, tl\nfig = tl.plot(sys.argv[1])\nfig.savefig(sys.argv[2])\n"
            "assert 'matplotlib.pyplot' not in sys.modules and 'IPython' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    result = subprocess.run([sys.executable, "-c", code, str(run), str(tmp_path / "c.png")], capture_output=True, text=True,
                            cwd=ROOT, env=env)
    assert result.returncode == 0 and (tmp_path / "c.png").stat().st_size > 1000, result.stderr
