"""The default recipe: what ``tl train`` (and ``tl.train``) chooses for the options no flag, recipe file or keyword set.

Those options default to None in ``tl.config``; once the data are read, ``apply`` fills them by data size and photo
size and says so in one line before the plan. Anything given explicitly wins. The run's config.json records the
values chosen and the recipe's version (``resolved.recipe``), so resume and ``tl reproduce`` read exactly what was
chosen; a config.json written before this recipe existed (no version) means the fixed defaults of that time
(``FIXED_DEFAULTS``), which ``recorded`` puts back.

Measured on bees/ants and its subsets with ImageNet squeezenet1_0 (README, "Default recipe"): smaller batches
give a few hundred images enough optimizer steps in a few epochs, milder crops keep the object in small photos.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import statistics
from typing import Any

from tl.config import TrainConfig

log = logging.getLogger("tl")

VERSION = 2
FIXED_DEFAULTS = {"epochs": 10, "batch_size": 32, "crop_scale_min": 0.25}  # before VERSION 2: the same for every data set
CHOSEN = tuple(FIXED_DEFAULTS)  # the options the recipe picks when none is given, each in its config section
SECTION = {"epochs": "run", "batch_size": "data", "crop_scale_min": "data"}

SMALL_SET, LARGE_SET = 1000, 10000  # train images
PHOTO_SAMPLE = 32  # headers read to tell the photos' size


def choose(train_images: int, photo_side: int | None, input_size: int) -> dict[str, Any]:
    """The recipe's value of each option in ``CHOSEN`` for a training set of ``train_images`` photos whose median short
    side is ``photo_side`` (None: unknown), fed to the model at ``input_size``."""
    small, large = train_images < SMALL_SET, train_images >= LARGE_SET
    return {
        # few images: more, smaller steps; a large set has steps enough at 32, and each epoch costs more
        "epochs": 5 if small else 3 if large else 4,
        "batch_size": 16 if small else 32,
        # a photo no larger than the input has no detail to spare: its crops stay larger
        "crop_scale_min": 0.5 if photo_side is not None and photo_side < input_size else 0.35,
    }


def apply(cfg: TrainConfig, *, train_images: int, photo_side: int | None, input_size: int) -> tuple[TrainConfig, dict[str, Any], str]:
    """(cfg with every option in ``CHOSEN`` that is None filled in, the values chosen, the plan line; "" if none)."""
    values = choose(train_images, photo_side, input_size)
    chosen = {name: values[name] for name in CHOSEN if getattr(getattr(cfg, SECTION[name]), name) is None}
    if not chosen:
        return cfg, {}, ""
    sections = {section: dataclasses.replace(getattr(cfg, section), **{n: v for n, v in chosen.items() if SECTION[n] == section})
                for section in {SECTION[n] for n in chosen}}
    cfg = dataclasses.replace(cfg, **sections)
    photos = f", photos ~{photo_side} px" if photo_side else ""
    said = {"epochs": f"{chosen.get('epochs')} epochs", "batch_size": f"batch {chosen.get('batch_size')}",
            "crop_scale_min": f"crops from {chosen.get('crop_scale_min', 0):.0%} of the image up"}
    flags = ", ".join("--" + name.replace("_", "-") for name in chosen)
    line = (f"recipe {VERSION}: {train_images} train images{photos}: " + ", ".join(said[n] for n in chosen)
            + f" (set {flags} to choose)")
    return cfg, chosen, line


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
    sections = {section: dataclasses.replace(getattr(cfg, section), **{n: v for n, v in fill.items() if SECTION[n] == section})
                for section in {SECTION[n] for n in fill}}
    return dataclasses.replace(cfg, **sections)


def photo_side(dataset: Any, seed: int = 0) -> int | None:
    """Median short side of up to ``PHOTO_SAMPLE`` seeded training images, from their headers (no pixels decoded);
    None for a dataset without files (arrays, Hugging Face rows: their size is not known without decoding)."""
    from PIL import Image

    samples = getattr(dataset, "samples", None)
    if not samples:
        return None
    chosen = random.Random(seed).sample(list(samples), min(PHOTO_SAMPLE, len(samples)))
    sides = []
    for path, _ in chosen:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # an unreadable file is counted where it is decoded; here it just tells nothing
            continue
    return int(statistics.median(sides)) if sides else None


def wants_photo_side(cfg: TrainConfig) -> bool:
    """Only the crop's choice depends on the photos' size: their headers are read only when it is the recipe's."""
    return cfg.data.crop_scale_min is None
