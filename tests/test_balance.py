"""Class imbalance: weighted loss and sampler, balanced accuracy per epoch, and --select-by choosing best/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, cli, make_image_folder, read_metrics
from tl.errors import TLError
from tl.models.checkpoint import checkpoint_state, read_meta
from tl.training.setup import BalancedSampler, class_weights

COLOURS_BIG, COLOURS_SMALL = {"red": (220, 30, 30)}, {"green": (30, 200, 40)}


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    """12 red and 3 green images in train and in val: 15 train images, 3 steps of 4 per epoch."""
    root = tmp_path_factory.mktemp("imbalanced") / "data"
    make_image_folder(root, COLOURS_BIG, 12, mixed_modes=False)
    make_image_folder(root, COLOURS_SMALL, 3, mixed_modes=False)
    return root


def _train(data: Path, out: Path, *extra: str):
    args = (*TINY, "--weights", "none", "--batch-size", "4", "--dataset", "imagefolder", "--data-dir", data, "--epochs", "2")
    result = cli("train", *args, *extra, "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return read_metrics(out)


def test_class_weights_are_inverse_square_roots_with_mean_one_per_image():
    targets = [0] * 16 + [1] * 4 + [2] * 1
    weights = class_weights(targets, 4)
    assert weights[3] == 0.0  # no train images, no weight
    assert weights[0] / weights[1] == pytest.approx(0.5) and weights[1] / weights[2] == pytest.approx(0.5)  # (4/16)^0.5, (1/4)^0.5
    assert sum(weights[t] for t in targets) / len(targets) == pytest.approx(1.0)
    assert class_weights([0, 1, 0, 1], 2) == pytest.approx([1.0, 1.0])


def test_sampler_is_fixed_by_seed_and_epoch_and_draws_rare_classes_more():
    targets = [0] * 90 + [1] * 10
    weight_of = class_weights(targets, 2)
    sampler = BalancedSampler([weight_of[t] for t in targets], seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 100 and list(BalancedSampler([weight_of[t] for t in targets], seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    drawn = []
    for epoch in range(100):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    share = sum(targets[i] for i in drawn) / len(drawn)
    # class 1 is drawn in proportion to 10 x 10^-0.5 against 90 x 90^-0.5: 0.25 of 10,000 draws (sd 0.004); unweighted 0.1
    assert 0.22 < share < 0.28


def test_sampler_shards_are_disjoint_parts_of_one_order():
    """What accelerate does with the sampler under several processes: every rank builds the same list and keeps
    every other batch of it, so together they see the list once."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    weights = [1.0] * 20 + [4.0] * 5
    whole = list(BatchSampler(BalancedSampler(weights, seed=0), 4, drop_last=True))
    shards = [list(BatchSamplerShard(BatchSampler(BalancedSampler(weights, seed=0), 4, drop_last=True), num_processes=2,
                                     process_index=rank)) for rank in (0, 1)]
    assert [batch for pair in zip(*shards) for batch in pair] == whole[: 2 * len(shards[0])]
    assert len(shards[0]) == len(shards[1]) == len(whole) // 2


@pytest.mark.parametrize("balance, strategy", [("loss", "linear"), ("sampler", "linear"), ("sampler", "full")])
def test_balanced_runs_record_balanced_accuracy_and_select_by_it(imbalanced, tmp_path, balance, strategy):
    out = tmp_path / "run"
    metrics = _train(imbalanced, out, "--balance", balance, "--strategy", strategy, "--augment", "none",
                     "--select-by", "val_balanced_accuracy")
    assert all(0.0 <= m["val_balanced_accuracy"] <= 1.0 for m in metrics)
    assert all(m["feature_cache"] for m in metrics) == (strategy == "linear")  # the linear runs used cached features
    key = lambda m: (m["val_balanced_accuracy"], m["val_top1"], -m["val_loss"])
    best = max(metrics, key=key)  # max keeps the first of equals, as training does
    assert read_meta(out / "best")["epoch"] == best["epoch"]
    assert (out / "config.json").read_text().count(f'"balance": "{balance}"') == 1


def test_select_by_val_loss_picks_the_lowest_val_loss(imbalanced, tmp_path):
    out = tmp_path / "run"
    metrics = _train(imbalanced, out, "--select-by", "val_loss", "--epochs", "3", "--lr", "0.05")
    best = min(metrics, key=lambda m: (m["val_loss"], -m["val_top1"]))
    assert read_meta(out / "best")["epoch"] == best["epoch"]


def test_balanced_sampler_run_resumed_mid_epoch_equals_uninterrupted(imbalanced, tmp_path):
    reference = tmp_path / "reference"
    _train(imbalanced, reference, "--balance", "sampler", "--save-every-steps", "1", "--keep-states", "10", "--dropout", "0.2")
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    shutil.rmtree(resumed / "last")
    metrics = _train(imbalanced, resumed, "--balance", "sampler", "--save-every-steps", "1", "--keep-states", "10",
                     "--dropout", "0.2", "--resume", str(resumed / "state" / "step-00000002"))  # mid epoch 1 of 3 steps
    for got, want in zip(metrics, read_metrics(reference)):
        for key in ("train_loss", "train_top1", "val_loss", "val_balanced_accuracy"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    final, expected = checkpoint_state(resumed / "last"), checkpoint_state(reference / "last")
    assert all(torch.equal(final[key], expected[key]) for key in expected)


@pytest.mark.parametrize("flag, value", [("--balance", "oversample"), ("--select-by", "val_f1")])
def test_unknown_choices_name_their_flag(flag, value, tmp_path):
    result = cli("train", "--dataset", "synthetic", flag, value, "--out", tmp_path / "run")
    assert isinstance(result.exception, TLError) and result.exception.message.startswith(flag), repr(result.exception)


@pytest.mark.parametrize("strategy", ["linear", "full"])
def test_the_weighted_loss_reaches_the_training_loss(imbalanced, tmp_path, strategy):
    """--balance loss changes what is minimised: with a model that cannot move (lr 1e-9), both runs see the same
    images and the same per-image losses, so their recorded train losses differ only by the weighting. Validation
    is not weighted: its loss is the same. (Linear: through the cached-features path.)"""
    common = ("--strategy", strategy, "--augment", "none", "--lr", "1e-9", "--epochs", "1", "--freeze-bn", "--head-norm", "none")
    plain = _train(imbalanced, tmp_path / "plain", *common)[0]
    weighted = _train(imbalanced, tmp_path / "weighted", *common, "--balance", "loss")[0]
    assert weighted["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-4)
    assert abs(weighted["train_loss"] - plain["train_loss"]) > 1e-4 * abs(plain["train_loss"])
