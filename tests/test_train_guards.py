"""tl train against what users do to it: wrong-typed options from Python or a recipe, a replacement run that fails,
data that cannot be read at all, a run started from a thread, Ctrl-C with loader workers, from Python and the shell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tl
from tests.conftest import RGB_CLASSES, ROOT, TINY, cli, make_image_folder
from tl.errors import TLError
from tl.training.options import resolve, to_config

KEYWORDS = dict(dataset="synthetic", arch="resnet18", weights="none", image_size=32, epochs=1, num_workers=0,
                synthetic_per_class=8, batch_size=8, progress=False)


@pytest.mark.parametrize("bad", [{"epochs": 1.5}, {"epochs": True}, {"lr": None}, {"seed": None}, {"weights": None},
                                 {"overwrite": "maybe"}, {"arch": ["resnet18"]}])
def test_wrong_keyword_values_are_refused_before_anything_is_written(tmp_path, bad):
    name = next(iter(bad))
    with pytest.raises(TLError, match=name):
        tl.train(**{**KEYWORDS, **bad}, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_keyword_strings_and_whole_numbers_take_their_option_s_type():
    cfg = to_config(resolve({**{k: v for k, v in KEYWORDS.items() if k != "progress"}, "epochs": "2", "lr": "1e-3",
                             "batch_size": 8.0, "overwrite": "no", "resume": True, "dropout": 0}))
    assert (cfg.run.epochs, cfg.optim.lr, cfg.data.batch_size) == (2, 0.001, 8)
    assert cfg.run.overwrite is False and cfg.run.resume == "auto" and isinstance(cfg.model.dropout, float)


@pytest.mark.parametrize("line, name", [("lr: null", "lr"), ("epochs: 1.5", "epochs"), ("batch_size: 2.5", "batch_size"),  # null: the recipe chooses
                                        ("strict: 3", "strict")])
def test_recipe_values_of_the_wrong_type_are_one_line(tmp_path, line, name):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(line + "\n")
    result = cli("train", "--config", recipe, "--dataset", "synthetic", "--print-config")
    assert isinstance(result.exception, TLError) and f"{name} " in str(result.exception), result.output  # tl's one line


def _tiny_run(data: Path, out: Path, *extra: str):
    return cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", data, "--epochs", "1", "--out", out, *extra)


def test_a_replacement_that_fails_leaves_the_old_run_whole(tmp_path):
    first = make_image_folder(tmp_path / "first", RGB_CLASSES, 4, splits=("train", "val"))
    out = tmp_path / "run"
    assert _tiny_run(first, out).exit_code == 0
    kept = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    assert "split.json" in kept
    other = make_image_folder(tmp_path / "other", {"cat": (200, 200, 0), "dog": (0, 200, 200)}, 4, splits=("train", "val"))
    for extra in (("--data-dir", tmp_path / "missing"), ("--weights", tmp_path / "missing.safetensors")):
        data = extra[1] if extra[0] == "--data-dir" else other
        result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", data, "--epochs", "1", "--out", out,
                     "--overwrite", *(extra if extra[0] == "--weights" else ()))
        assert isinstance(result.exception, TLError), result.output
        assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file() and path.name in kept} == kept
    assert cli("eval", "--checkpoint", out / "best").exit_code == 0  # its split still names its own files
    assert _tiny_run(other, out, "--overwrite").exit_code == 0  # and a replacement that works replaces the split
    assert b"cat" in (out / "split.json").read_bytes() and not (out / "split.json.new").exists()


def test_data_that_cannot_be_read_at_all_is_an_error_not_a_run(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (data / split / name).mkdir(parents=True)
            for index in range(3):
                (data / split / name / f"{index}.jpg").write_bytes(b"" if index else b"not a picture")
    result = _tiny_run(data, tmp_path / "run")
    assert isinstance(result.exception, TLError) and "not one train image could be read" in str(result.exception), result.output
    assert not (tmp_path / "run" / "best").exists()


def test_a_run_started_from_a_thread_trains(tmp_path):
    """Python lets only the main thread set signal handlers: a run from a worker thread (a notebook's background
    job, a web app) trains without them instead of failing."""
    finished: dict = {}
    worker = threading.Thread(target=lambda: finished.update(run=tl.train(**KEYWORDS, out=tmp_path / "run")))
    worker.start()
    worker.join()
    assert finished["run"].best["epoch"] == 1 and (tmp_path / "run" / "best" / "model.safetensors").is_file()


INTERRUPTED = """
import sys, tl
from tl.errors import Stopped
try:
    tl.train(dataset="synthetic", arch="resnet18", weights="none", image_size=32, epochs=200, synthetic_per_class=32,
             batch_size=4, num_workers=2, save_every_steps=1, keep_states=1, out=sys.argv[1])
