"""The default recipe: what ``tl train`` (and ``tl.train``) chooses for the options no flag, recipe file or keyword set.

Those options (``CHOSEN``) default to None in ``tl.config``; once the data are read, ``apply`` fills them by the size
of the training set and says so in one line before the plan. Anything given explicitly wins. The run's config.json
records the values chosen and the recipe's version (``resolved.recipe``), so resume and ``tl reproduce`` read exactly
what was chosen; a config.json written before this recipe existed (no version) means the fixed defaults of that time
(``FIXED_DEFAULTS``), which ``recorded`` puts back.

Why by data size (README, "Default recipe"; bees/ants and its subsets, ImageNet squeezenet1_0): the fixed 10 epochs
took three times fastai's ``fine_tune(2)``, and 5 epochs still took longer than fastai on bees/ants and on 40
images, for the best epoch's 1-2 points. A set under 1,000 images gets 3 epochs of batches of 16 (at 32, 40 images
made one step an epoch; on bees/ants batch 16 gave +0.7 points); thousands get 4 epochs of 32 (where the issue's
flower set lost to fastai at 3); tens of thousands 3, each epoch being long. Measured and not taken: milder crops
(from 50% of the image: -1.3 points on 128 px photos, within noise), fastai's head, a larger backbone rate.

Recipe 3 adds the input size: a new run on photos much smaller than the architecture's input trains and evaluates
at their own size (``photo_input_size``), read from a sample of the photos' headers. ``image_size`` is not in
``CHOSEN``: a run before recipe 3 chose none, and its None (the architecture's size) must stay None on resume and
reproduce, which ``tl.training.steps.prepare_data`` ensures by choosing only for a new run.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from typing import Any

from tl.config import TrainConfig

log = logging.getLogger("tl")

VERSION = 3  # 3: small photos train at their own size (``photo_input_size``); 2: epochs and batch by data size
FIXED_DEFAULTS = {"epochs": 10, "batch_size": 32}  # before VERSION 2: the same for every data set
CHOSEN = tuple(FIXED_DEFAULTS)  # the options the recipe picks when none is given, each in its config section
SECTION = {"epochs": "run", "batch_size": "data", "image_size": "data"}

SMALL_SET, LARGE_SET = 1000, 10000  # train images


def choose(train_images: int) -> dict[str, Any]:
    """The recipe's value of each option in ``CHOSEN`` for a training set of ``train_images`` images."""
    small, large = train_images < SMALL_SET, train_images >= LARGE_SET
    return {"epochs": 3 if small or large else 4, "batch_size": 16 if small else 32}


SMALL_PHOTOS_FROM = 96  # px, median long side: below this the default input size stays (not measured)
SMALL_PHOTOS_UPTO = 0.75  # of the architecture's input side: above this upscaling costs little
LARGEST_INPUT = 256  # architectures with larger inputs (efficientnet_b3-b7, inception_v3) keep theirs: not measured


def photo_input_size(long_sides: list[int], default_size: int) -> int | None:
    """The input side for photos of these long sides (a sample of the train set) when they are much smaller than the
    architecture's ``default_size``: their median rounded up to a multiple of 32; None to keep the default.

    Why (README, "Default recipe"): the bees/ants photos shrunk to thumbnails of 128 px (long side), upscaled to
    squeezenet1_0's 224, reached 84.3% / 82.4% val top-1 (seeds 0/1); trained and evaluated at 128 px, 88.2% / 85.0%
    in about half the time (at 96, their short side: 83.7% for seed 1). Under 96 px nothing was measured, so the
    default stays.
    """
    if not long_sides:
        return None
    median = statistics.median(long_sides)
    if default_size > LARGEST_INPUT or median < SMALL_PHOTOS_FROM or median > SMALL_PHOTOS_UPTO * default_size:
        return None
    return int(-(-median // 32) * 32)


def apply(cfg: TrainConfig, *, train_images: int, long_sides: list[int] | None = None,
          default_size: int | None = None) -> tuple[TrainConfig, dict[str, Any], str]:
    """(cfg with every option in ``CHOSEN`` that is None filled in, the values chosen, the plan line; "" if none).
    ``long_sides`` (a sample of the train photos' long sides) and ``default_size`` (the architecture's input side)
    let it choose ``image_size`` as well, when none was given (``photo_input_size``); a resumed or reproduced run
    passes neither: its recorded size stands."""
    values = choose(train_images)
    chosen = {name: values[name] for name in CHOSEN if getattr(getattr(cfg, SECTION[name]), name) is None}
    size = photo_input_size(long_sides or [], default_size) if default_size and cfg.data.image_size is None else None
    if size:
        chosen["image_size"] = size
    if not chosen:
        return cfg, {}, ""
    said = {"epochs": f"{chosen.get('epochs')} epochs", "batch_size": f"batch {chosen.get('batch_size')}",
            "image_size": f"input {size} px (not {default_size})"}
    flags = ", ".join("--" + name.replace("_", "-") for name in chosen)
    photos = f" of ~{statistics.median(long_sides or [0]):.0f} px" if size else ""
    line = (f"recipe {VERSION}: {train_images} train images{photos}: " + ", ".join(said[n] for n in chosen)
            + f" (set {flags} to choose)")
    return _with(cfg, chosen), chosen, line


def _with(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    sections = {section: dataclasses.replace(getattr(cfg, section), **{n: v for n, v in values.items() if SECTION[n] == section})
                for section in {SECTION[n] for n in values}}
    return dataclasses.replace(cfg, **sections)


def recorded(cfg: TrainConfig, record: dict[str, Any]) -> TrainConfig:
    """``cfg`` with each option in ``CHOSEN`` that is None taken from a run's config.json ``record`` (resume, ``tl
    reproduce``): what that run chose. A record written before the recipe existed (no ``resolved.recipe``) ran with
    the fixed defaults of its time, so an option it lacks is that default, never today's choice."""
    versioned = "recipe" in record.get("resolved", {})
    fill = {}
    for name in CHOSEN:
        if getattr(getattr(cfg, SECTION[name]), name) is None:
            value = record.get("config", {}).get(SECTION[name], {}).get(name)
            fill[name] = value if value is not None or versioned else FIXED_DEFAULTS[name]
    size = record.get("config", {}).get("data", {}).get("image_size")
    if size and cfg.data.image_size is None:  # the size the run trained at (recipe 3's choice, or --image-size)
        fill["image_size"] = size
    return _with(cfg, fill)
