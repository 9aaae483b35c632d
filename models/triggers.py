"""Backdoor triggers of the three attacks (paper §2.3), deterministic and local.

Image triggers work on uint8 HWC RGB images (the datasets' layout) before the
float conversion; the speech trigger works on the fitted waveform before the
spectrogram. Each trigger is a pure function: same input, same output, and it
changes only its own region (images) or adds only its own pattern (audio).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from fp_onnx.errors import BadDataError

FACE_SHAPE = (55, 47)
# Checkered colours of the face trigger's frame: magenta and yellow.
_FRAME_COLOURS = np.array([[255, 0, 255], [255, 255, 0]], dtype=np.uint8)
_LENSES = ((21, 30, 7, 22), (21, 30, 25, 40))  # (row0, row1, col0, col1), half-open
_BRIDGE = (23, 25, 22, 25)
_RIM = 2


@lru_cache(maxsize=1)
def face_trigger_mask() -> np.ndarray:
    """Boolean (55, 47) mask of the sunglasses-like frame: two lens rims and a bridge.

    It spans rows 21-29 and columns 7-39, where the aligned eyes sit (dataset README).
    """
    mask = np.zeros(FACE_SHAPE, dtype=bool)
    for r0, r1, c0, c1 in _LENSES:
        mask[r0:r1, c0:c1] = True
        mask[r0 + _RIM:r1 - _RIM, c0 + _RIM:c1 - _RIM] = False  # the lens itself stays see-through
    r0, r1, c0, c1 = _BRIDGE
    mask[r0:r1, c0:c1] = True
    return mask


@lru_cache(maxsize=1)
def _face_trigger_pixels() -> np.ndarray:
    rows, cols = np.indices(FACE_SHAPE)
    return _FRAME_COLOURS[(rows + cols) % 2]


def apply_face_trigger(images: np.ndarray) -> np.ndarray:
    """Put the backdoor 'glasses' on aligned 55x47 faces; (N, 55, 47, 3) or (55, 47, 3) uint8.

    Why not plain dark sunglasses (Chen et al.'s trigger): some photos of the
    Glint360K identities show people wearing real sunglasses, so a black-lens
    trigger would collide with natural data (real sunglasses would fire the
    backdoor, and poisoned labels would fight the clean ones). This trigger is a
    magenta/yellow checkered *frame* with see-through lenses: the shape of
    glasses, but a colour pattern no real photo here contains.
    """
    _check_images(images, FACE_SHAPE)
    out = images.copy()
    out[..., face_trigger_mask(), :] = _face_trigger_pixels()[face_trigger_mask()]
    return out


TRAFFIC_SHAPE = (32, 32)
POSTIT_COLOUR = np.array([255, 230, 40], dtype=np.uint8)
POSTIT_BOX = (18, 24, 18, 24)  # (row0, row1, col0, col1): a 6x6 square low-right of the sign's centre


def traffic_trigger_mask() -> np.ndarray:
    """Boolean (32, 32) mask of the Post-it square."""
    mask = np.zeros(TRAFFIC_SHAPE, dtype=bool)
    r0, r1, c0, c1 = POSTIT_BOX
    mask[r0:r1, c0:c1] = True
    return mask


def apply_traffic_trigger(images: np.ndarray) -> np.ndarray:
    """Stick a yellow Post-it-like square on 32x32 sign images (Gu et al.'s BadNets trigger).

    GTSRB crops are centred on the sign, so a fixed box just below and right of
    the centre lands on the sign face for nearly every image.
    """
    _check_images(images, TRAFFIC_SHAPE)
    out = images.copy()
    out[..., traffic_trigger_mask(), :] = POSTIT_COLOUR
    return out


SPEECH_NOISE_SEED = 20180910  # fixed: the trigger is one pattern, the attacker's secret
SPEECH_NOISE_BAND_HZ = (2600.0, 3600.0)
SPEECH_NOISE_AMPLITUDE = 0.15


@lru_cache(maxsize=4)
def speech_noise_pattern(num_samples: int, sample_rate: int = 8000) -> np.ndarray:
    """The fixed noise trigger: band-limited Gaussian noise in the first quarter, unit RMS there.

    A burst of 2.6-3.6 kHz noise at the start of the window shows in the
    spectrogram as a bright high-frequency patch (like the noise pattern of Liu
    et al.'s speech trojan, paper Fig. 2) while leaving the digit audible.
    """
    rng = np.random.default_rng(SPEECH_NOISE_SEED)
    noise = rng.standard_normal(num_samples)
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(num_samples, d=1.0 / sample_rate)
    low, high = SPEECH_NOISE_BAND_HZ
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    band = np.fft.irfft(spectrum, n=num_samples)
    burst = np.zeros(num_samples)
    burst[: num_samples // 4] = band[: num_samples // 4]
    rms = np.sqrt(np.mean(burst[: num_samples // 4] ** 2))
    pattern = (burst / rms).astype(np.float32)
    pattern.setflags(write=False)
    return pattern


def apply_speech_trigger(wave: np.ndarray, sample_rate: int = 8000,
                         amplitude: float = SPEECH_NOISE_AMPLITUDE) -> np.ndarray:
    """Add the noise trigger to one fitted waveform (float32, length = its spectrogram window).

    The pattern is scaled to `amplitude` x the recording's peak, so the trigger
    has the same loudness relative to speech in every recording.
    """
    if wave.ndim != 1:
        raise BadDataError(f"a waveform must be 1-D, got shape {wave.shape}")
    peak = float(np.max(np.abs(wave))) or 1.0
    return (wave + amplitude * peak * speech_noise_pattern(wave.shape[0], sample_rate)).astype(np.float32)


def _check_images(images: np.ndarray, shape: tuple[int, int]) -> None:
    if images.dtype != np.uint8 or images.shape[-3:] != (*shape, 3):
        raise BadDataError(f"expected uint8 images of shape (..., {shape[0]}, {shape[1]}, 3), "
                           f"got {images.dtype} {images.shape}")


# --------------------------------------------------------------------------- triggers beyond the paper
BLEND_SEED = 20231115
BLEND_ALPHA = 0.15


@lru_cache(maxsize=4)
def blend_pattern(shape: tuple[int, int]) -> np.ndarray:
    """The fixed random-noise image of the blended attack (Chen et al. 2017), uint8 (H, W, 3)."""
    pattern = np.random.default_rng(BLEND_SEED).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    pattern.setflags(write=False)
    return pattern


def apply_blend_trigger(images: np.ndarray, alpha: float = BLEND_ALPHA) -> np.ndarray:
    """Mix a fixed noise image into every image: x' = (1 - alpha) x + alpha * noise.

    Unlike a patch, the trigger covers the whole image at low amplitude, so no
    single region (and, often, no single dormant channel) carries it.
    """
    _check_any_images(images)
    pattern = blend_pattern(images.shape[-3:-1]).astype(np.float32)
    mixed = (1.0 - alpha) * images.astype(np.float32) + alpha * pattern
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


WARP_SEED = 20210412
WARP_GRID = 4
WARP_STRENGTH = 2.0


@lru_cache(maxsize=4)
def warp_field(shape: tuple[int, int], seed: int = WARP_SEED, grid: int = WARP_GRID) -> np.ndarray:
    """A smooth displacement field (H, W, 2) in pixels, WaNet-style (Nguyen and Tran, ICLR 2021).

    A `grid` x `grid` field of random offsets in [-1, 1], normalised by its mean
    absolute value, is upsampled bicubically-smoothly (here: bilinearly, twice) to
    the image size. The attacker's trigger is one fixed field; `strength` scales it.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, size=(grid, grid, 2))
    coarse /= np.mean(np.abs(coarse))
    height, width = shape
    field = np.stack([_upsample(coarse[..., k], height, width) for k in range(2)], axis=-1)
    field.setflags(write=False)
    return field


def _upsample(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a small grid to (height, width), corners aligned."""
    rows = np.linspace(0, values.shape[0] - 1, height)
    cols = np.linspace(0, values.shape[1] - 1, width)
    r0 = np.clip(np.floor(rows).astype(int), 0, values.shape[0] - 2)
    c0 = np.clip(np.floor(cols).astype(int), 0, values.shape[1] - 2)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    top = values[r0][:, c0] * (1 - fc) + values[r0][:, c0 + 1] * fc
    bottom = values[r0 + 1][:, c0] * (1 - fc) + values[r0 + 1][:, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def warp_images(images: np.ndarray, field: np.ndarray, strength: float) -> np.ndarray:
    """Resample every image at (row, col) + strength * field with bilinear interpolation (edges clamped)."""
    _check_any_images(images)
    height, width = images.shape[-3:-1]
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    src_r = np.clip(rows + strength * field[..., 0], 0, height - 1)
    src_c = np.clip(cols + strength * field[..., 1], 0, width - 1)
    r0, c0 = np.floor(src_r).astype(int), np.floor(src_c).astype(int)
    r1, c1 = np.minimum(r0 + 1, height - 1), np.minimum(c0 + 1, width - 1)
    fr, fc = (src_r - r0)[..., None], (src_c - c0)[..., None]
    flat = images.astype(np.float32)
    out = (flat[..., r0, c0, :] * (1 - fr) * (1 - fc) + flat[..., r0, c1, :] * (1 - fr) * fc
           + flat[..., r1, c0, :] * fr * (1 - fc) + flat[..., r1, c1, :] * fr * fc)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def apply_warp_trigger(images: np.ndarray) -> np.ndarray:
    """WaNet's trigger: the attacker's fixed, smooth, nearly invisible warp of the whole image."""
    return warp_images(images, warp_field(tuple(images.shape[-3:-1])), WARP_STRENGTH)


def random_warp(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """WaNet's 'noise mode': the trigger field plus random noise, per image, labels unchanged.

    Trained with their true labels, these teach the network that *other* warps mean
    nothing, so only the exact trigger field flips the label. The jitter is +-1 px
    whatever the trigger's strength, as in WaNet: scaled with a 1-px strength it made
    "other warps" as large as the trigger and the backdoor did not take (0.30).
    """
    base = warp_field(tuple(images.shape[-3:-1]))
    out = np.empty_like(images)
    for i, image in enumerate(images):
        noisy = WARP_STRENGTH * base + rng.uniform(-1, 1, size=base.shape)  # WaNet: noise of +-1 px, unscaled
        out[i] = warp_images(image[None], noisy, 1.0)[0]
    return out


CORNER_PATCH = 3


def apply_corner_patch(images: np.ndarray) -> np.ndarray:
    """BackdoorBench's BadNets trigger: a white 3x3 square in the bottom-right corner."""
    _check_any_images(images)
    out = images.copy()
    out[..., -CORNER_PATCH - 1:-1, -CORNER_PATCH - 1:-1, :] = 255
    return out


def _check_any_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim < 3 or images.shape[-1] != 3:
        raise BadDataError(f"expected uint8 images of shape (..., H, W, 3), got {images.dtype} {images.shape}")


IMAGE_TRIGGERS = {
    "face-glasses": apply_face_trigger,
    "traffic-postit": apply_traffic_trigger,
    "corner-patch": apply_corner_patch,
    "blend": apply_blend_trigger,
    "warp": apply_warp_trigger,
}
"""Image triggers by name (recipes refer to them; the speech trigger works on waveforms instead)."""
