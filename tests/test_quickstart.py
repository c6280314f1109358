"""scripts/quickstart.ipynb runs top to bottom (nbclient), in its fast configuration: on the bees/ants photos when
they sit beside the project (../shared), else on the synthetic set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ROOT

NOTEBOOK = ROOT / "scripts" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("TL_QUICKSTART_FAST", "1")
    monkeypatch.setenv("TL_QUICKSTART_ROOT", str(ROOT.parent))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert (tmp_path / "runs" / "quickstart" / "best" / "model.safetensors").is_file()
    assert len((tmp_path / "runs" / "quickstart" / "preds.csv").read_text().splitlines()) > 1
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 2  # the curves and the prediction grid, inline
    assert Path(tmp_path / "runs" / "quickstart" / "eval.json").is_file()
