"""A seeded corpus of damaged image files in six formats, for the decoder fuzz test (and by hand, as a program).

Sources are small but photo-like (smooth gradients, shapes and sensor noise), saved in several encodings of
each format; each damaged file is one source with one kind of damage: flipped bytes, a truncation, edited
header bytes, a spliced-in segment of the same file, a run of zeros, random bytes inserted, or a
decompression bomb (a header that declares a huge image over a tiny body). Same seed, same files.

    python tests/fuzz_corpus.py OUT_DIR [--per-format N] [--seed S]
"""

from __future__ import annotations

import io
import random
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FORMATS = ("jpeg", "png", "gif", "webp", "bmp", "tiff")
EXTENSION = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "webp": ".webp", "bmp": ".bmp", "tiff": ".tif"}
DAMAGES = ("flip", "truncate", "header", "splice", "zeros", "insert", "bomb")


def source_images(seed: int, count: int = 4) -> list[Image.Image]:
    """Photo-like RGB images of a few sizes: a gradient sky, shapes, noise (JPEG's and PNG's filters see real structure)."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(count):
        width, height = [(64, 48), (48, 64), (96, 72), (33, 17)][k % 4]
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
        pixels = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
            draw.ellipse((x0, y0, x0 + 8 + int(rng.integers(0, 16)), y0 + 8 + int(rng.integers(0, 16))),
                         fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        images.append(image)
    return images


def encodings(image: Image.Image, fmt: str) -> list[bytes]:
    """The same picture in the encodings real files of ``fmt`` come in."""
    def save(img: Image.Image, **options) -> bytes:
        buffer = io.BytesIO()
        img.save(buffer, format=fmt.upper(), **options)
        return buffer.getvalue()

    if fmt == "jpeg":
        return [save(image, quality=90), save(image, quality=75, progressive=True), save(image.convert("L")),
                save(image.convert("CMYK")), save(image, quality=95, subsampling=0)]
    if fmt == "png":
        return [save(image), save(image.convert("P", palette=Image.Palette.ADAPTIVE)), save(image.convert("RGBA")),
                save(image.convert("L")), save(image, optimize=True)]
    if fmt == "gif":
        frames = [image.convert("P"), image.rotate(90).convert("P")]
        buffer = io.BytesIO()
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
        return [save(image.convert("P")), buffer.getvalue()]
    if fmt == "webp":
        return [save(image, quality=80), save(image, lossless=True), save(image.convert("RGBA"), quality=60)]
    if fmt == "bmp":
        return [save(image), save(image.convert("P")), save(image.convert("L"))]
    return [save(image), save(image, compression="tiff_lzw"), save(image, compression="tiff_deflate"),
            save(image.convert("L"), compression="packbits")]


def bomb(fmt: str, data: bytes) -> bytes:
    """A file whose header declares 30000 x 30000 pixels (900 million) over the original small body."""
    big = 30000
    if fmt == "png":  # a fresh IHDR with a valid CRC, then the small image's IDAT: the classic libpng crash
        ihdr = struct.pack(">IIBBBBB", big, big, 8, 2, 0, 0, 0)
        chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
        return data[:8] + chunk + data[33:]
    out = bytearray(data)
    if fmt == "jpeg":  # height and width of the first SOFn segment
        for i in range(2, len(out) - 9):
            if out[i] == 0xFF and out[i + 1] in (0xC0, 0xC1, 0xC2):
                out[i + 5:i + 9] = struct.pack(">HH", big, big)
                break
    elif fmt == "gif":
        out[6:10] = struct.pack("<HH", 0xFFFF, 0xFFFF)
    elif fmt == "bmp":
        out[18:26] = struct.pack("<ii", big, big)
    elif fmt == "webp":  # a VP8L/VP8 header's size fields are deep inside; a VP8X canvas is 24-bit at offset 24
        out[24:30] = (big - 1).to_bytes(3, "little") * 2
    elif fmt == "tiff":  # the first IFD's ImageWidth/ImageLength entries
        little = out[:2] == b"II"
        order = "<" if little else ">"
        (ifd,) = struct.unpack(order + "I", out[4:8])
        (entries,) = struct.unpack(order + "H", out[ifd:ifd + 2])
        for e in range(entries):
            at = ifd + 2 + 12 * e
            tag, kind = struct.unpack(order + "HH", out[at:at + 4])
            if tag in (256, 257):
                out[at + 2:at + 12] = struct.pack(order + "HII", 4, 1, big)
    return bytes(out)


def damage(data: bytes, kind: str, fmt: str, rng: random.Random) -> bytes:
    out = bytearray(data)
    n = len(out)
    if kind == "flip":
        for _ in range(rng.randint(1, 12)):
            out[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        out = out[:rng.randrange(1, n)]
    elif kind == "header":
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(min(n, 64))] = rng.randrange(256)
    elif kind == "splice":
        a, b = sorted(rng.sample(range(n), 2))
        at = rng.randrange(n)
        out[at:at] = out[a:b]
    elif kind == "zeros":
        at = rng.randrange(n)
        out[at:at + rng.randint(1, 64)] = bytes(min(64, n - at))
    elif kind == "insert":
        at = rng.randrange(n)
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    elif kind == "bomb":
        return bomb(fmt, data)
    return bytes(out)


def write_corpus(folder: Path, *, per_format: int = 500, seed: int = 0, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """``per_format`` damaged files of each format under ``folder`` (one flat folder); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sources = source_images(seed)
    written = []
    for fmt in formats:
        originals = [data for image in sources for data in encodings(image, fmt)]
        for i in range(per_format):
            kind = DAMAGES[i % len(DAMAGES)]
            path = folder / f"{fmt}-{i:04d}-{kind}{EXTENSION[fmt]}"
            path.write_bytes(damage(rng.choice(originals), kind, fmt, rng))
            written.append(path)
    return written


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-format", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = write_corpus(args.out, per_format=args.per_format, seed=args.seed)
    print(f"wrote {len(files)} files to {args.out}", file=sys.stderr)
