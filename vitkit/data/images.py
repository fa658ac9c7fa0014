"""Decoding one image file into the model's input: Pillow, EXIF orientation, channels, size.

The same function prepares images for training, evaluation and prediction, so a checkpoint's numbers mean the same
thing everywhere.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import BadImage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# The only decoders Pillow may use, whatever a file's bytes claim: the formats of IMAGE_SUFFIXES (JPEG's opener also
# reads the MPO files of many phone cameras; PPM also reads PGM). Everything else, EPS above all (Pillow hands it to
# Ghostscript), is "not an image" without its decoder ever running.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
MAX_ASPECT_RATIO = 50  # beyond, the centre crop would keep under 2% of the picture: refused as a bad image


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in {"__MACOSX", "Thumbs.db", "desktop.ini"}


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to RGB (3 channels) or L (1 channel); transparency is composited on black."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: scale the value range into 8 bits instead of clipping it.
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB" if channels == 3 else "L")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """The centre square of the image scaled to `size` x `size` (bicubic, antialiased): what resizing the shorter
    side to `size` and cropping the centre gives, computed on that box alone, so that a very wide image costs no
    more memory than a square one."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))  # the size the whole image would take
    sx, sy = nw / w, nh / h
    left, top = (nw - size) // 2 / sx, (nh - size) // 2 / sy  # the crop's corner, in the source's pixels
    return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + size / sx, top + size / sy))


def oriented(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; a damaged EXIF block is a bad image, not a crash."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as err:  # struct.error, TypeError, ValueError, ... from malformed EXIF data
        raise BadImage(f"malformed EXIF data ({type(err).__name__}: {err})", "unreadable") from None


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1: as stored). Damaged EXIF data is `BadImage` here as it is when decoding: an
    image to be turned is turned once, to find out."""
    try:
        value = int(img.getexif().get(0x0112, 1) or 1)
    except Exception as err:  # struct.error, TypeError, ValueError, ... from malformed EXIF data
        raise BadImage(f"malformed EXIF data ({type(err).__name__}: {err})", "unreadable") from None
    if value != 1:
        oriented(img)
    return value


def prepare(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """A Pillow image to a uint8 array (C, size, size): EXIF orientation, channels, resize and centre crop."""
    w, h = img.size
    if max(w, h) > MAX_ASPECT_RATIO * max(min(w, h), 1):
        raise BadImage(f"{w}x{h}: an aspect ratio beyond {MAX_ASPECT_RATIO}:1, whose centre crop would keep almost "
                       "nothing", "aspect-ratio")
    img = resize_center_crop(to_mode(oriented(img), channels), size)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


def set_max_pixels(limit: int) -> None:
    """Refuse images of more than `limit` pixels before decoding them.

    This is Pillow's own decompression-bomb limit, `Image.MAX_IMAGE_PIXELS` (default about 89 million): it is moved,
    never switched off. Pillow only warns between one and two times the limit; `open_image` refuses at once.
    """
    Image.MAX_IMAGE_PIXELS = int(limit)


def allow_pixels(limit: int) -> None:
    """For a program's entry point (the CLI, a server): raise Pillow's own decompression-bomb limit to `limit` if it
    is lower, so that Pillow neither warns about nor refuses what vitkit's limit allows. Library functions take the
    limit as an argument (`max_pixels`) instead and leave this process-wide setting alone."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = int(limit)


def open_image(path, max_pixels: int | None = None) -> Image.Image:
    """`Image.open` (header only) that refuses images above `max_pixels` (default: Pillow's limit) before any pixel
    is decoded."""
    try:
        img = Image.open(path, formats=FORMATS)
    except Image.DecompressionBombError as err:
        raise BadImage(f"refused as a possible decompression bomb ({err})", "too-large") from None
    w, h = img.size
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    if limit and w * h > limit:
        img.close()
        raise BadImage(f"refused as a possible decompression bomb: {w}x{h} is {w * h:,} pixels, more than the limit "
                       f"of {limit:,} (data.max_image_pixels)", "too-large")
    return img


def decode(source: bytes | str | os.PathLike, size: int, channels: int, max_pixels: int | None = None) -> np.ndarray:
    """An image file's bytes or path to the model's uint8 input (C, size, size): the one decoder that folders,
    shards, `predict` and the server share. Raises `BadImage` with the message and a `reason`: 'empty',
    'too-large' (above the pixel limit), 'not-an-image', 'truncated' or 'unreadable'."""
    if isinstance(source, bytes | bytearray | memoryview):
        if not len(source):
            raise BadImage("empty file", "empty")
        source = io.BytesIO(source)
    elif os.path.exists(source) and os.path.getsize(source) == 0:
        raise BadImage("empty file", "empty")
    try:
        with open_image(source, max_pixels) as img:
            img.load()
            return prepare(img, size, channels)
    except BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise BadImage("not an image format this reads (PNG, JPEG, WebP, GIF, BMP, TIFF)", "not-an-image") from None
    except MemoryError:
        raise BadImage("too large to decode in the memory available", "too-large") from None
    except Exception as err:  # Pillow raises many kinds for damaged data (OSError, ValueError, SyntaxError, ...)
        text = str(err) or type(err).__name__
        raise BadImage(text, "truncated" if "truncated" in text else "unreadable") from None


load_image = decode  # decoding a file by its path, under the name earlier versions used


def _reason(path, err: Exception) -> str:
    if os.path.exists(path) and os.path.getsize(path) == 0:
        return "empty file"
    return str(err) or type(err).__name__


def image_mode(path: str | os.PathLike) -> str:
    """The Pillow mode from the file header, without decoding pixels. Raises `BadImage`."""
    try:
        with Image.open(path, formats=FORMATS) as img:
            return img.mode
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as err:
        raise BadImage(_reason(path, err)) from None


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack uint8 (C, H, W) arrays into one uint8 tensor (N, C, H, W)."""
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, dtype=torch.uint8)
