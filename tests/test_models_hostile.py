"""Input sizes an architecture cannot take are refused before a run starts, not by a traceback in its first forward pass."""

from __future__ import annotations

import pytest

from tests.conftest import cli, make_image_folder
from tl.errors import TLError
from tl.models.architectures import check_image_size, input_sizes


@pytest.mark.parametrize("arch,size,message", [
    ("squeezenet1_0", 16, "--image-size 16 is too small for squeezenet1_0 (at least 21)"),
    ("inception_v3", 32, "--image-size 32 is too small for inception_v3 (at least 299)"),
    ("inception_v3", 128, "--image-size 128 is too small for inception_v3 (at least 299)"),  # its auxiliary head, in training
    ("alexnet", 40, "--image-size 40 is too small for alexnet (at least 63)"),
    ("vit_b_16", 40, "--image-size 40 does not fit vit_b_16: it takes exactly 224 px"),
    ("vit_b_16", 448, "--image-size 448 does not fit vit_b_16: it takes exactly 224 px"),
    ("maxvit_t", 256, "--image-size 256 does not fit maxvit_t: it takes exactly 224 px"),
])
def test_sizes_an_architecture_cannot_take_are_refused(arch, size, message):
    with pytest.raises(TLError) as caught:
        input_sizes(arch, image_size=size)
    assert caught.value.message == message and "--image-size" in caught.value.hint


@pytest.mark.parametrize("arch,size", [("squeezenet1_0", 21), ("resnet18", 8), ("swin_t", 32), ("vit_b_16", 224),
                                       ("inception_v3", 299), ("efficientnet_v2_s", 32), ("my_pkg.models:build", 8)])
def test_sizes_that_work_pass(arch, size):
    check_image_size(arch, size)  # swin pads to its windows: any size works, whatever its weights' min_size says


def test_synthetic_data_grows_to_the_smallest_size_the_architecture_takes():
    assert input_sizes("resnet18", dataset="synthetic", synthetic_size=32)[0] == 32
    assert input_sizes("inception_v3", dataset="synthetic", synthetic_size=32)[0] == 299  # infers at 75, trains at 299
    assert input_sizes("vit_b_16", dataset="synthetic", synthetic_size=32)[0] == 224


def test_train_refuses_before_writing_anything(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": (200, 30, 30), "b": (30, 30, 200)}, 2)
    out = tmp_path / "run"
    result = cli("train", "--arch", "squeezenet1_0", "--image-size", "16", "--weights", "none", "--num-workers", "0",
                 "--dataset", "imagefolder", "--data-dir", data, "--epochs", "1", "--out", out)
    assert isinstance(result.exception, TLError), result.output + repr(result.exception)
    assert result.exception.message == "--image-size 16 is too small for squeezenet1_0 (at least 21)"
    assert not out.exists() or not any(out.iterdir())
