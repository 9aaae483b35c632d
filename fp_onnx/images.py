"""Turn image files into model inputs: resize, scale, normalise, lay out.

The preprocessing must match what the vendor's model was trained on, which only
the user knows; the defaults (scale to [0, 1], NCHW, no normalisation) match what
torch-trained models usually expect. Pillow decodes the files (it is a
matplotlib dependency already, and handles PNG/JPEG/PPM/BMP without surprises).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fp_onnx.errors import BadDataError, BadOptionError, first_line

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp"})
LAYOUTS = ("NCHW", "NHWC")
MAX_IMAGE_PIXELS = 89_478_485
"""Largest image (height x width) we decode or resize to: Pillow's own decompression-bomb limit."""


@dataclass(frozen=True)
class ImagePreprocess:
    size: tuple[int, int] | None = None
    """(height, width) to resize to, or None to keep the file's size."""
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    grayscale: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise BadOptionError(f"--layout {self.layout}: choose NCHW or NHWC")
        if any(s == 0 for s in self.std):
            raise BadOptionError("--std: values must be non-zero")
        channels = 1 if self.grayscale else 3
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            if len(values) not in (1, channels):
                raise BadOptionError(
                    f"{flag} {','.join(f'{v:g}' for v in values)}: give 1 value or one per channel "
                    f"({channels} for {'grayscale' if self.grayscale else 'RGB'} images)"
                )
        if not np.isfinite(self.scale):
            raise BadOptionError(f"--scale {self.scale}: must be a finite number")

    def __call__(self, image) -> np.ndarray:
        image = image.convert("L" if self.grayscale else "RGB")
        if self.size is not None:
            image = image.resize((self.size[1], self.size[0]), resample=_bilinear())
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        pixels = (pixels * self.scale - np.float32(self.mean)) / np.float32(self.std)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1) if self.layout == "NCHW" else pixels, dtype=np.float32)


def _bilinear():
    from PIL import Image

    return Image.Resampling.BILINEAR


def load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse both the same way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise BadDataError(f"{path}: not a readable image ({first_line(exc)})") from None
