"""Label files and multi-label data at their edges: what people's spreadsheets and hub datasets really hold (class
names with spaces, blank split cells, the same image under two spellings, 1.0/0.0 columns, no header) and the options
that mean nothing for the task at hand. Each case here was once a silent wrong result or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY, cli, write_image
from tl.data.label_file import read_label_file
from tl.errors import TLError


def _images(root: Path, count: int = 6) -> list[str]:
    names = [f"im{i:02d}.png" for i in range(count)]
    for i, name in enumerate(names):
        write_image(root / name, (200, 30 * i, 40), size=16, seed=i)
    return names


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_class_name_with_a_space_stays_one_class_under_a_label_header(tmp_path):
    names = _images(tmp_path)
    rows = "".join(f"{n},{c}\n" for n, c in zip(names, ["golden retriever", "pug", "sea lion"] * 2))
    table = read_label_file(_write(tmp_path / "l.csv", "path,label\n" + rows))
    assert not table.multilabel and table.classes == ["golden retriever", "pug", "sea lion"]
    tags = read_label_file(_write(tmp_path / "t.csv", "path,tags\n" + rows))  # Kaggle's space-separated tags
    assert tags.multilabel and "retriever" in tags.classes


def test_blank_split_cells_duplicates_under_another_spelling_and_onehot_floats(tmp_path):
    names = _images(tmp_path)
    blank = read_label_file(_write(tmp_path / "b.csv", "path,label,split\n" + "".join(
        f"{n},{'a' if i % 2 else 'b'},{'' if i == 3 else 'train' if i < 4 else 'val'}\n" for i, n in enumerate(names))))
    assert any("line 5: no split value" in p for p in blank.problems.get("split", [])), blank.problems
    spelled = read_label_file(_write(tmp_path / "d.csv", f"path,label\n{names[0]},a\n./{names[0]},a\n{tmp_path / names[0]},a\n"
                                     + "".join(f"{n},b\n" for n in names[1:])))
    assert len(spelled.problems.get("duplicate", [])) == 2 and len(spelled.rows) == len(names)
    onehot = read_label_file(_write(tmp_path / "o.csv", "path,x,y\n" + "".join(
        f"{n},{'1.0' if i % 2 else '0.0'},{'True' if i % 3 else 'False'}\n" for i, n in enumerate(names))))
    assert onehot.classes == ["x", "y"] and onehot.rows[1].labels == ("x", "y") and onehot.rows[0].labels == ()


def test_a_file_without_a_header_and_an_empty_separator_are_one_line_errors(tmp_path):
    names = _images(tmp_path)
    with pytest.raises(TLError, match="has no header"):
        read_label_file(_write(tmp_path / "h.csv", "".join(f"{n},a\n" for n in names)))
    with pytest.raises(TLError, match="--label-sep"):
        read_label_file(_write(tmp_path / "s.csv", "path,label\n" + "".join(f"{n},a\n" for n in names)), sep="")


def _hf_multilabel(root: Path, feature: str) -> Path:
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(12)]
    labels = [[i % 3] + ([(i + 1) % 3] if i % 2 else []) for i in range(12)]
    inner = ClassLabel(names=["a", "b", "c"]) if feature == "classlabel" else Value("int64")
    data = Dataset.from_dict({"image": images, "label": labels}, features=Features({"image": Image(), "label": Sequence(inner)}))
    splits = data.train_test_split(test_size=0.5, seed=0)
    from datasets import DatasetDict

    DatasetDict({"train": splits["train"], "validation": splits["test"]}).save_to_disk(str(root))
    return root


@pytest.mark.parametrize("feature", ["classlabel", "int"])
def test_check_data_reads_a_multilabel_hub_dataset(tmp_path, feature):
    data = _hf_multilabel(tmp_path / "hf", feature)
    result = cli("check-data", "--dataset", f"hf:{data}")
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_options_that_mean_nothing_for_the_task_are_refused_before_training(tmp_path):
    names = _images(tmp_path, 12)
    multi = _write(tmp_path / "m.csv", "path,labels\n" + "".join(f"{n},{'a;b' if i % 3 == 0 else 'a' if i % 2 else 'b'}\n"
                                                                 for i, n in enumerate(names)))
    sampler = cli("train", *TINY, "--labels", multi, "--epochs", "1", "--balance", "sampler", "--out", tmp_path / "r1")
    assert isinstance(sampler.exception, TLError) and "--balance sampler" in sampler.exception.message
    single = _write(tmp_path / "s.csv", "path,label\n" + "".join(f"{n},{'a' if i % 2 else 'b'}\n" for i, n in enumerate(names)))
    mapped = cli("train", *TINY, "--labels", single, "--epochs", "1", "--select-by", "val_map", "--out", tmp_path / "r2")
    assert isinstance(mapped.exception, TLError) and "val_map" in mapped.exception.message
    assert not (tmp_path / "r1" / "metrics.jsonl").exists() and not (tmp_path / "r2" / "metrics.jsonl").exists()
