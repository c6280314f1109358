"""Decoding image files safely: every format through PIL except JPEG, every file's pixel count checked first.

Why not torchvision.io for everything: its libpng path (torchvision 0.29.1) kills the whole process with
SIGSEGV on damaged PNGs (74 of 150 randomly damaged variants of one photo, and a 74-byte PNG whose header
declares 30000x30000 pixels), so a single bad file stopped a training run or a batch prediction. PIL raised
a Python exception on every damaged file in six formats and never crashed. JPEG stays on libjpeg-turbo
(torchvision.io.decode_jpeg), which is faster and which the fuzz test (tests/test_fuzz.py) has not crashed.

The header is read first (PIL opens lazily), so a decompression bomb is refused before a byte is decoded.

Images come out upright: a phone stores a portrait photo sideways with an EXIF orientation tag, which every
decoder here ignores by default (PIL, libjpeg-turbo), and Hugging Face ``datasets`` applies. tl applies it on
every path, so a folder, ``tl prepare``'s shards and a hub dataset of the same photos agree, and a photo is
seen the way its owner sees it.

A JPEG much larger than its transform needs is decoded at a reduced size: libjpeg-turbo scales the DCT by 1/2,
1/4 or 1/8 while decoding (PIL's ``Image.draft``), which skips most of the inverse DCT, colour conversion and
the later resize. torchvision's decode_jpeg has no such option. On 2048x1536 camera photos, one core (others
busy): torchvision full decode + eval crop 137 images/s, PIL at 1/2 180, at 1/4 237, at 1/8 286; PIL at full
size 96. So PIL is used when it may scale, libjpeg-turbo through torchvision otherwise.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable

from PIL import Image

from tl.errors import TLError

# torchvision 0.29 deprecates its decoders (in favour of torchcodec, not a dependency): say it once in our notes, not per image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning)
# _check_pixels decides about big images, with its own message; PIL's UserWarnings about damaged metadata ("Corrupt
# EXIF data") would repeat per file and per epoch. Process-wide filters: catch_warnings is not thread-safe, and
# decoding runs in threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module="PIL")

_BAD_FILE_HINT = "remove or replace the file, then run again"
_BOMB_HINT = "shrink or remove the file, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"


def max_image_pixels() -> int | None:
    """The largest image tl decodes: PIL's ``Image.MAX_IMAGE_PIXELS`` (89.5 million by default), read at call time
    so that ``PIL.Image.MAX_IMAGE_PIXELS = ...`` (or None for no limit) changes it for tl too."""
    return Image.MAX_IMAGE_PIXELS


def bomb_reason() -> str:
    """What PIL's DecompressionBombError means, in tl's words: PIL quotes twice the limit tl names everywhere else."""
    return f"too many pixels (more than twice the limit of {max_image_pixels() or 0:,}; a decompression bomb or a huge scan)"


def _check_pixels(image: Image.Image, path: str | Path) -> None:
    limit = max_image_pixels()
    width, height = image.size
    if limit is not None and width * height > limit:
        raise TLError(f"cannot read image {path}: too many pixels ({width}x{height} = {width * height:,}, "
                      f"limit {limit:,}; a decompression bomb or a huge scan)",
                      _BOMB_HINT)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB. 16/32-bit greyscale (PNG, TIFF, either byte order) keeps its top 8 bits; float
    greyscale (a float TIFF) is read in 0..1, where PIL's own conversion gave black, and refused outside it."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # PIL's point() cannot take I;16B/I;16L: through NumPy
        import numpy as np

        values = np.asarray(image).astype(np.int64) >> 8
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        import numpy as np

        values = np.asarray(image)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (low >= 0.0 and high <= 1.0):  # NaN fails too: no scale can be guessed for it
            raise ValueError(f"float pixels in {low:g}..{high:g}; tl reads float images in 0..1")  # load_rgb names the file
        image = Image.fromarray(np.round(values * 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open any image file as an RGB PIL image, as stored (``read_image`` turns it upright); a file PIL cannot read
    becomes a one-line TLError."""
    try:
        with Image.open(path) as image:
            _check_pixels(image, path)
            image.load()
            return to_rgb(image)
    except TLError:
        raise
    except Image.DecompressionBombError as exc:  # PIL refuses at open above twice the limit, in its own words
        raise TLError(f"cannot read image {path}: {bomb_reason()}", _BOMB_HINT) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise TLError(f"cannot read image {path}: {exc}", _BAD_FILE_HINT) from exc
    except Exception as exc:  # PIL's plugins raise struct.error, IndexError, ... on damaged files
        raise TLError(f"cannot read image {path}: {type(exc).__name__}: {exc}", _BAD_FILE_HINT) from exc


