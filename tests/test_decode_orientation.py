"""Photos come out upright: a phone stores a portrait photo sideways with an EXIF orientation tag (1-8), which
tl applies on every decoding path (libjpeg-turbo, the DCT-scaled decode, PIL), as Hugging Face ``datasets`` and
``PIL.ImageOps.exif_transpose`` do. The reference here is PIL's own ``exif_transpose``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms.functional import pil_to_tensor

from tl.data.decode import read_image, read_image_region, read_image_sized


def stored_sideways(path, orientation: int, width=640, height=480, fmt=None):
    """An asymmetric picture (a bright corner, a gradient) saved with EXIF ``orientation``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([255 * x / width, 255 * y / height, 128 + 0 * x], -1)
    pixels[: height // 4, : width // 5] = (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels.astype(np.uint8)).save(path, format=fmt, exif=exif, quality=95)
    return path


def upright_reference(path) -> torch.Tensor:
    with Image.open(path) as image:
        return pil_to_tensor(ImageOps.exif_transpose(image).convert("RGB"))


def as_tensor(image) -> torch.Tensor:
    return image if isinstance(image, torch.Tensor) else pil_to_tensor(image)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_comes_out_upright_on_every_path(tmp_path, orientation):
    jpeg = stored_sideways(tmp_path / "photo.jpg", orientation)
    expected = upright_reference(jpeg)
    full = read_image(jpeg)  # libjpeg-turbo
    assert isinstance(full, torch.Tensor) and full.shape == expected.shape
    assert (full.float() - expected.float()).abs().mean() <= 1.0, orientation
    reduced = read_image(jpeg, 100)  # 1/4 by DCT scaling
    assert tuple(reduced.shape[-2:]) == (expected.shape[-2] // 4, expected.shape[-1] // 4)
    shrunk = torch.nn.functional.interpolate(expected[None].float(), size=tuple(reduced.shape[-2:]), mode="area")[0]
    assert (reduced.float() - shrunk).abs().mean() <= 4.0, orientation  # the same picture, the same way up
    png = stored_sideways(tmp_path / "photo.png", orientation, fmt="PNG")  # PIL's path
    assert torch.equal(as_tensor(read_image(png)), upright_reference(png))
    assert read_image_sized(jpeg)[1] == (expected.shape[-1], expected.shape[-2])


def test_a_crop_drawn_before_decoding_is_drawn_on_the_upright_picture(tmp_path):
    """Orientation 6 (the usual portrait photo): stored 640x480, seen 480x640. The box is drawn on the upright size
    and cut from the upright decode at 1/2 scale, so it holds the same pixels as the full upright decode there."""
    jpeg = stored_sideways(tmp_path / "portrait.jpg", 6)
    expected = upright_reference(jpeg)
    seen = []
    image, box = read_image_region(jpeg, lambda width, height: seen.append((width, height)) or (40, 20, 400, 300), 150)
    assert seen == [(480, 640)] and tuple(image.shape) == (3, 320, 240) and box == (20, 10, 200, 150)
    top, left, height, width = box
    cut = image[:, top:top + height, left:left + width].float()
    reference = torch.nn.functional.interpolate(expected[None, :, 40:440, 20:320].float(), size=(200, 150), mode="area")[0]
    assert (cut - reference).abs().mean() <= 4.0


def test_a_damaged_exif_block_leaves_the_picture_as_stored(tmp_path):
    path = stored_sideways(tmp_path / "photo.jpg", 6)  # would be turned to 480x640 if the tag could be read
    data = bytearray(path.read_bytes())
    at = data.find(b"Exif\x00\x00")
    data[at + 6: at + 16] = b"\xff" * 10  # the TIFF header of the EXIF block
    path.write_bytes(bytes(data))
    assert tuple(read_image(path).shape) == (3, 480, 640)


def test_check_data_reports_the_upright_size(tmp_path):
    """`tl check-data` describes files as tl decodes them: a portrait photo stored sideways is 480 wide, 640 high."""
    from tl.data.check import probe_file

    for decode in (False, True):
        assert probe_file(str(stored_sideways(tmp_path / "portrait.jpg", 6)), decode)["size"] == (480, 640)
        assert probe_file(str(stored_sideways(tmp_path / "landscape.jpg", 1)), decode)["size"] == (640, 480)


def test_float_images_are_read_in_0_to_1_and_refused_outside(tmp_path):
    """A float TIFF (PIL mode F): PIL's own conversion turned 0..1 into black; values outside 0..1 have no scale."""
    from tl.errors import TLError

    ramp = np.linspace(0, 1, 32 * 16, dtype=np.float32).reshape(16, 32)
    Image.fromarray(ramp, mode="F").save(tmp_path / "ramp.tif")
    pixels = np.asarray(read_image(tmp_path / "ramp.tif"))
    assert pixels.shape[-1] == 3 and pixels.min() == 0 and pixels.max() == 255
    Image.fromarray(ramp * 1000, mode="F").save(tmp_path / "wide.tif")
    with pytest.raises(TLError, match=r"wide.tif: float pixels in 0..1000"):
        read_image(tmp_path / "wide.tif")


@pytest.mark.parametrize("mode, dtype", [("I;16B", ">u2"), ("I;16L", "<u2"), ("I;16", "<u2")])
def test_16_bit_images_of_either_byte_order_keep_their_top_8_bits(tmp_path, mode, dtype):
    """PIL's point(), which the 16-bit path used, cannot take I;16B or I;16L: such TIFFs were unreadable."""
    values = (np.arange(32 * 48).reshape(32, 48) * 41 % 65536).astype(np.uint16)
    image = Image.frombytes(mode, (48, 32), values.astype(dtype).tobytes())
    image.save(tmp_path / "deep.tif")
    pixels = np.asarray(read_image(tmp_path / "deep.tif"))
    assert (pixels[..., 0] == values >> 8).all() and (pixels[..., 1] == pixels[..., 2]).all()
