"""Numbers that go wrong and disks that fill: real tiny runs and real filesystems, and the previous results survive."""

from __future__ import annotations

import math
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY, cli, read_metrics
from tl.errors import TLError
from tl.models.checkpoint import load_checkpoint, read_meta, save_checkpoint, update_meta
from tl.training.state import TrainingProgress, complete_states, save_training_state

# 4 classes x 8 images, batches of 8: 4 optimizer steps an epoch. SGD at 1e30 moves every weight by ~1e28 in the
# first step, so the second forward pass overflows float32 and bf16 alike: the loss is non-finite at step 2.
RUN = (*TINY, "--dataset", "synthetic", "--synthetic-classes", "4", "--synthetic-per-class", "8", "--batch-size", "8",
       "--optimizer", "sgd", "--augment", "none")
ABSURD_LR = ("--lr", "1e30")
NONFINITE = re.compile(r"loss is (nan|inf|-inf) at epoch (\d+) step (\d+)")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _assert_loadable(folder: Path) -> None:
    model, meta = load_checkpoint(folder)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()), folder
    assert meta["arch"] == "resnet18"


def test_nan_loss_stops_the_run_at_once_with_exit_2(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    process = subprocess.run([sys.executable, "-m", "tl.train", *RUN, *ABSURD_LR, "--epochs", "3", "--save-every-steps", "1",
                              "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stderr[-3000:]
    error = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and NONFINITE.search(error[0]).groups()[1:] == ("1", "2"), process.stderr[-3000:]
    assert "hint: lower --lr (now 1e+30), or add --clip-grad 1.0" in process.stderr and "Traceback" not in process.stderr
    # Step 1 was fine and saved; nothing after it: no state of step 2, no checkpoint, no metrics line.
    assert [p.name for p in complete_states(out)] == ["step-00000001"]
    assert not (out / "best").exists() and not (out / "last").exists() and read_metrics(out) == []


def test_nan_loss_after_a_good_epoch_leaves_its_checkpoints_alone(tmp_path):
    from safetensors.torch import save_file

    from tl.models.architectures import build_model

    # Epoch 1 trains the head at a sane rate; epoch 2 unfreezes a backbone whose rate is absurd (0.01 x 1e32). The
    # backbone multiplier applies to pretrained weights only: any weights file will do.
    weights = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("resnet18", 4)[0].state_dict().items()}, str(weights))
    out = tmp_path / "run"
    result = cli("train", *RUN, "--weights", weights, "--strategy", "gradual", "--unfreeze-epoch", "1", "--lr", "0.01",
                 "--backbone-lr-mult", "1e32", "--epochs", "2", "--out", out)
    assert isinstance(result.exception, TLError), result.output + repr(result.exception)
    assert NONFINITE.search(result.exception.message).groups()[1:] == ("2", "6"), result.exception.message  # epoch 2's 2nd
    assert "lower --backbone-lr-mult (now 1e+32)" in result.exception.hint
    assert [m["epoch"] for m in read_metrics(out)] == [1] and read_meta(out / "best")["epoch"] == 1
    assert read_meta(out / "last")["epoch"] == 1 and [p.name for p in complete_states(out)] == ["step-00000004"]
    _assert_loadable(out / "best")


def test_a_nan_from_the_last_step_of_an_epoch_is_caught_by_validation(tmp_path):
    # One step an epoch: its loss is finite (the weights before it were fine), the weights after it are not.
    out = tmp_path / "run"
    result = cli("train", *RUN, *ABSURD_LR, "--synthetic-per-class", "2", "--epochs", "1", "--out", out)
    assert isinstance(result.exception, TLError), result.output + repr(result.exception)
    assert re.search(r"val_loss is (nan|inf) after epoch 1", result.exception.message), result.exception.message
    assert not (out / "best").exists() and complete_states(out) == []


class SmallDisk:
    """A folder on a filesystem this test can fill for real: a tmpfs it mounts (root only; `fill` shrinks it to what
    it holds, so the next write gets ENOSPC), else the tmp folder with RLIMIT_FSIZE lowered, under which any write
    past 1 MiB fails with EFBIG. `reason` is the OS's message each gives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(path)], capture_output=True)
        self.tmpfs = mounted.returncode == 0
        self.reason = "No space left on device" if self.tmpfs else "File too large"
        self.limits = resource.getrlimit(resource.RLIMIT_FSIZE)

    def fill(self) -> None:
        if self.tmpfs:
            used = shutil.disk_usage(self.path).used
            subprocess.run(["mount", "-o", f"remount,size={used + (64 << 10)}", str(self.path)], check=True)
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, self.limits[1]))  # Python ignores SIGXFSZ: writes fail

    def free(self) -> None:
        if self.tmpfs:
            subprocess.run(["mount", "-o", "remount,size=512m", str(self.path)], check=True)
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, self.limits)

    def read_only(self) -> None:
        """The tmpfs remounted read-only (EROFS); elsewhere, for a user other than root, every entry chmod-ed so (EACCES)."""
        if self.tmpfs:
            subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)
        elif os.geteuid() == 0:
            pytest.skip("root ignores chmod, and this process may not mount a filesystem to remount read-only")
        else:
            self._chmod(0o555, 0o444)

    def _chmod(self, folders: int, files: int) -> None:
        for entry in [self.path, *self.path.rglob("*")]:
            entry.chmod(folders if entry.is_dir() else files)

    def close(self) -> None:
        self.free()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.path)], check=True)
        else:
            self._chmod(0o755, 0o644)  # so that pytest can remove it


@pytest.fixture
def disk(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("tmpfs and RLIMIT_FSIZE are Linux's")
    small = SmallDisk(tmp_path / "disk")
    yield small
    small.close()


def test_a_full_disk_leaves_the_previous_checkpoint_whole(disk):
    from tl.models.architectures import build_model

    model, _ = build_model("resnet18", 3)
    meta = {"arch": "resnet18", "num_classes": 3, "head": {"kind": "linear"}, "input_size": 32, "epoch": 1}
    folder = save_checkpoint(disk.path / "best", model, meta)
    before = _files(folder)
    disk.fill()
    torch.nn.init.zeros_(model.conv1.weight)
    with pytest.raises(TLError) as caught:
        save_checkpoint(folder, model, {**meta, "epoch": 2})
    assert f"could not write {folder}: {disk.reason}" in caught.value.message and "--out" in caught.value.hint
    with pytest.raises(TLError) as caught:
        update_meta(folder, temperature=2.0)  # calibration's write: weights and all, through a temporary file
    assert disk.reason in caught.value.message
    disk.free()
    assert _files(folder) == before and sorted(p.name for p in disk.path.iterdir()) == ["best"]  # no half-written copies
    assert read_meta(folder)["epoch"] == 1 and "temperature" not in read_meta(folder)
    assert load_checkpoint(folder)[0].conv1.weight.abs().sum() > 0


def test_a_full_disk_leaves_the_previous_training_state_whole(disk):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(1024, 1024)  # 4 MiB of weights: past the fallback's 1 MiB limit
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(2, 1024)).sum().backward()
    optimizer.step()
    first = save_training_state(accelerator, disk.path, TrainingProgress(step=1), keep=2)
    disk.fill()
    with pytest.raises(TLError) as caught:
        save_training_state(accelerator, disk.path, TrainingProgress(step=2), keep=2)
    assert f"could not write {disk.path / 'state' / 'step-00000002'}: {disk.reason}" in caught.value.message
    disk.free()
    assert complete_states(disk.path) == [first] and [p.name for p in first.parent.iterdir()] == [first.name]
    weights = model.weight.detach().clone()
    torch.nn.init.zeros_(model.weight)
    accelerator.load_state(str(first))
    assert torch.equal(model.weight, weights)


def test_a_full_disk_mid_run_stops_in_one_line_and_the_run_resumes_once_freed(disk):
    out = disk.path / "run"
    good = ("train", *RUN, "--lr", "0.01", "--out", out)
    assert cli(*good, "--epochs", "1").exit_code == 0
    best = _files(out / "best")
    disk.fill()
    result = cli(*good, "--epochs", "2", "--resume", "auto")
    assert isinstance(result.exception, TLError), result.output + repr(result.exception)
    assert result.exception.message == f"could not write {out / 'last'}: {disk.reason}", result.exception.message
    disk.free()
    assert _files(out / "best") == best and [p.name for p in complete_states(out)] == ["step-00000004"]
    _assert_loadable(out / "last")
    result = cli(*good, "--epochs", "2", "--resume", "auto")  # space again: epoch 2 is trained once more, and finishes
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]
    assert all(math.isfinite(m["train_loss"]) for m in read_metrics(out))


def test_a_read_only_out_stops_in_one_line(disk):
    out = disk.path / "run"
    assert cli("train", *RUN, "--lr", "0.01", "--epochs", "1", "--out", out).exit_code == 0
    best = _files(out / "best")
    disk.read_only()
    result = cli("train", *RUN, "--lr", "0.01", "--epochs", "2", "--resume", "auto", "--out", out)
    assert isinstance(result.exception, TLError), result.output + repr(result.exception)
    reason = "Read-only file system" if disk.tmpfs else "Permission denied"
    assert reason in result.exception.message and str(out) in result.exception.message, result.exception.message
    assert _files(out / "best") == best
    _assert_loadable(out / "best")


@pytest.mark.slow
def test_two_processes_stop_together_at_a_nan_loss(tmp_path):
    # 48 images, 2 processes x batches of 2: 12 steps an epoch. The loss breaks at step 2 and the processes agree at
    # step 10, in the collective by which they agree on stop signals: both raise the same error, neither hangs.
    accelerate = Path(sys.executable).with_name("accelerate")
    out = tmp_path / "run"
    command = [str(accelerate) if accelerate.exists() else "accelerate", "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tl.train", *RUN,
               *ABSURD_LR, "--synthetic-per-class", "12", "--batch-size", "2", "--epochs", "2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    found = [groups[1:] for groups in NONFINITE.findall(process.stderr)]  # the two processes' lines may interleave
    assert process.returncode != 0 and found == [("1", "2")] * 2, process.stderr[-3000:]
    assert complete_states(out) == [] and not (out / "best").exists()
