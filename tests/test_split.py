"""`tl split` when things go wrong: a split that fails writes nothing, an --out that cannot be a folder is one line,
and --overwrite removes only what tl split made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cli, write_image
from tl.errors import TLError


def _flat(root: Path, per_class: dict[str, int]) -> Path:
    for c, (name, count) in enumerate(per_class.items()):
        for i in range(count):
            write_image(root / name / f"{i}.png", (60 * c, 100, 200 - 60 * c), size=8, seed=c * 100 + i)
    return root


def _files(root: Path) -> dict[str, bytes | str]:
    """Everything under ``root``: a file's bytes, a link's target."""
    return {p.relative_to(root).as_posix(): (str(p.readlink()) if p.is_symlink() else p.read_bytes() if p.is_file() else "/")
            for p in sorted(root.rglob("*"))}


def test_a_split_that_fails_writes_nothing_and_says_which_flag_fixes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _flat(tmp_path / "photos", {"a": 6, "b": 6, "one": 2})  # 2 images: one goes to test, none is left for val
    for out in (tmp_path / "new" / "split", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        result = cli("split", "photos", "--out", out)
        assert isinstance(result.exception, TLError), result.output
        assert result.exception.message == "photos: val has no image of class(es) one", result.exception.message
        assert "--fractions" in result.exception.hint and "--data-dir" not in str(result.exception)
    assert not (tmp_path / "new").exists() and not list((tmp_path / "empty").iterdir())  # nothing left behind
    again = cli("split", "photos", "--out", tmp_path / "empty", "--fractions", "0.8,0.2")  # the retry needs no --overwrite
    assert again.exit_code == 0, again.output + repr(again.exception)
    assert json.loads((tmp_path / "empty" / "split.json").read_text())["pinned_by"] == "tl split"


def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path):
    source = _flat(tmp_path / "photos", {"a": 4, "b": 4})
    photo = source / "a" / "0.png"
    for out, message in [(photo, "is a file"), (photo / "x", f"cannot create it ({photo} is a file)")]:
        result = cli("split", source, "--out", out)
        assert isinstance(result.exception, TLError) and message in result.exception.message, result.exception
    if Path("/sys/kernel").is_dir():  # nothing can be created there, not even by root
        result = cli("split", source, "--out", "/sys/tl_split")
        assert isinstance(result.exception, TLError) and "cannot create it" in result.exception.message, result.exception


def test_overwrite_removes_only_what_tl_split_made(tmp_path):
    source = _flat(tmp_path / "photos", {"a": 4, "b": 4})
    args = ("split", source, "--fractions", "0.5,0.5", "--materialize")
    mine = tmp_path / "mine"  # a user's own train/ folder: no split.json, real files
    write_image(mine / "train" / "a" / "photo.png", (1, 2, 3))
    (mine / "train" / "a" / "notes.txt").write_text("keep me")
    before = _files(mine)
    for flags in ((), ("--overwrite",)):
        result = cli(*args, "--out", mine, *flags)
        assert isinstance(result.exception, TLError), result.output
        assert _files(mine) == before
    assert "was not written by tl split" in result.exception.message and "train/a/" in result.exception.message

    ours = tmp_path / "ours"
    assert cli(*args, "--out", ours).exit_code == 0
    assert cli(*args, "--out", ours, "--seed", "1", "--overwrite").exit_code == 0  # tl's own links: replaced
    listed = json.loads((ours / "split.json").read_text())["splits"]
    assert sorted(p.relative_to(ours).as_posix() for p in ours.rglob("*.png")) == sorted(
        f"{part}/{key}" for part, keys in listed.items() for key in keys)
    write_image(ours / "val" / "b" / "added.png", (4, 5, 6))  # a user's file among the links
    before = _files(ours)
    result = cli(*args, "--out", ours, "--overwrite")
    assert isinstance(result.exception, TLError) and "val/b/added.png" in result.exception.message
    assert _files(ours) == before
    assert cli("split", source, "--out", ours, "--overwrite").exit_code == 0  # no --materialize: the stale links go,
    assert sorted(_files(ours)) == ["split.json", "val", "val/b", "val/b/added.png"]  # the user's file stays


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/hostname"])
def test_overwrite_never_follows_a_listed_path_out_of_its_folder(tmp_path, bad):
    source = _flat(tmp_path / "photos", {"a": 4, "b": 4})
    out = tmp_path / "out"
    assert cli("split", source, "--out", out, "--materialize", "--fractions", "0.5,0.5").exit_code == 0
    (out / "outside.png").write_text("keep me")
    record = json.loads((out / "split.json").read_text())
    record["splits"]["train"].append(bad)
    (out / "split.json").write_text(json.dumps(record))
    assert cli("split", source, "--out", out, "--materialize", "--fractions", "0.5,0.5", "--overwrite").exit_code == 0
    assert (out / "outside.png").read_text() == "keep me"
