"""The fast paths change speed, not results: channels_last, torch.compile, cached features, precision choice."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from tests.conftest import TINY, cli, read_metrics
from tl.models.architectures import build_model
from tl.models.checkpoint import checkpoint_state
from tl.models.fastpaths import apply_channels_last, compile_blocker, compile_model, is_convolutional
from tl.runtime import cpu_has_native_bf16, keep_freed_memory, resolve_precision


def _model(arch: str = "resnet18"):
    torch.manual_seed(0)
    return build_model(arch, 3, image_size=32)[0].eval()


def test_channels_last_gives_the_same_outputs():
    plain, fast = _model(), _model()
    assert apply_channels_last(fast, True)
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), rtol=1e-4, atol=1e-5)
    assert not apply_channels_last(_model(), False)  # the flag turns it off


def test_only_convolutional_models_go_channels_last():
    assert is_convolutional(_model("squeezenet1_0")) and is_convolutional(_model("mobilenet_v3_small"))
    transformer = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    assert not is_convolutional(transformer)


@pytest.mark.slow
@pytest.mark.skipif(compile_blocker(torch.device("cpu")) is not None, reason="torch.compile cannot run here")
def test_compiled_model_gives_the_same_outputs():
    plain, fast = _model(), _model()
    apply_channels_last(fast, True)
    assert compile_model(fast, torch.device("cpu")) and fast._compiled_call_impl is not None
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), rtol=1e-4, atol=1e-5)
    assert set(fast.state_dict()) == set(plain.state_dict())  # checkpoints keep their keys (no _orig_mod.)


def test_auto_precision_follows_the_device_and_the_launcher(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision("auto", on_gpu=False) == ("bf16" if cpu_has_native_bf16() else "no")
    assert resolve_precision("no", on_gpu=False) == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # a launcher's explicit choice wins over auto
    assert resolve_precision("auto", on_gpu=False) == "bf16"


LINEAR = (*TINY, "--dataset", "synthetic", "--synthetic-per-class", "12", "--epochs", "3", "--strategy", "linear",
          "--augment", "none", "--dropout", "0.2", "--mixed-precision", "no", "--batch-size", "8")


def test_cached_features_train_the_same_head(tmp_path):
    runs = {}
    for flag in ("--cache-features", "--no-cache-features"):
        out = tmp_path / flag.strip("-")
        result = cli("train", *LINEAR, flag, "--out", out)
        assert result.exit_code == 0, result.output + repr(result.exception)
        runs[flag] = out
    cached, plain = read_metrics(runs["--cache-features"]), read_metrics(runs["--no-cache-features"])
    assert all(m["feature_cache"] for m in cached) and not any(m["feature_cache"] for m in plain)
    for a, b in zip(cached, plain):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_count"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    got, want = checkpoint_state(runs["--cache-features"] / "last"), checkpoint_state(runs["--no-cache-features"] / "last")
    assert got.keys() == want.keys()
    for key in want:  # the head (fc, running feature statistics) and the untouched backbone alike
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)
    first = build_model("resnet18", 4, image_size=32)[0]
    assert not torch.allclose(got["fc.fc.weight"], first.state_dict()["fc.fc.weight"])  # the head did train


def test_cache_stays_off_with_augmentation_and_config_records_the_fast_paths(tmp_path):
    out = tmp_path / "augmented"
    dropped = {"--augment": "none", "--mixed-precision": "no"}  # back to their defaults: basic augmentation, auto precision
    args = [a for i, a in enumerate(LINEAR) if a not in dropped and (i == 0 or dropped.get(LINEAR[i - 1]) != a)]
    result = cli("train", *args, "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = read_metrics(out)[0]
    assert metrics["feature_cache"] is False and "data_wait_share" in metrics
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["precision"] == resolved["mixed_precision"] == ("bf16" if cpu_has_native_bf16() else "no")
    assert resolved["channels_last"] is True and resolved["compiled"] is False
    assert resolved["kept_memory"] is (resolved["device"] == "cpu" and keep_freed_memory())


FAULTS = """
import resource, sys, torch
from tl.runtime import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def rounds(n):  # what a step does: allocate and write activations of several sizes, then free them all
    for _ in range(n):
        held = [torch.ones((5 << 20) + 4096 * i) for i in range(8)]
        del held