def jpeg_scale(width: int, height: int, min_short_side: int | None) -> int:
    """The largest DCT scale denominator (8, 4, 2, else 1) that leaves the decoded short side >= ``min_short_side``.
    libjpeg rounds a scaled side up, so ``short // denominator`` is a lower bound of what comes out."""
    if not min_short_side:
        return 1
    return next((d for d in (8, 4, 2) if min(width, height) // d >= min_short_side), 1)


_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # as PIL.ImageOps.exif_transpose turns them


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = upright; 2-8 mirrored and/or turned) of an opened image; 1 when absent or damaged."""
    if image.format == "PNG" and "exif" not in image.info:  # not before the pixels: Pillow would decode them all to look
        return 1
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # damaged EXIF: the pixels are still readable, as they are
        return 1
    return value if value in _TRANSPOSE else 1


def to_upright(image, orientation: int):
    """``image`` (an RGB PIL image or a uint8 (3, H, W) tensor) turned as its EXIF ``orientation`` says."""
    if orientation not in _TRANSPOSE:
        return image
    if not hasattr(image, "shape"):
        return image.transpose(_TRANSPOSE[orientation])
    import torch

    x = image
    turned = {2: lambda: x.flip(-1), 3: lambda: x.flip(-2, -1), 4: lambda: x.flip(-2),
              5: lambda: x.transpose(-2, -1), 6: lambda: torch.rot90(x, -1, (-2, -1)),
              7: lambda: x.transpose(-2, -1).flip(-2, -1), 8: lambda: torch.rot90(x, 1, (-2, -1))}[orientation]()
    return turned.contiguous()


def read_image(path: str | Path, min_short_side: int | None = None):
    """An RGB image to transform, as training, ``tl eval`` and ``predict-dir`` all decode it.

    A baseline or progressive 8-bit JPEG (YCbCr or greyscale) comes back as a uint8 (3, H, W) tensor decoded by
    libjpeg-turbo: with the eval crop 636 images/s on one core on the bees/ants photos, against 428 through PIL.
    Everything else (PNG, GIF, WebP, BMP, TIFF, CMYK JPEGs, anything libjpeg-turbo rejects) is an RGB PIL image.
    An unreadable file, or one with more than ``max_image_pixels()`` pixels, raises a one-line TLError.

    ``min_short_side``: the short side the transform needs (``tl.data.transforms.decode_short_side``). A JPEG
    at least twice that is decoded at 1/2, 1/4 or 1/8 of its size, never below it; None decodes at full size.
    """
    return read_image_sized(path, min_short_side)[0]


def read_image_sized(path: str | Path, min_short_side: int | None = None):
    """(``read_image``'s image, the file's full upright (width, height)): the decoded-image cache keeps both, so a
    crop drawn on the full size (``read_image_region``) can be taken from its reduced copy (``map_box``)."""
    full_size = []  # the whole picture is the region: its short side decides the scale, as read_image_region's box does
    image, _ = read_image_region(path, lambda width, height: full_size.append((width, height)) or (0, 0, height, width),
                                 min_short_side)
    return image, full_size[0]


Box = tuple[int, int, int, int]  # top, left, height, width: torchvision's crop order


def read_image_region(path: str | Path, draw_box: Callable[[int, int], Box], min_side: int | None):
    """(image, box) for a crop drawn before decoding: training's random resized crop, whose box depends only on
    the image's size. ``draw_box(width, height)`` gets the size from the file's header and returns the crop in
    full-size pixels; a JPEG is then decoded at the largest DCT scale that leaves the crop's short side >=
    ``min_side`` (the output side, so nothing is enlarged that the full decode would not), and the box comes back
    in the decoded image's pixels (``map_box``). A 224 px crop from a 2048x1536 photo: 1/4 for most crops, 1/2
    for the smallest, where the transform's worst case (``read_image(path, 518)``) allows 1/2 for all.
    The same errors as ``read_image``; ``draw_box`` is called once for every readable file, so the random
    numbers drawn are the ones a full decode followed by the crop would draw."""
    path = Path(path)
    header = _read_header(path)
    image = load_rgb(path) if header is None else None
    (width, height), fast, turn = header if header is not None else (image.size, False, 1)
    width, height = upright_size((width, height), turn)
    box = draw_box(width, height)
    if image is None:
        image = to_upright(_decode(path, jpeg_scale(box[3], box[2], min_side) if fast else 1, fast), turn)
    return image, map_box(box, (width, height), image_size(image))


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) of a picture stored as ``size`` once turned by its EXIF ``orientation``."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def image_size(image) -> tuple[int, int]:
    """(width, height) of a uint8 (3, H, W) tensor or a PIL image."""
    return (image.shape[-1], image.shape[-2]) if hasattr(image, "shape") else image.size


def map_box(box: Box, full_size: tuple[int, int], decoded_size: tuple[int, int]) -> Box:
    """``box`` (top, left, height, width) in a full-size image's pixels, in the pixels of its decode at a DCT scale.

    Reduced pixel i covers full pixels [i*d, (i+1)*d) (libjpeg rounds the reduced size up), so the box's edges are
    divided by d and rounded; its sides then stay >= floor(side / d)."""
    (width, height), (decoded_width, decoded_height) = full_size, decoded_size
    if (decoded_width, decoded_height) == (width, height):
        return box
    scale = next((d for d in (2, 4, 8) if (-(-width // d), -(-height // d)) == (decoded_width, decoded_height)), None)
    sx, sy = (scale, scale) if scale else (width / decoded_width, height / decoded_height)  # not a DCT scale: proportional
    top, left, box_height, box_width = box
    edge = lambda value, step, limit: min(limit, math.floor(value / step + 0.5))
    top2, left2 = edge(top, sy, decoded_height - 1), edge(left, sx, decoded_width - 1)
    bottom, right = edge(top + box_height, sy, decoded_height), edge(left + box_width, sx, decoded_width)
    return top2, left2, max(1, bottom - top2), max(1, right - left2)


def _read_header(path: Path) -> tuple[tuple[int, int], bool, int] | None:
    """((width, height) as stored, libjpeg-turbo can decode it, EXIF orientation) from the header alone; None when
    PIL cannot even open it. Too many pixels raises here, before a byte is decoded."""
    try:
        with Image.open(path) as header:  # reads the header only
            _check_pixels(header, path)
            fast = header.format in ("JPEG", "MPO") and header.mode in ("RGB", "L")  # MPO: a phone's JPEG + a preview
            return header.size, fast, orientation(header)
    except TLError:
        raise
    except Exception:
        return None


def _decode(path: Path, scale: int, fast: bool):
    if scale > 1:
        image = _decode_jpeg_scaled(path, scale)
        if image is not None:
            return image
    if fast:
        image = _decode_jpeg(path)
        if image is not None:
            return image
    return load_rgb(path)  # as stored, as the other decoders give it: the caller turns it upright


def _decode_jpeg(path: Path):
    """libjpeg-turbo's decode as a uint8 (3, H, W) tensor, or None when it refuses the file (PIL then decides)."""
    import torch

    try:  # deprecated since torchvision 0.29 in favour of torchcodec; when it is gone, PIL does it all
        from torchvision.io import ImageReadMode, decode_jpeg, read_file
    except ImportError:
        return None
    try:
        image = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        return None
    if image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
        return image
    return None


def _decode_jpeg_scaled(path: Path, scale: int):
    """A JPEG decoded at 1/``scale`` of its size (libjpeg's DCT scaling through PIL) as a uint8 (3, H, W) tensor,
    the type the full-size decode gives; None when PIL cannot (the full-size path then decides, as before)."""
    from torchvision.transforms.functional import pil_to_tensor

    try:
        with Image.open(path) as image:
            width, height = image.size
            image.draft("RGB", (width // scale, height // scale))
            image.load()
            return pil_to_tensor(image if image.mode == "RGB" else to_rgb(image))  # no copy: read inside the with
    except Exception:  # damaged: the full-size decoders give the same answer as without scaling
        return None
