"""Image files -> pixels: read (with a size cap), recognise the format by signature, decode and resize
to RGB, refuse decompression bombs and truncated files with an :class:`ImageError` that says why."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image

MAX_PIXELS = 40_000_000  # refuse decompression bombs: more pixels than any catalog photo needs
_SIGNATURES = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"RIFF", "WebP"), (b"BM", "BMP"))


class ImageError(ValueError):
    """An image that cannot be embedded; the message is the reason written to the errors file."""


def read_image_file(path: str | Path) -> bytes:
    """The file's bytes, or :class:`ImageError` ("file not found", "empty file", "unreadable file")."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError("file not found") from exc
    except OSError as exc:  # the reason only (the path is reported beside it): e.g. "Permission denied"
        raise ImageError(f"unreadable file: {exc.strerror or type(exc).__name__}") from exc
    if not data:
        raise ImageError("empty file")
    return data


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode an encoded image (any PIL-readable format) to uint8 RGB ``[size, size, 3]`` (bilinear resize).

    Greyscale/CMYK/palette images are converted; alpha is composited over white. Raises
    :class:`ImageError` for empty, truncated, corrupt, non-image or oversized (decompression bomb) data.
    """
    return np.asarray(decode_rgb(data, size).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def decode_rgb(data: bytes, size: int) -> Image.Image:
    """Decode an encoded image to an RGB PIL image at about ``size`` pixels or more (JPEG decodes at a
    reduced scale), with the checks and reasons of :func:`decode_image`, which resizes it to a square."""
    if not data:
        raise ImageError("empty file")
    try:
        # No warnings.catch_warnings() here: it is not thread-safe, and the explicit pixel limit below
        # refuses bombs before PIL's own (larger) warning threshold matters.
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"image too large ({width}x{height} pixels > {MAX_PIXELS}): possible decompression bomb")
            image.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
            image.load()
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            return image.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        known = next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)
        if known:
            raise ImageError(f"corrupt or truncated image: {known} signature but cannot be decoded") from exc
        raise ImageError("not an image (unrecognised format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from exc


def load_image(path: str | Path, size: int) -> np.ndarray:
    """:func:`decode_image` of a file; also raises :class:`ImageError` for a missing or empty file."""
    return decode_image(read_image_file(path), size)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
