"""--weights: local files in every layout tl promises, heads of another size, and refusals that explain themselves."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import TINY, cli
from tl.errors import TLError
from tl.models.architectures import build_base, build_model
from tl.models.checkpoint import checkpoint_state


def test_checkpoint_of_4_classes_initialises_3_classes(tmp_path, caplog):
    out = tmp_path / "four"
    result = cli("train", *TINY, "--dataset", "synthetic", "--synthetic-classes", "4", "--synthetic-per-class", "8",
                 "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output
    trained = checkpoint_state(out / "best")
    with caplog.at_level(logging.INFO, logger="tl"):
        model, _ = build_model("resnet18", 3, weights=str(out / "best"))
    assert "dropped" in caplog.text and "3 classes" in caplog.text
    state = model.state_dict()
    backbone = [k for k in trained if not k.startswith("fc.")]
    assert backbone and all(torch.equal(state[k], trained[k]) for k in backbone)
    assert state["fc.fc.weight"].shape == (3, 512) and trained["fc.fc.weight"].shape == (4, 512)


def test_same_class_count_keeps_the_head(tmp_path):
    source, _ = build_model("resnet18", 3)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, _ = build_model("resnet18", 3, weights=str(path))
    assert torch.equal(model.state_dict()["fc.fc.weight"], source.state_dict()["fc.fc.weight"])


def test_torchvision_layout_pth_with_ddp_prefix(tmp_path, caplog):
    imagenet = build_base("squeezenet1_0")  # stands in for torchvision's own file: same keys, 1000-way head
    path = tmp_path / "squeezenet_ddp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in imagenet.state_dict().items()}}, path)
    with caplog.at_level(logging.INFO, logger="tl"):
        model, _ = build_model("squeezenet1_0", 2, weights=str(path))
    assert "dropped" in caplog.text
    assert torch.equal(model.state_dict()["features.0.weight"], imagenet.state_dict()["features.0.weight"])
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_imagenet_weights_load_into_a_cut_model(tmp_path):
    imagenet = build_base("resnet18")
    path = tmp_path / "r18.safetensors"
    save_file(imagenet.state_dict(), str(path))
    model, _ = build_model("resnet18", 2, weights=str(path), cut_at="layer3")
    assert torch.equal(model.state_dict()["trunk.layer3.0.conv1.weight"], imagenet.state_dict()["layer3.0.conv1.weight"])


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file(build_base("resnet18").state_dict(), str(path))
    with pytest.raises(TLError, match="do not fit") as excinfo:
        build_model("resnet34", 2, weights=str(path))
    assert "--arch" in excinfo.value.hint


def test_pickled_model_is_refused_without_running_it(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # what some tutorials do: the whole module, pickled
    with pytest.raises(TLError, match="pickled") as excinfo:
        build_model("resnet18", 2, weights=str(path))
    assert "state_dict" in excinfo.value.hint


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TLError, match="no such file"):
        build_model("resnet18", 2, weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(TLError, match="not a readable safetensors"):
        build_model("resnet18", 2, weights=str(bad))


def test_offline_download_names_the_local_file_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: torchvision must download
    import torchvision

    def no_network(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(TLError) as excinfo:
        build_model("resnet18", 2, weights="DEFAULT")
    assert "could not download" in excinfo.value.message and "--weights PATH" in excinfo.value.hint
    with pytest.raises(TLError, match="no weights named"):
        build_model("resnet18", 2, weights="IMAGENET1K_V9")
    assert torchvision  # imported for the weights enum


class _Marker:
    """Unpickling this creates a file: what a malicious weights file would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": _Marker(str(marker))}, path)
    with pytest.raises(TLError, match="pickled"):
        build_model("resnet18", 2, weights=str(path))
    assert not marker.exists()


def test_trust_pickle_loads_a_whole_pickled_model(tmp_path):
    source = build_base("resnet18")
    path = tmp_path / "whole.pth"
    torch.save(source, path)
    model, _ = build_model("resnet18", 2, weights=str(path), trust_pickle=True)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], source.state_dict()["layer1.0.conv1.weight"])


@pytest.mark.parametrize("content", [b"hi\n", b"", b"\x80\x02garbage" * 200, b"PK\x03\x04" + b"\x00" * 100],
                         ids=["text", "empty", "random", "cut-zip"])
def test_a_damaged_weights_file_cannot_be_read_and_says_so(tmp_path, content):
    path = tmp_path / "damaged.pth"
    path.write_bytes(content)
    for trust_pickle in (False, True):  # damage is damage: --trust-pickle would not help, so it is not suggested
        with pytest.raises(TLError) as excinfo:
            build_model("squeezenet1_0", 2, weights=str(path), trust_pickle=trust_pickle)
        assert excinfo.value.message.startswith(f"--weights: cannot read {path}: not a PyTorch/safetensors weights file, or damaged (")
        assert "--trust-pickle" not in str(excinfo.value)
    result = cli("predict", path, "--arch", "squeezenet1_0", "--weights", path)  # predict's ImageNet path reads it the same way
    assert isinstance(result.exception, TLError) and "cannot read" in result.exception.message


def test_download_messages_stay_off_stdout_and_the_hint_fits_the_command(monkeypatch, tmp_path):
    import json

    from tests.conftest import write_image

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty cache: torch.hub "downloads" and says so on stdout
    imagenet = build_base("squeezenet1_0").state_dict()
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, *args, **kwargs: torch.save(imagenet, dst))
    image = write_image(tmp_path / "a.jpg", (200, 30, 30))
    result = cli("predict", image, "--arch", "squeezenet1_0", "--weights", "DEFAULT", "--json")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads(result.stdout)[0]["path"] == str(image) and "Downloading" in result.stderr

    def no_network(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    result = cli("predict", image, "--arch", "squeezenet1_0", "--weights", "DEFAULT")
    assert isinstance(result.exception, TLError) and "--weights PATH" in result.exception.hint
    assert "--weights none" not in result.exception.hint  # random weights make no sense for predictions
    with pytest.raises(TLError) as excinfo:
        build_model("squeezenet1_0", 2, weights="DEFAULT")
    assert "--weights none" in excinfo.value.hint  # training may start from random weights
