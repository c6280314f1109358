"""Large JPEGs are decoded at a reduced DCT scale when the transform needs fewer pixels, and give the same crops.

The photo-like test image is band-limited by construction: smooth gradients and sinusoids whose shortest period
(64 px at full size) is 8 px even at 1/8 scale, so every decoding path (libjpeg's scaled IDCT, full decode +
antialiased resize) samples the same continuous picture, and what differs is the resampling kernels' rounding
and JPEG's quantisation noise. The bound (mean absolute difference <= 2 of 255 on a 224 px crop) holds with
several-fold room (measured 0.32 for the eval crop, 0.24 for the training crop; 0.47 on average, 0.90 at most, for
the eval crops of 20 bees/ants photos upscaled to 2048x1536); detail finer than twice the scale would not be held to it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tl.data.decode import jpeg_scale, read_image
from tl.data.transforms import decode_short_side, eval_pixels, train_pixels

MEAN_ABS_BOUND = 2.0  # of 255, on uint8 crops


def photo_like(path, width=2000, height=1500):
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [128 + 60 * np.sin(2 * np.pi * (x / 640 + y / 960)) + 40 * np.cos(2 * np.pi * y / 64),
                96 + 0.05 * x + 30 * np.sin(2 * np.pi * x / 80),
                160 - 0.04 * y + 50 * np.cos(2 * np.pi * (x + y) / 400)]
    Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    return photo_like(tmp_path_factory.mktemp("scale") / "photo.jpg")


def mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8
    return (a.float() - b.float()).abs().mean().item()


def test_the_scale_never_leaves_fewer_pixels_than_needed():
    assert jpeg_scale(2000, 1500, None) == 1 and jpeg_scale(2000, 1500, 256) == 4  # 375 >= 256 > 187
    assert jpeg_scale(2000, 1500, 518) == 2 and jpeg_scale(2000, 1500, 751) == 1
    assert jpeg_scale(400, 300, 256) == 1 and jpeg_scale(4096, 3072, 256) == 8  # small photos: full size
    for need in (1, 100, 256, 518, 1000):
        assert min(2000, 1500) // jpeg_scale(2000, 1500, need) >= need


def test_the_transform_states_its_need():
    assert decode_short_side(eval_pixels(size=224, resize=256)) == 256
    # 224 / sqrt(0.25 * 3/4) = 517.3: the smallest crop RandomResizedCrop can draw still has >= 224 px a side
    assert decode_short_side(train_pixels(size=224, crop_scale_min=0.25)) == 518
    assert decode_short_side(train_pixels(size=224, augment="strong")) == 290
    assert decode_short_side(None) is None and decode_short_side(lambda image: image) is None


def test_reduced_decoding_is_used_only_when_safe(big_jpeg, tmp_path):
    assert tuple(read_image(big_jpeg).shape) == (3, 1500, 2000)
    assert tuple(read_image(big_jpeg, 256).shape) == (3, 375, 500)
    assert tuple(read_image(big_jpeg, 518).shape) == (3, 750, 1000)
    assert tuple(read_image(big_jpeg, 1501).shape) == (3, 1500, 2000)
    small = photo_like(tmp_path / "small.jpg", 400, 300)
    assert tuple(read_image(small, 256).shape) == (3, 300, 400)
    png = tmp_path / "big.png"
    Image.open(big_jpeg).save(png)
    assert read_image(png, 256).size == (2000, 1500)  # PIL image, full size: only JPEGs are scaled


def test_eval_crop_from_reduced_decoding_matches_full(big_jpeg):
    tf = eval_pixels(size=224, resize=256)
    full, reduced = tf(read_image(big_jpeg)), tf(read_image(big_jpeg, decode_short_side(tf)))
    assert tuple(reduced.shape) == (3, 224, 224)
    assert mean_abs(full, reduced) <= MEAN_ABS_BOUND


def test_smallest_training_crop_from_reduced_decoding_matches_full(big_jpeg):
    """The crop RandomResizedCrop draws at its smallest area (25%) and most elongated ratio, taken at the same
    place of the picture from the full and the reduced decode."""
    from torchvision.transforms.v2 import functional as F

    need = decode_short_side(train_pixels(size=224, crop_scale_min=0.25))
    full, reduced = read_image(big_jpeg), read_image(big_jpeg, need)
    factor = full.shape[-1] / reduced.shape[-1]
    area = 0.25 * 2000 * 1500
    w, h = (area * 3 / 4) ** 0.5, (area * 4 / 3) ** 0.5  # ratio 3/4: the short side is the width
    top, left = 300, 500
    crop = lambda image, f: F.resized_crop(image, round(top / f), round(left / f), round(h / f), round(w / f), [224, 224], antialias=True)
    assert round(w / factor) >= 224
    assert mean_abs(crop(full, 1), crop(reduced, factor)) <= MEAN_ABS_BOUND


def test_a_damaged_large_jpeg_gives_the_answer_the_full_decoder_gives(big_jpeg, tmp_path):
    from tl.errors import TLError

    data = big_jpeg.read_bytes()
    for i, cut in enumerate((len(data) // 3, 700)):
        damaged = tmp_path / f"cut{i}.jpg"
        damaged.write_bytes(data[:cut])
        outcomes = []
        for need in (None, 256):
            try:
                outcomes.append(tuple(read_image(damaged, need).shape[-2:]))
            except TLError:
                outcomes.append("unreadable")
        assert (outcomes[0] == "unreadable") == (outcomes[1] == "unreadable"), outcomes
