"""tl export: clean bundles from best/last/state folders, ONNX checked against PyTorch."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY, cli
from tl.models.checkpoint import checkpoint_state, load_checkpoint, read_meta


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    result = cli("train", *TINY, "--dataset", "synthetic", "--synthetic-per-class", "8", "--epochs", "1",
                 "--save-every-steps", "1", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_export_state_folder_gives_loadable_bundle(run, tmp_path):
    state = sorted((run / "state").iterdir())[-1]
    result = cli("export", state, "--to", tmp_path / "bundle")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["model.safetensors", "tl.json"]
    model, meta = load_checkpoint(tmp_path / "bundle")
    assert meta["class_names"] == read_meta(run / "last")["class_names"]
    last = checkpoint_state(run / "last")  # the newest state is the end of the only epoch: same weights as last/
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())


def test_export_onnx_matches_pytorch(run, tmp_path):
    pytest.importorskip("onnxruntime")
    result = cli("export", run / "best", "--to", tmp_path / "onnx", "--format", "onnx")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "onnx" / "model.onnx").stat().st_size > 1000


def test_export_missing_checkpoint_is_clear(tmp_path):
    result = cli("export", tmp_path / "nope", "--to", tmp_path / "x")
    assert "no checkpoint" in str(result.exception)
