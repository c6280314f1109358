"""Pictures (``tl[viz]``): every command writes a PNG of the expected size that is not blank, for a tiny real run;
Grad-CAM's map peaks on the patch that defines a class; without matplotlib each command says what to install."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.conftest import ROOT, cli, make_image_folder
from tl.errors import TLError

pytest.importorskip("matplotlib")

SIZE = 64
PATCH = (6, 38, 16)  # top, left, side of the red square that makes an image class "patch" (off-centre, not square-symmetric)
ARCH = "tests.test_viz:tiny_cnn"


def tiny_cnn(num_classes: int) -> nn.Module:
    """A real three-stage CNN (16x16 map at 64 px) small enough to learn the patch in seconds; built by tl's
    ``--arch module:callable`` path, so its Grad-CAM layer is found by the rule for models outside the table."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    features = nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 32))
    return nn.Sequential(OrderedDict(features=features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                     fc=nn.Linear(32, num_classes)))


def make_patch_folder(root: Path, *, swapped: bool = False, per_class: int = 8) -> Path:
    """root/{train,val}/{patch,plain}/N.png: noise, plus a red square at PATCH for class "patch" (``swapped``: the
    folders hold each other's images, so a model that learnt the patch is wrong on every one)."""
    top, left, side = PATCH
    for s, split in enumerate(("train", "val")):
        for c, name in enumerate(("patch", "plain")):
            for i in range(per_class if split == "train" else per_class // 2):
                rng = np.random.default_rng([s, c, i])
                pixels = np.clip(rng.uniform(40, 120, 3) + rng.normal(0, 25, (SIZE, SIZE, 3)), 0, 255)
                if (name == "patch") != swapped:
                    pixels[top:top + side, left:left + side] = (230, 40, 40)
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def assert_png(path: Path, size: tuple[int, int], min_std: float = 10.0) -> None:
    """A PNG of ``size`` pixels (+-1 for float inches) whose grey levels vary: a blank canvas has std 0."""
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert abs(image.size[0] - size[0]) <= 1 and abs(image.size[1] - size[1]) <= 1, (image.size, size)
        grey = np.asarray(image.convert("L"), dtype=np.float32)
    assert grey.std() > min_std, f"{path} looks blank (std {grey.std():.1f})"


def ok(result) -> None:
    assert result.exit_code == 0, result.output + repr(result.exception)


def tl_error(result, *fragments: str) -> TLError:
    assert isinstance(result.exception, TLError), result.output + repr(result.exception)
    text = result.exception.message + " " + result.exception.hint
    assert all(f in text for f in fragments), text
    return result.exception


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz")
    data = make_patch_folder(root / "data")
    out = root / "run"
    ok(cli("train", "--arch", ARCH, "--dataset", "imagefolder", "--data-dir", data, "--image-size", SIZE, "--augment", "none",
           "--lr", "0.02", "--epochs", "3", "--batch-size", "8", "--num-workers", "0", "--log-every", "1000", "--out", out))
    return out, data


# ------------------------------------------------------------------------------------------------------
# tl plot
# ------------------------------------------------------------------------------------------------------


def test_plot_writes_curves(run, tmp_path):
    from tl.viz.curves import write_curves_if_available

    out, _ = run
    assert_png(out / "curves.png", (900, 900))  # training wrote it at the end (the extra is installed for the tests)
    (out / "curves.png").unlink()
    ok(cli("plot", out))
    assert_png(out / "curves.png", (900, 900))
    ok(cli("plot", out / "best", "--out", tmp_path / "c.png"))  # a checkpoint inside the run stands for the run
    assert_png(tmp_path / "c.png", (900, 900))
    assert write_curves_if_available(out) == out / "curves.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    assert write_curves_if_available(empty) is None and not (empty / "curves.png").exists()  # never fails a run
    tl_error(cli("plot", empty), "no finished epoch")
    tl_error(cli("plot", tmp_path / "nowhere"), "does not exist", "--out folder")


def test_curve_marks_best_epoch_and_reductions(tmp_path):
    from tl.viz.curves import marks, read_epochs

    lines = [dict(epoch=epoch, val_top1=top1, val_loss=loss, lr_reductions=reductions)
             for epoch, top1, loss, reductions in ((1, 0.5, 1.0, 0), (2, 0.7, 0.9, 0), (3, 0.7, 0.8, 1), (4, 0.6, 0.7, 1), (5, 0.6, 0.7, 2))]
    text = "".join(json.dumps(m) + "\n" for m in lines)
    (tmp_path / "metrics.jsonl").write_text(text + json.dumps(dict(lines[0], val_top1=0.1)) + "\n" + '{"epoch": 6, "val')
    epochs = read_epochs(tmp_path / "metrics.jsonl")
    assert [m["epoch"] for m in epochs] == [1, 2, 3, 4, 5] and epochs[0]["val_top1"] == 0.1  # last line of an epoch wins
    assert marks(epochs) == (3, [3, 5])  # tl train's rule: top-1, then the lower loss


# ------------------------------------------------------------------------------------------------------
# tl show-batch, tl show-predictions
# ------------------------------------------------------------------------------------------------------


def test_to_image_undoes_the_normalisation():
    from torchvision.transforms import v2

    from tl.viz import to_image

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = torch.rand(3, 5, 7)
    image = to_image(v2.Normalize(mean, std)(pixels), mean, std)
    assert image.shape == (5, 7, 3) and np.allclose(image, pixels.permute(1, 2, 0).numpy(), atol=1e-6)


def test_show_batch(image_folder, tmp_path):
    from tl.viz.grids import grid_shape

    assert [grid_shape(n) for n in (1, 5, 16, 17)] == [(1, 1), (3, 2), (4, 4), (5, 4)]
    png = tmp_path / "batch.png"
    folder = ("--dataset", "imagefolder", "--data-dir", image_folder)
    result = cli("show-batch", *folder, "--image-size", "32", "--n", "5", "--out", png)
    ok(result)
    assert "5 train images" in result.output
    assert_png(png, (600, 500), min_std=30)  # 3 x 2 cells of 2 x 2.3 inches + 0.4 inch heading, at 100 dpi
    ok(cli("show-batch", "--dataset", "synthetic", "--split", "val", "--augment", "strong", "--n", "2", "--out", png))
    assert_png(png, (400, 270), min_std=20)
    tl_error(cli("show-batch", *folder, "--split", "test", "--out", png), "no test split")
    tl_error(cli("show-batch", "--arch", "resnet1", "--out", png), "unknown architecture", "resnet18")


def test_show_predictions(run, tmp_path):
    from tl.viz.grids import prediction_title

    assert prediction_title("bees", 0.934, "ants") == "pred: bees (p=0.93) | true: ants"
    out, _ = run
    result = cli("show-predictions", "--checkpoint", out / "best", "--n", "4", "--num-workers", "0")
    ok(result)
    assert "4 images" in result.output
    assert_png(out / "predictions.png", (400, 500), min_std=20)

    # The same images under each other's names: a model that learnt the patch is wrong on all of them.
    swapped = make_patch_folder(tmp_path / "swapped", swapped=True)
    common = ("--checkpoint", out / "best", "--dataset", "imagefolder", "--data-dir", swapped, "--num-workers", "0")
    result = cli("show-predictions", *common, "--n", "3", "--errors-only", "--out", tmp_path / "errors.png")
    ok(result)
    assert "3 images, 3 wrong" in result.output
    assert_png(tmp_path / "errors.png", (400, 500), min_std=20)
    result = cli("show-predictions", "--checkpoint", out / "best", "--errors-only", "--dataset", "imagefolder",
                 "--data-dir", run[1], "--num-workers", "0", "--out", tmp_path / "none.png")
    ok(result)  # a perfect model has no error to draw: said, not failed
    assert ("nothing to draw" in result.output) != (tmp_path / "none.png").is_file()
    other = make_image_folder(tmp_path / "other", {"a": (200, 0, 0), "b": (0, 0, 200)}, 2, size=16)
    tl_error(cli("show-predictions", "--checkpoint", out / "best", "--dataset", "imagefolder", "--data-dir", other), "differ")
    tl_error(cli("show-predictions", "--checkpoint", tmp_path / "nowhere"), "does not exist")


# ------------------------------------------------------------------------------------------------------
# tl gradcam
# ------------------------------------------------------------------------------------------------------


def test_gradcam_peaks_on_the_patch(run):
    from tl.data.decode import read_image
    from tl.inference.predictor import load_predictor
    from tl.viz.gradcam import gradcam, target_layer

    out, data = run
    predictor = load_predictor(out / "best")
    files = sorted((data / "val" / "patch").glob("*.png"))
    images = torch.stack([predictor.transform()(read_image(f)) for f in files])
    layer = target_layer(predictor.model, ARCH, SIZE)
    assert layer == "features"
    patch = torch.full((len(files),), predictor.class_names.index("patch"))
    maps, logits = gradcam(predictor.model, images, layer, patch)
    assert maps.shape == (len(files), SIZE, SIZE) and logits.shape == (len(files), 2)
    assert maps.min() >= 0 and maps.max() <= 1 and torch.allclose(maps.amax(dim=(1, 2)), torch.ones(len(files)))
    top, left, side = PATCH
    for one in maps:
        row, column = divmod(int(one.argmax()), SIZE)
        assert top <= row < top + side and left <= column < left + side, (row, column)
    assert all(p.grad is None for p in predictor.model.parameters())  # maps leave no gradients behind in the model


def test_gradcam_command(run, tmp_path):
    out, data = run
    first, second = sorted((data / "val" / "patch").glob("*.png"))[:2]
    twin = tmp_path / "elsewhere" / first.name
    twin.parent.mkdir()
    twin.write_bytes(second.read_bytes())
    result = cli("gradcam", first, twin, "--checkpoint", out / "best", "--out", tmp_path / "cams")
    ok(result)
    assert "patch" in result.output
    assert_png(tmp_path / "cams" / first.name, (800, 460), min_std=20)
    assert_png(tmp_path / "cams" / f"{first.stem}-2.png", (800, 460), min_std=20)  # same name, not overwritten
    common = (first, "--checkpoint", out / "best", "--out", tmp_path / "cams")
    ok(cli("gradcam", *common, "--class", "plain", "--layer", "features.4"))
    tl_error(cli("gradcam", *common, "--class", "patchh"), "no class 'patchh'", "did you mean patch")
    tl_error(cli("gradcam", *common, "--layer", "featurs"), "not a layer", "did you mean features")
    tl_error(cli("gradcam", *common, "--layer", "fc"), "not a (batch, channels, height, width) map")
    tl_error(cli("gradcam", tmp_path / "missing.jpg", "--checkpoint", out / "best", "--out", tmp_path), "no such file")


def test_target_layer_of_every_family():
    """Every torchvision classifier belongs to a family of the table or is refused. In one model per family the
    table's layer exists, runs once and gives a (batch, channels, height, width) map larger than 1x1 at 224 px."""
    from accelerate import init_empty_weights

    from tl.models.architectures import IMAGENET_CLASSES, available_archs, build_base
    from tl.models.heads import HeadSpec, find_original_head, replace_head
    from tl.viz.gradcam import NO_FEATURE_MAP, TARGET_LAYERS, check_layer, family, target_layer

    archs = available_archs()
    assert [a for a in archs if family(a) is None and not a.startswith(NO_FEATURE_MAP)] == []
    for name in TARGET_LAYERS:
        arch = next(a for a in archs if family(a) == name)
        with init_empty_weights(include_buffers=False):  # parameters on the meta device: no memory, no init time
            model = build_base(arch)
        replace_head(model, find_original_head(model, IMAGENET_CLASSES), 3, HeadSpec())
        model = model.to("meta").eval()
        layer = target_layer(model, arch, 224)
        seen = []
        check_layer(model, layer).register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
        model(torch.zeros(1, 3, 224, 224, device="meta"))
        assert len(seen) == 1 and len(seen[0]) == 4 and min(seen[0][2:]) >= 5 and seen[0][1] > 3, (arch, layer, seen)
    with pytest.raises(TLError, match="vision transformer"):
        target_layer(nn.Identity(), "vit_b_16", 224)


def test_gradcam_on_tl_models():
    """Real (randomly initialised) models with tl's heads: the table's layer for torchvision, the rule for a cut model."""
    from tl.models.architectures import build_model
    from tl.viz.gradcam import gradcam, target_layer

    torch.manual_seed(0)
    cases = (("resnet18", None, "layer4"), ("squeezenet1_1", None, "features"), ("resnet18", "layer2", "trunk.layer2.1.relu"))
    for arch, cut_at, layer in cases:
        model, _ = build_model(arch, 3, image_size=SIZE, cut_at=cut_at)
        assert target_layer(model, arch, SIZE) == layer
        maps, _ = gradcam(model, torch.randn(2, 3, SIZE, SIZE), layer)
        assert maps.shape == (2, SIZE, SIZE) and 0 <= maps.min() and maps.max() <= 1 and not maps.isnan().any()


# ------------------------------------------------------------------------------------------------------
# tl lr-find, tl eval's confusion matrix
# ------------------------------------------------------------------------------------------------------


def test_lr_suggestion_is_the_steepest_fall():
    from tl.viz.lrfind import suggest

    lrs = list(np.logspace(-6, 0, 61))
    # A sigmoid falling fastest at 1e-3, then a blow-up past 0.1.
    losses = [2.0 - 1.5 / (1 + np.exp(-3 * (np.log10(lr) + 3))) + (5.0 if lr > 0.1 else 0.0) for lr in lrs]
    assert 10**-3.3 < suggest(lrs, losses) < 10**-2.5


def test_lr_find(tmp_path):
    png = tmp_path / "lr.png"
    result = cli("lr-find", "--dataset", "synthetic", "--arch", "resnet18", "--steps", "12", "--batch-size", "8",
                 "--num-workers", "0", "--out", png)
    ok(result)
    suggested = float(result.output.split("suggested --lr ")[1].split()[0])
    assert 1e-7 <= suggested <= 10
    assert_png(png, (700, 450))
    tl_error(cli("lr-find", "--start-lr", "1", "--end-lr", "0.1"), "--start-lr")
    tl_error(cli("lr-find", "--steps", "3"), "--steps")


def test_eval_writes_the_confusion_png(run, tmp_path):
    from tl.viz.confusion import figure_inches, normalise_rows, plot_confusion

    out, _ = run
    ok(cli("eval", "--checkpoint", out / "best", "--num-workers", "0"))
    assert json.loads((out / "eval.json").read_text())["confusion_png"] == str(out / "eval_confusion.png")
    assert_png(out / "eval_confusion.png", (500, 500), min_std=10)
    assert normalise_rows([[3, 1], [0, 0]]) == [[0.75, 0.25], [0.0, 0.0]]
    rng = np.random.default_rng(0)
    confusion = (rng.integers(0, 3, (101, 101)) + np.eye(101, dtype=int) * 40).tolist()
    side = round(figure_inches(101) * 100)
    assert side / 101 >= 15  # at least 15 pixels a class: 101 names stay legible
    assert_png(plot_confusion(confusion, [f"class_{i:03d}" for i in range(101)], tmp_path / "c.png"), (side, side))


# ------------------------------------------------------------------------------------------------------
# Without the extra
# ------------------------------------------------------------------------------------------------------


def test_commands_name_the_extra_when_matplotlib_is_missing(run, tmp_path, monkeypatch):
    from tl.viz.curves import write_curves_if_available

    out, data = run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails as if it were not installed
    image = min((data / "val" / "patch").glob("*.png"))
    for args in (("plot", out), ("show-batch",), ("show-predictions", "--checkpoint", out / "best"),
                 ("gradcam", image, "--checkpoint", out / "best", "--out", tmp_path), ("lr-find",)):
        error = tl_error(cli(*args), "plotting needs matplotlib")
        assert error.hint == "pip install 'tl[viz]'"
    assert write_curves_if_available(out) is None
    ok(cli("eval", "--checkpoint", out / "best", "--num-workers", "0", "--out", tmp_path / "eval.json"))
    assert "confusion_png" not in json.loads((tmp_path / "eval.json").read_text())  # eval itself does not need the extra
    assert (tmp_path / "eval_confusion.csv").is_file() and not (tmp_path / "eval_confusion.png").exists()


def test_errors_print_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tl.cli", "plot", str(tmp_path / "nowhere")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'nowhere'} does not exist",
                                          "hint: pass the --out folder of a tl train run"]