rounds(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(5)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_kept_memory_is_reused_not_faulted_in_again(tmp_path):
    """Training on the CPU frees and reallocates the same activations every step: with ``keep_freed_memory`` they
    come back from the heap (~2.5% of the pages faulted here, always); without it most rounds fault them in again."""
    import resource

    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD") and not k.startswith("MALLOC_")}
    faults = {}
    for mode in ("plain", "keep"):
        done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        kept, count = done.stdout.split()
        faults[mode] = int(count)
        assert kept == ("True" if mode == "keep" else "False")
    pages = 5 * sum((5 << 20) * 4 + 4096 * 4 * i for i in range(8)) // resource.getpagesize()  # written in 5 rounds
    # Without it glibc's own heuristics decide, by heap layout: 23% to 100% of the pages faulted in 6 runs here.
    assert faults["keep"] < pages / 10 and faults["keep"] * 2 < faults["plain"], (faults, pages)


def test_cpu_training_crops_cached_images_in_the_main_process():
    """On the CPU, with every image decoded in memory, auto workers are none (workers beside the model's threads cost
    more than the crops); an explicit count, streamed images and accelerators keep the usual rule."""
    from tl.runtime import build_accelerator, num_workers
    from tl.training.setup import loader_workers

    accelerator = build_accelerator()
    if accelerator.device.type != "cpu":
        pytest.skip("a machine with an accelerator")
    assert loader_workers(-1, accelerator, in_memory=True) == 0
    assert loader_workers(3, accelerator, in_memory=True) == 3
    assert loader_workers(-1, accelerator, in_memory=False) == num_workers(-1, 1)
    assert loader_workers(-1, accelerator, in_memory=True, augment="trivial") == num_workers(-1, 1)  # costlier crops


def test_kept_memory_can_be_turned_off_and_respects_the_users_allocator_settings(tmp_path):
    script = "from tl.runtime import keep_freed_memory, return_freed_memory; print(keep_freed_memory()); return_freed_memory()"
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD") and not k.startswith("MALLOC_")}
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    for extra, expected in (({}, glibc), ({"TL_KEEP_FREED_MEMORY": "0"}, False), ({"MALLOC_TRIM_THRESHOLD_": "4096"}, False),
                            ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=4096"}, False)):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**base, **extra}, cwd=tmp_path)
        assert done.returncode == 0 and done.stdout.split() == [str(expected)], (extra, done.stdout, done.stderr)


def test_data_wait_hint_names_the_flag():
    from tl.training.report import data_wait_hint

    assert data_wait_hint(0.1, workers=0, cpus=4) is None
    assert "--num-workers" in data_wait_hint(0.6, workers=1, cpus=4)
    assert "--num-workers" not in data_wait_hint(0.6, workers=4, cpus=4)


def test_cached_run_resumed_mid_epoch_equals_uninterrupted(tmp_path):
    import shutil

    args = (*LINEAR, "--epochs", "2", "--save-every-steps", "2", "--keep-states", "20")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert cli("train", *args, "--out", whole).exit_code == 0
    shutil.copytree(whole, resumed)  # then go back to a state in the middle of epoch 1 (4 of 6 steps done)
    result = cli("train", *args, "--out", resumed, "--resume", resumed / "state" / "step-00000004")
    assert result.exit_code == 0, result.output + repr(result.exception)
    for a, b in zip(read_metrics(resumed), read_metrics(whole), strict=True):
        assert all(a[k] == b[k] for k in ("epoch", "step", "train_loss", "train_top1", "val_loss", "val_top1")), (a, b)
    got, want = checkpoint_state(resumed / "last"), checkpoint_state(whole / "last")
    assert all(torch.equal(got[k], want[k]) for k in want)
