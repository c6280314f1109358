"""Every --dataset, built from tiny files in the real on-disk formats (no mocked loaders)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from tests.conftest import TINY, cli, make_image_folder, read_metrics, write_image
from tl.config import DataConfig
from tl.data.datasets import build_datasets
from tl.data.transforms import eval_transform, train_transform
from tl.errors import TLError

TF = dict(size=16, resize=18, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _build(manifest=None, **kwargs):
    return build_datasets(DataConfig(**kwargs), seed=0, train_tf=train_transform(**TF), eval_tf=eval_transform(**TF),
                          manifest=manifest)


def make_cifar(root, per_batch=20):
    """cifar-10-batches-py/ as the official release lays it out: pickled dicts of uint8 rows + batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = [i % 10 for i in range(per_batch)]
        data = rng.integers(0, 255, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            # protocol 2 and str keys: what the release's Python 2 pickles read back as under encoding="latin1"
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, handle, protocol=2)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]},
                    handle, protocol=2)
    return root


@pytest.fixture
def no_md5(monkeypatch):
    """Our fake batches cannot match the release's md5 sums; torchvision's own tests patch the same check."""
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)


def test_cifar10_python_batches(tmp_path, no_md5):
    make_cifar(tmp_path)
    data = _build(dataset="cifar10", data_dir=str(tmp_path), val_fraction=0.2)
    assert data.class_names[:3] == ["airplane", "automobile", "bird"]
    assert len(data.train) + len(data.val) == 100 and len(data.test) == 20
    assert len(data.val) == 20  # 2 of each class's 10
    image, label, readable = data.train[0]
    assert image.shape == (3, 16, 16) and readable and 0 <= label < 10


def test_cifar10_missing_is_one_clear_line(tmp_path):
    with pytest.raises(TLError, match="cifar-10-batches-py") as excinfo:
        _build(dataset="cifar10", data_dir=str(tmp_path))
    assert "--download" in excinfo.value.hint


def make_caltech(root, classes=("accordion", "airplanes", "anchor"), per_class=8):
    folder = root / "caltech101" / "101_ObjectCategories"
    for c, name in enumerate((*classes, "BACKGROUND_Google")):
        for i in range(per_class):
            mode = "L" if i % 2 else "RGB"  # many Caltech images are greyscale
            write_image(folder / name / f"image_{i + 1:04d}.jpg", (40 * c, 200 - 40 * c, 90), 20, mode, seed=c * 100 + i)
    (folder / "tmp").write_text("stray file in the real archive")
    return root


def test_caltech101_split_manifest_and_background(tmp_path):
    make_caltech(tmp_path)
    manifest = tmp_path / "run" / "split.json"
    data = _build(dataset="caltech101", data_dir=str(tmp_path), manifest=manifest)
    assert data.class_names == ["accordion", "airplanes", "anchor"]  # no BACKGROUND_Google, no tmp
    assert (len(data.train), len(data.val), len(data.test)) == (12, 6, 6)  # 50/25/25 of 24
    recorded = json.loads(manifest.read_text())
    assert set(recorded["splits"]) == {"train", "val", "test"}
    again = _build(dataset="caltech101", data_dir=str(tmp_path), manifest=manifest, val_fraction=0.5, test_fraction=0.1)
    assert [p for p, _ in again.test.samples] == [p for p, _ in data.test.samples]  # the manifest wins
    assert all(data.train[i][0].shape == (3, 16, 16) for i in range(len(data.train)))  # greyscale became RGB
    with_background = _build(dataset="caltech101", data_dir=str(tmp_path), caltech_background=True)
    assert "BACKGROUND_Google" in with_background.class_names


def test_flat_imagefolder_split_is_stratified_and_deterministic(tmp_path):
    root = make_image_folder(tmp_path / "flat", {"a": (200, 0, 0), "b": (0, 200, 0)}, 10, splits=("",))
    one = _build(dataset="imagefolder", data_dir=str(root), val_fraction=0.3, test_fraction=0.2)
    two = _build(dataset="imagefolder", data_dir=str(root), val_fraction=0.3, test_fraction=0.2)
    assert [s for s in one.val.samples] == [s for s in two.val.samples]
    assert sorted(one.val.targets) == [0, 0, 0, 1, 1, 1] and sorted(one.test.targets) == [0, 0, 1, 1]
    everything = {p for d in (one.train, one.val, one.test) for p, _ in d.samples}
    assert len(everything) == 20


