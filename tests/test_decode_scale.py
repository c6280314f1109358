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


def test_training_crop_drawn_before_decoding_matches_the_full_decode(big_jpeg):
    """CropBeforeDecode draws the box torchvision's RandomResizedCrop would draw (the same random numbers), decodes
    at the scale that box allows, and crops the same part of the picture: the box moves by less than one decoded
    pixel (it is rounded to the reduced grid; a random crop half a pixel over is as random), and its pixels are
    close to the full decode's cropped at that box."""
    from torchvision.transforms.v2 import functional as F

    from tl.data.decode import read_image_region
    from tl.data.transforms import CropBeforeDecode

    transform = train_pixels(size=224, crop_scale_min=0.25)
    crop_first = CropBeforeDecode.of(transform)
    full = read_image(big_jpeg)
    scales = set()
    for seed in range(12):
        torch.manual_seed(seed)
        params = transform.transforms[0].make_params([full])
        torch.manual_seed(seed)
        drawn = crop_first.draw(2000, 1500)
        assert drawn == (params["top"], params["left"], params["height"], params["width"])
        image, box = read_image_region(big_jpeg, lambda width, height: drawn, 224)
        factor = full.shape[-1] / image.shape[-1]
        scales.add(factor)
        assert all(abs(b * factor - d) <= factor for b, d in zip(box, drawn)), (box, drawn)
        assert min(box[2:]) >= 224  # never enlarged where the full decode would not be
        reduced = F.resized_crop(image, *box, [224, 224], antialias=True)
        expected = F.resized_crop(full, *(round(b * factor) for b in box), [224, 224], antialias=True)
        assert mean_abs(expected, reduced) <= MEAN_ABS_BOUND, seed
    assert scales - {1.0}, "no box was decoded at a reduced scale"


def test_the_drawn_box_picks_the_scale(big_jpeg, tmp_path):
    """A whole-picture box of a 2000x1500 JPEG needs 224 of 1500 rows: 1/4 (375 rows; 1/8 would leave 187); a box
    of 448x448 allows 1/2; a box under 448 px a side is decoded at full size. Other formats are never scaled."""
    from tl.data.decode import read_image_region

    for box, decoded, scaled_box in [((0, 0, 1500, 2000), (375, 500), (0, 0, 375, 500)),
                                     ((100, 200, 448, 448), (750, 1000), (50, 100, 224, 224)),
                                     ((100, 200, 447, 600), (1500, 2000), (100, 200, 447, 600))]:
        image, got = read_image_region(big_jpeg, lambda width, height, box=box: box, 224)
        assert tuple(image.shape[-2:]) == decoded and got == scaled_box
    png = tmp_path / "big.png"
    Image.open(big_jpeg).save(png)
    seen = []
    image, got = read_image_region(png, lambda width, height: seen.append((width, height)) or (0, 0, 1500, 2000), 224)
    assert seen == [(2000, 1500)] and image.size == (2000, 1500) and got == (0, 0, 1500, 2000)


def test_training_reads_files_through_the_drawn_crop_and_the_eval_side_does_not(big_jpeg, tmp_path):
    from tl.data.datasets import ImageFiles
    from tl.data.transforms import CropBeforeDecode

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    train = ImageFiles([(big_jpeg, 0), (bad, 1)], ["a", "b"], train_pixels(size=224))
    assert isinstance(train._crop_before_decode(), CropBeforeDecode)
    torch.manual_seed(3)
    image, label, readable = train[0]
    torch.manual_seed(3)
    assert torch.equal(image, CropBeforeDecode.of(train.transform)(big_jpeg)) and readable
    assert train[1][2] is False  # an unreadable file is still a stand-in, not an error
    evaluation = ImageFiles([(big_jpeg, 0)], ["a"], eval_pixels(size=224, resize=256))
    assert evaluation._crop_before_decode() is None and tuple(evaluation[0][0].shape) == (3, 224, 224)


