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
(from 50% of the image: -1.3 points on 128 px photos, within noise).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from tl.config import TrainConfig

log = logging.getLogger("tl")

VERSION = 2
FIXED_DEFAULTS = {"epochs": 10, "batch_size": 32}  # before VERSION 2: the same for every data set
CHOSEN = tuple(FIXED_DEFAULTS)  # the options the recipe picks when none is given, each in its config section
SECTION = {"epochs": "run", "batch_size": "data"}

SMALL_SET, LARGE_SET = 1000, 10000  # train images


def choose(train_images: int) -> dict[str, Any]:
    """The recipe's value of each option in ``CHOSEN`` for a training set of ``train_images`` images."""
    small, large = train_images < SMALL_SET, train_images >= LARGE_SET
    return {"epochs": 3 if small or large else 4, "batch_size": 16 if small else 32}


def apply(cfg: TrainConfig, *, train_images: int) -> tuple[TrainConfig, dict[str, Any], str]:
    """(cfg with every option in ``CHOSEN`` that is None filled in, the values chosen, the plan line; "" if none)."""
    values = choose(train_images)
    chosen = {name: values[name] for name in CHOSEN if getattr(getattr(cfg, SECTION[name]), name) is None}
    if not chosen:
        return cfg, {}, ""
    said = {"epochs": f"{chosen.get('epochs')} epochs", "batch_size": f"batch {chosen.get('batch_size')}"}
    flags = ", ".join("--" + name.replace("_", "-") for name in chosen)
    line = f"recipe {VERSION}: {train_images} train images: " + ", ".join(said[n] for n in chosen) + f" (set {flags} to choose)"
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
    return _with(cfg, fill)
