"""What ``Classifier.predict`` / ``predict_dir`` / ``show_predictions`` accept from Python, on a tiny real run:
in-memory images (PIL upright by EXIF, numpy, tensors, 16-bit, float) give the file's answer, anything else is
one TLError naming the input; options are checked as the command line checks them; long lists stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tl
from tests.conftest import make_image_folder

CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def clf(tmp_path_factory) -> tl.Classifier:
    root = tmp_path_factory.mktemp("inputs")
    data = make_image_folder(root / "data", CLASSES, 3)
    run = tl.train(dataset="imagefolder", data_dir=data, out=root / "run", progress=False, arch="resnet18", weights="none",
                   image_size=32, num_workers=0, batch_size=6, epochs=1, log_every=1000)
    return tl.load(run.checkpoint)


def pattern(height: int = 30, width: int = 48) -> np.ndarray:
    """An RGB picture that looks different turned: colour ramps along each axis, a bright block in one corner."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x / width, 255 * y / height, np.full_like(x, 60.0)], axis=-1)
    pixels[: height // 3, : width // 4] = 250
    return pixels.astype(np.uint8)


def close(a: tl.Prediction, b: tl.Prediction, tol: float = 1e-4) -> bool:
    return a.error is None and b.error is None and all(abs(a.probs[k] - b.probs[k]) <= tol for k in a.probs)


def test_batch_size_is_checked(clf, tmp_path):
    file = tmp_path / "a.png"
    Image.fromarray(pattern()).save(file)
    for bad in (-1, 0.5, True, "8"):
        with pytest.raises(tl.TLError, match="--batch-size: must be at least 1"):
            clf.predict([file, file], batch_size=bad)
    assert close(clf.predict(file, batch_size=1), clf.predict(file))


def test_predict_dir_checks_its_options_as_the_command_does(clf, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(pattern()).save(folder / "a.png")
    out = tmp_path / "preds.csv"
    for options, message in (({"top_k": -1}, "--top-k: must be >= 0"), ({"batch_size": -1}, "--batch-size: must be at least 1"),
                             ({"precision": "float32"}, "--precision: 'float32' is not one of auto, fp32, bf16, fp16"),
                             ({"overwrite": "no"}, "--overwrite: expected True or False"),
                             ({"top_k": 2.0}, "--top-k: expected an int"), ({"num_workers": -2}, "--num-workers")):
        with pytest.raises(tl.TLError, match=message):
            clf.predict_dir(folder, out, progress=False, **options)
        assert not out.exists()  # refused before a byte is written
    with pytest.raises(tl.TLError, match="unknown option 'tpo_k'") as error:
        clf.predict_dir(folder, out, progress=False, tpo_k=3)
    assert "did you mean top_k?" in error.value.hint and "min_confidence" in error.value.hint
    summary = clf.predict_dir(folder, out, progress=False, top_k=2, precision="fp32", batch_size=1)
    header, row = out.read_text().splitlines()
    assert summary.predicted == 1 and header.count(",") == row.count(",") == 7  # path,label,confidence,2x(label,prob),error


def test_pil_images_are_turned_upright_as_files_are(clf, tmp_path):
    upright = pattern()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees anticlockwise: a viewer turns it clockwise
    sideways = tmp_path / "sideways.png"
    Image.fromarray(np.rot90(upright)).save(sideways, exif=exif.tobytes())
    from_file, from_pil = clf.predict(sideways), clf.predict(Image.open(sideways))
    assert close(from_file, clf.predict(Image.fromarray(upright)))
    assert not close(from_file, clf.predict(Image.fromarray(np.rot90(upright))))  # the test can see a turn
    assert close(from_pil, from_file)


def test_in_memory_images_of_every_kind_give_the_files_answer(clf, tmp_path):
    rgb = pattern()
    file = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(file)
    reference = clf.predict(file)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    for item in (rgb, np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), tensor, tensor.float() / 255,
                 rgb.astype(np.float64) / 255, np.asarray(Image.open(file))):
        assert close(clf.predict(item), reference), type(item)
    assert close(clf.predict(rgb[::-1]), clf.predict(rgb[::-1].copy()))  # negative strides, read-only memory: fine
    grey = (rgb.mean(axis=2)).astype(np.uint8)
    grey_file = tmp_path / "grey.png"
    Image.fromarray(grey).save(grey_file)
    sixteen = grey.astype(np.uint16) * 257  # 16 bits whose top byte is the 8-bit picture
    sixteen_file = tmp_path / "grey16.png"
    Image.fromarray(sixteen).save(sixteen_file)
    grey_answer = clf.predict(grey_file)
    assert close(clf.predict(sixteen_file), grey_answer)  # tl's file decoding: 16 bits scaled to 8
    for item in (Image.open(sixteen_file), sixteen, torch.from_numpy(sixteen.astype(np.int32)).to(torch.uint16), grey,
                 torch.from_numpy(grey)[None], Image.fromarray(grey.astype(np.float32) / 255)):
        assert close(clf.predict(item), grey_answer), getattr(item, "mode", type(item))
    assert [p.source for p in clf.predict([Image.open(file), tensor, rgb])] == [
        "<Image 48x30 RGB>", "<Tensor 3x30x48 uint8>", "<ndarray 30x48x3 uint8>"]


def test_iterables_stream_and_wrong_inputs_raise(clf, tmp_path):
    for i in range(3):
        Image.fromarray(pattern(20 + i)).save(tmp_path / f"{i}.png")
    files = sorted(tmp_path.glob("*.png"))
    listed = clf.predict(files)
    assert [p.source for p in clf.predict(p for p in files)] == [str(f) for f in files]
    assert len(clf.predict(tmp_path.glob("*.png"))) == 3 and clf.predict([]) == []
    for item, message in ((3, "inputs\\[1\\]: cannot predict a int"), (np.zeros((2, 3, 8, 8), np.uint8), "got shape 2x3x8x8"),
                          (np.zeros((8, 8), np.int64), "int64 is not an image type"),
                          (Image.fromarray(np.full((8, 8), 200.0, np.float32)), "mode F must hold values in 0..1, got 200..200"),
                          (torch.full((3, 8, 8), float("nan")), "float tensor must hold values in 0..1"),
                          (b"\x89PNG", "cannot predict a bytes")):
        with pytest.raises(tl.TLError, match=message) as error:
            clf.predict([files[0], item])
        assert error.value.hint
    with pytest.raises(tl.TLError, match="^cannot predict a float"):
        clf.predict(1.5)
    assert close(listed[0], clf.predict(files[0]))


def test_a_long_list_is_decoded_a_batch_at_a_time(clf, tmp_path, monkeypatch):
    """Decoding all before the first forward pass held every image at once (0.37 MiB each at 224 px)."""
    files = []
    for i in range(10):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.roll(pattern(), 5 * i, axis=1)).save(files[-1])
    files.insert(4, tmp_path / "missing.png")
    alone = [clf.predict(file) for file in files]
    transform, decoded, at_forward = clf._predictor.pixels(), [], []
    monkeypatch.setattr(clf._predictor, "pixels", lambda: lambda image: decoded.append(1) or transform(image))
    forward = clf._probabilities
    monkeypatch.setattr(clf, "_probabilities", lambda images, tta: at_forward.append((len(decoded), len(images))) or forward(images, tta))
    together = clf.predict(files, batch_size=3)
    assert at_forward == [(3, 3), (8, 3), (10, 3), (10, 1)]  # at most a batch decoded ahead; batches stay full
    assert [p.source for p in together] == [str(f) for f in files] and together[4].error and "missing.png" in together[4].error
    assert all(close(a, b) for a, b in zip(alone, together) if a.error is None)


def test_show_predictions_takes_what_predict_takes(clf, tmp_path):
    pytest.importorskip("matplotlib")
    file = tmp_path / "a.png"
    Image.fromarray(pattern()).save(file)
    one = clf.show_predictions(file)
    assert [ax.get_title().split("\n")[0] for ax in one.axes if ax.images] == ["a.png"]
    titled = clf.show_predictions((image for image in [pattern(), file]), titles=["first", "second"])
    assert [ax.get_title().split("\n")[0] for ax in titled.axes if ax.images] == ["first", "second"]
    with pytest.raises(tl.TLError, match="1 titles for 2 inputs"):
        clf.show_predictions([file, file], titles=["only one"])
    with pytest.raises(tl.TLError, match="no inputs"):
        clf.show_predictions([])


def test_load_with_arch_refuses_random_weights_in_words_that_agree():
    with pytest.raises(tl.TLError) as error:
        tl.load(arch="resnet18", weights="none")
    assert "random weights" in error.value.message and "none" not in error.value.hint
    with pytest.raises(tl.TLError, match="--weights: expected"):
        tl.load(arch="resnet18", weights=None)