def test_a_box_maps_to_the_reduced_grid_by_its_edges():
    """Reduced pixel i covers full pixels [i*d, (i+1)*d), also when libjpeg rounds the reduced size up: each edge
    moves by at most half a reduced pixel, and a side never shrinks below floor(side / d)."""
    import random

    from tl.data.decode import map_box

    assert map_box((3, 5, 900, 901), (2001, 1501), (501, 376)) == (1, 1, 225, 226)
    assert map_box((7, 9, 30, 40), (640, 480), (640, 480)) == (7, 9, 30, 40)  # full size: unchanged
    rng = random.Random(0)
    for _ in range(500):
        d = rng.choice((2, 4, 8))
        width, height = rng.randint(8 * d, 4000), rng.randint(8 * d, 3000)
        box_height, box_width = rng.randint(d, height), rng.randint(d, width)
        top, left = rng.randint(0, height - box_height), rng.randint(0, width - box_width)
        decoded = (-(-width // d), -(-height // d))
        t, l, h, w = map_box((top, left, box_height, box_width), (width, height), decoded)
        assert abs(t * d - top) <= d / 2 and abs(l * d - left) <= d / 2
        assert abs((t + h) * d - (top + box_height)) <= d / 2 and abs((l + w) * d - (left + box_width)) <= d / 2
        assert h >= box_height // d and w >= box_width // d and t + h <= decoded[1] and l + w <= decoded[0]


def test_cached_and_streamed_training_crops_are_the_same_crops(big_jpeg):
    """The decoded-image cache holds a JPEG at the scale of the smallest crop (1/2 here); the streamed path decodes
    at the scale of each drawn crop (1/4 for most). Both draw the box on the file's full size with the same random
    numbers, so a run gives the same crops whether its images fit the cache or not (on another machine, resumed).

    Each path's crop is held to the full decode at the box it cut (as above, <= 2.0); and the two paths' crops to
    each other within 8: their boxes are rounded to different grids (edges up to 2 full pixels apart, which this
    picture's steepest stripes turn into a few levels), while a box drawn on another size (the bug this guards
    against) cuts another part of the picture and differs by 13 to 60."""
    from torchvision.transforms.v2 import functional as F

    from tl.data.datasets import EpochSeeded, ImageFiles
    from tl.data.decode import image_size, map_box, read_image_region
    from tl.data.image_cache import preload
    from tl.data.transforms import CropBeforeDecode

    streamed = EpochSeeded(ImageFiles([(big_jpeg, 0)] * 8, ["a"], train_pixels(size=224)), 5)
    cached_files = ImageFiles([(big_jpeg, 0)] * 8, ["a"], train_pixels(size=224))
    assert preload([cached_files], 1 << 30, threads=1) > 0
    cached_image = cached_files.decoded[0]
    assert tuple(cached_image.shape) == (3, 750, 1000) and cached_files.full_sizes[0] == (2000, 1500)
    cached = EpochSeeded(cached_files, 5)
    for index in range(8):
        assert mean_abs(streamed[index][0], cached[index][0]) <= 8.0, index
    full, crop_first = read_image(big_jpeg), CropBeforeDecode.of(train_pixels(size=224))
    for seed in range(8):
        torch.manual_seed(seed)
        drawn = crop_first.draw(2000, 1500)
        for image, box in (read_image_region(big_jpeg, lambda width, height: drawn, 224),
                           (cached_image, map_box(drawn, (2000, 1500), image_size(cached_image)))):
            factor = 2000 / image.shape[-1]
            reference = F.resized_crop(full, *(round(b * factor) for b in box), [224, 224], antialias=True)
            assert mean_abs(F.resized_crop(image, *box, [224, 224], antialias=True), reference) <= MEAN_ABS_BOUND, (seed, factor)


def test_a_phone_mpo_jpeg_is_decoded_like_a_jpeg(big_jpeg, tmp_path):
    """Phones append a preview or depth image (MPF); PIL calls such a file MPO. Its first image is the photo, and
    it takes the JPEG paths: libjpeg-turbo at full size, DCT scaling when reduced, the same pixels as PIL's."""
    from torchvision.transforms.functional import pil_to_tensor

    with Image.open(big_jpeg) as opened:
        photo = opened.convert("RGB")
    mpo = tmp_path / "phone.jpg"
    photo.save(mpo, format="MPO", save_all=True, append_images=[photo.resize((200, 150))], quality=90)
    with Image.open(mpo) as opened:
        assert opened.format == "MPO"
    full = read_image(mpo)
    assert isinstance(full, torch.Tensor) and tuple(full.shape) == (3, 1500, 2000)
    with Image.open(mpo) as first:
        assert mean_abs(full, pil_to_tensor(first.convert("RGB"))) <= 1.0
    assert tuple(read_image(mpo, 256).shape) == (3, 375, 500)
