"""Loading images the way the annotations see them.

One rule in every stage and both training engines: COCO annotations, ``width`` and ``height``
are those of the image as displayed, that is after its EXIF orientation is applied (detectron2's
``read_image`` and ``DatasetMapper`` do the same), so :func:`load_image_rgb` applies it, and an
image whose annotation file gives the stored (un-rotated) size fails with a sentence that says so,
as detectron2's size check fails it. Grayscale, palette, RGBA, 16-bit and CMYK images all come
back as ``H×W×3`` ``uint8`` RGB.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def why_not_a_file(path: Path) -> str:
    """Why ``path`` is no readable file, in words: a folder, a broken link or link loop, or missing."""
    if path.is_dir():
        return "is a folder, not an image file"
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a loop so
            return "is a symbolic link that loops"
        except OSError as e:
            return "is a symbolic link that loops" if "loop" in str(e).lower() else "is a broken symbolic link"
        return "is a symbolic link to no regular file"
    if path.exists():
        return "is not a regular file"
    return "is missing"


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.max() > 255:  # 16-bit range: map 0..65535 onto 0..255
            arr = arr / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "RGBA" or img.mode == "LA" or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def load_image_rgb(path: str | os.PathLike, expected_wh: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as ``H×W×3`` ``uint8`` RGB, EXIF orientation applied.

    Args:
        path: the image file.
        expected_wh: ``(width, height)`` from the COCO ``images`` entry: the size as displayed.

    Raises:
        ImageError: the file is missing or unreadable, or its displayed size is not
            ``expected_wh`` (the sentence says when ``expected_wh`` is the stored, un-rotated size).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file {path} {why_not_a_file(path)}")
    try:
        with Image.open(path) as raw:
            raw.load()
            oriented = ImageOps.exif_transpose(raw)
            if expected_wh is not None and tuple(oriented.size) != tuple(expected_wh):
                if tuple(raw.size) == tuple(expected_wh):
                    raise ImageError(
                        f"image {path.name} is shown {oriented.size[0]}×{oriented.size[1]} (its EXIF "
                        f"orientation rotates the stored {raw.size[0]}×{raw.size[1]} pixels), but the annotation "
                        f"file gives the stored size; sizes and annotations must be those of the image as shown "
                        f"(docs/formats.md)")
                raise ImageError(
                    f"image {path.name} is {oriented.size[0]}×{oriented.size[1]} but the "
                    f"annotation file says {expected_wh[0]}×{expected_wh[1]}"
                )
            return np.ascontiguousarray(_to_rgb_uint8(oriented))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image file {path} cannot be read ({e})") from None