except KeyboardInterrupt as stop:
    print("caught", type(stop).__name__, isinstance(stop, Stopped), stop, flush=True)
"""


def _first_state(out: Path, process: subprocess.Popen) -> None:
    deadline = time.time() + 240
    while not list((out / "state").glob("step-*")):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_from_python_with_workers_saves_and_raises_keyboard_interrupt(tmp_path):
    """Ctrl-C in a terminal or a notebook's interrupt reaches the whole process group, loader workers included:
    the run says so once, saves, and raises a KeyboardInterrupt that names the state (not SystemExit)."""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(out)], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    _first_state(out, process)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "caught Stopped True SIGINT: state saved in" in stdout and "resume='auto'" in stdout, stdout
    assert stderr.count("SIGINT received") == 1, stderr[-3000:]  # the workers leave it to the main process
    assert "exited unexpectedly" not in stderr and list((out / "state").glob("step-*"))


def test_a_run_leaves_the_caller_s_random_streams_where_they_were(tmp_path):
    import random

    import numpy as np
    import torch

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    tl.train(**KEYWORDS, out=tmp_path / "run")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.slow
def test_a_program_with_loader_workers_exits_when_its_run_is_done(tmp_path):
    """Persistent workers are ended by multiprocessing with SIGTERM as the program exits: a worker_init_fn that
    ignored SIGTERM made every `tl train` with workers hang there after its last line."""
    data = make_image_folder(tmp_path / "data", RGB_CLASSES, 2, splits=("train", "val"), size=96)
    command = [sys.executable, "-m", "tl.train", "--dataset", "imagefolder", "--data-dir", str(data), "--arch",
               "squeezenet1_0", "--weights", "none", "--epochs", "1", "--num-workers", "2", "--out", str(tmp_path / "run")]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and (tmp_path / "run" / "best").is_dir(), done.stderr[-3000:]


def test_numpy_scalars_and_yaml_s_bare_off_and_no_are_what_they_say(tmp_path):
    import numpy as np

    cfg = to_config(resolve({"dataset": "synthetic", "epochs": np.int64(2), "lr": np.float32(0.5), "overwrite": np.bool_(True)}))
    assert (cfg.run.epochs, cfg.optim.lr, cfg.run.overwrite) == (2, 0.5, True) and type(cfg.run.epochs) is int
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("cache_images: off\nmixed_precision: no\n")  # YAML 1.1 reads both as false
    cfg = to_config(resolve({}, recipe))
    assert (cfg.data.cache_images, cfg.run.mixed_precision) == ("off", "no")


def test_a_cut_network_takes_the_small_inputs_its_first_layers_take():
    from tl.models.architectures import input_sizes

    with pytest.raises(TLError, match="too small for alexnet"):
        input_sizes("alexnet", image_size=32)
    assert input_sizes("alexnet", image_size=32, cut_at="features.5") == (32, 37)
    assert input_sizes("alexnet", dataset="synthetic", synthetic_size=32, cut_at="features.5")[0] == 32


def test_reproduce_into_a_finished_run_changes_nothing_there(tmp_path):
    data = make_image_folder(tmp_path / "data", RGB_CLASSES, 4, splits=("train", "val"))
    first, second = tmp_path / "first", tmp_path / "second"
    assert _tiny_run(data, first).exit_code == 0
    assert _tiny_run(make_image_folder(tmp_path / "other", RGB_CLASSES, 3, splits=("train", "val")), second).exit_code == 0
    kept = (second / "split.json").read_bytes()
    result = cli("reproduce", first, "--out", second)
    assert isinstance(result.exception, TLError) and "already holds a run" in str(result.exception), result.output
    assert (second / "split.json").read_bytes() == kept