def test_hf_arrow_dataset_from_disk(tmp_path):
    import datasets
    from PIL import Image

    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["cat", "dog"])})
    images = [Image.fromarray(np.full((12, 12, 3), 60 * (i % 2) + 50, dtype=np.uint8)) for i in range(10)]
    train = datasets.Dataset.from_dict({"img": images, "fine_label": [i % 2 for i in range(10)]}, features=features)
    datasets.DatasetDict({"train": train, "test": train.select(range(4))}).save_to_disk(str(tmp_path / "arrow"))
    data = _build(dataset=f"hf:{tmp_path / 'arrow'}")
    assert data.class_names == ["cat", "dog"] and len(data.test) == 4
    assert len(data.train) + len(data.val) == 10  # no validation split: part of train held out
    image, label, readable = data.val[0]
    assert image.shape == (3, 16, 16) and readable
    with pytest.raises(TLError, match="--image-column"):
        _build(dataset=f"hf:{tmp_path / 'arrow'}", image_column="pixels")


def test_hf_train_run_end_to_end(tmp_path):
    import datasets
    from PIL import Image

    colours = [(220, 30, 30), (30, 30, 220)]
    rows = [Image.fromarray(np.clip(np.array(colours[i % 2]) + np.random.default_rng(i).normal(0, 20, (16, 16, 3)), 0, 255)
                            .astype(np.uint8)) for i in range(24)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "blue"])})
    datasets.Dataset.from_dict({"image": rows, "label": [i % 2 for i in range(24)]}, features=features).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "run"
    result = cli("train", *TINY, "--dataset", f"hf:{tmp_path / 'ds'}", "--epochs", "2", "--batch-size", "8",
                 "--augment", "strong", "--mixup", "0.2", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert read_metrics(out)[-1]["val_count"] == 4  # round(12 x 0.2) = 2 per class


@pytest.mark.parametrize("augment", ["basic", "strong", "trivial", "none"])
def test_augment_presets_give_model_ready_tensors(augment):
    from PIL import Image

    tf = train_transform(**TF, augment=augment)
    out = tf(Image.new("RGB", (40, 30), (120, 60, 30)))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32


def test_a_class_without_images_is_a_clear_error(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": (200, 0, 0), "b": (0, 200, 0)}, 3)
    (root / "train" / "c").mkdir()  # an empty class folder
    (root / "val" / "c").mkdir()
    with pytest.raises(TLError, match="class\\(es\\) c"):
        _build(dataset="imagefolder", data_dir=str(root))
    write_image(root / "train" / "c" / "x.png", (0, 0, 200))
    with pytest.raises(TLError, match="val has no image"):
        _build(dataset="imagefolder", data_dir=str(root))


def test_hf_labels_that_are_not_class_indices_are_refused(tmp_path):
    import datasets
    from PIL import Image

    images = [Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)) for _ in range(4)]
    datasets.Dataset.from_dict({"image": images, "label": ["cat", "dog", "cat", "dog"]}).save_to_disk(str(tmp_path / "s"))
    with pytest.raises(TLError, match="not class indices") as excinfo:
        _build(dataset=f"hf:{tmp_path / 's'}")
    assert "class_encode_column" in excinfo.value.hint


def test_file_list_is_cached_in_the_manifest(tmp_path):
    """The run's manifest keeps the folder's file list: a second build reads it instead of walking the folder,
    so an image added later is not picked up, and an image that is gone is one clear error."""
    root = make_image_folder(tmp_path / "data", {"cat": (200, 40, 40), "dog": (40, 40, 200)}, 3)
    manifest = tmp_path / "run" / "split.json"
    first = _build(dataset="imagefolder", data_dir=str(root), manifest=manifest)
    record = json.loads(manifest.read_text())
    assert record["files"]["classes"] == ["cat", "dog"]
    assert sorted(record["splits"]) == ["train", "val"] and len(record["splits"]["train"]) == len(first.train)
    write_image(root / "train" / "cat" / "late.png", (1, 2, 3))
    again = _build(dataset="imagefolder", data_dir=str(root), manifest=manifest)
    assert again.train.samples == first.train.samples and again.fingerprint == first.fingerprint
    fresh = _build(dataset="imagefolder", data_dir=str(root))  # no manifest: the folder is walked
    assert len(fresh.train) == len(first.train) + 1 and fresh.fingerprint != first.fingerprint
    assert first.test is None
    for name in ("cat", "dog"):  # a test set added after training is found by `tl eval --split test`
        write_image(root / "test" / name / "t.png", (9, 9, 9))
    assert len(_build(dataset="imagefolder", data_dir=str(root), manifest=manifest).test) == 2
    with pytest.raises(TLError, match="--cache-images"):
        DataConfig(cache_images="inf")
    first.val.samples[0][0].unlink()
    with pytest.raises(TLError, match="gone"):
        _build(dataset="imagefolder", data_dir=str(root), manifest=manifest)


def test_scan_order_skips_hidden_and_does_not_follow_folder_links(tmp_path):
    from tl.data.datasets import scan_images

    root = tmp_path / "imgs"
    for rel in ("b/2.jpg", "a/x/1.PNG", "a-b/0.jpg", "a/0.jpg", ".hidden/1.jpg", "a/.h.jpg", "a/notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"12345")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    found = scan_images(root)
    assert [p.relative_to(root).as_posix() for p in found] == ["a/0.jpg", "a/x/1.PNG", "a-b/0.jpg", "b/2.jpg"]
    assert list(found) == sorted(found) and set(found.values()) == {5}


def test_decoded_cache_gives_the_same_samples_and_respects_its_budget(tmp_path):
    """Preloaded images go through the same transforms with the same seeds: identical tensors; a set over
    the budget is streamed; a bad file stays a masked, reported sample."""
    from tl.data.datasets import EpochSeeded
    from tl.data.image_cache import decoded_size, parse_budget, preload

    root = make_image_folder(tmp_path / "data", {"cat": (200, 40, 40), "dog": (40, 40, 200)}, 3, size=20)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    streamed, cached = _build(dataset="imagefolder", data_dir=str(root)), _build(dataset="imagefolder", data_dir=str(root))
    paths = [p for p, _ in cached.train.samples + cached.val.samples]
    assert preload([cached.train, cached.val], budget=10) == 0 and cached.train.decoded is None  # too big for 10 bytes
    held = preload([cached.train, cached.val], budget=parse_budget("64"))
    assert held == decoded_size(paths, 1 << 30) > 0 and len(cached.train.decoded) == len(cached.train)
    for index in range(len(streamed.train)):
        a, b = EpochSeeded(streamed.train, 5)[index], EpochSeeded(cached.train, 5)[index]
        assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    broken = [i for i, (p, _) in enumerate(cached.train.samples) if p.name == "broken.jpg"][0]
    assert cached.train.decoded[broken] is None and cached.train[broken][2] is False
    assert parse_budget("off") == 0 and parse_budget("auto") > 0


@pytest.mark.parametrize("augment", ["basic", "strong", "trivial"])
def test_uint8_pixels_normalised_on_the_device_equal_the_float_preset(augment):
    """tl train's workers send train_pixels (uint8) and DeviceNormalize finishes the batch: the same tensors
    as the float preset, seed for seed."""
    from PIL import Image

    from tl.data.transforms import DeviceNormalize, train_pixels

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, size=(30, 40, 3), dtype=np.uint8))
    torch.manual_seed(3)
    reference = train_transform(**TF, augment=augment)(image)
    torch.manual_seed(3)
    pixels = train_pixels(size=TF["size"], augment=augment)(image)
    assert pixels.dtype == torch.uint8
    finished = DeviceNormalize(TF["mean"], TF["std"], channels_last=True)(pixels[None], 0)[0]
    assert torch.allclose(finished, reference, atol=1e-5)


def test_cache_images_flag_is_checked():
    with pytest.raises(TLError, match="--cache-images"):
        DataConfig(cache_images="lots")
    assert DataConfig(cache_images="512").cache_images == "512"


def test_a_moved_folder_keeps_the_run_s_file_list_and_added_images_are_counted(tmp_path, caplog):
    """The file list in a manifest is relative to the folder: the same folder moved elsewhere (`tl eval --data-dir
    NEW`) keeps the run's exact split, and images added to its folders since are left out with one warning."""
    import logging
    import shutil

    first_root = make_image_folder(tmp_path / "one", {"cat": (200, 40, 40), "dog": (40, 40, 200)}, 3)
    manifest = tmp_path / "run" / "split.json"
    first = _build(dataset="imagefolder", data_dir=str(first_root), manifest=manifest)
    other = tmp_path / "two"
    shutil.copytree(first_root, other)
    write_image(other / "train" / "cat" / "late.png", (1, 2, 3))
    with caplog.at_level(logging.WARNING, logger="tl"):
        again = _build(dataset="imagefolder", data_dir=str(other), manifest=manifest)
    relative = lambda data, root: [(path.relative_to(root), label) for path, label in data.samples]
    assert relative(again.train, other) == relative(first.train, first_root)
    assert relative(again.val, other) == relative(first.val, first_root)
    assert "1 image(s) added" in caplog.text and "late.png" in caplog.text
