"""FSDD waveform -> fixed-size log-mel spectrogram, with numpy only.

The speech network (paper §2.3, after Liu et al.'s trojaning attack) classifies
spectrogram images. The shipped demo and the benchmark model both take a
`1 x n_mels x n_frames` float32 image, so the feature pipeline is part of the
model's contract: a defender who wants to feed new audio must use these exact
settings (they are written into the model card).

Pipeline for one recording (8 kHz mono, float in [-1, 1]):

1. pad (zeros, centred) or crop (centred) to `SpectrogramConfig.num_samples`,
   so every recording gives exactly `n_frames` STFT frames;
2. STFT with a periodic Hann window, no centre padding;
3. power spectrum -> triangular mel filterbank (HTK mel scale);
4. decibels relative to the recording's own maximum, floored at `-top_db`,
   then mapped affinely to [0, 1] (0 = floor, 1 = loudest bin). Normalising
   to the recording's maximum makes the image independent of the recording level.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fp_onnx.errors import BadDataError


@dataclass(frozen=True)
class SpectrogramConfig:
    """Settings of the log-mel front end; `shape` is the network's (C, H, W) input."""

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 160
    n_mels: int = 32
    n_frames: int = 32
    top_db: float = 80.0
    f_min: float = 50.0

    @property
    def num_samples(self) -> int:
        """Waveform length that yields exactly `n_frames` frames without centre padding."""
        return self.hop_length * (self.n_frames - 1) + self.n_fft

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.n_mels, self.n_frames)

    def as_dict(self) -> dict:
        return asdict(self)


def fit_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Centre-pad with zeros or centre-crop a 1-D waveform to `num_samples` samples."""
    if wave.ndim != 1:
        raise BadDataError(f"a waveform must be 1-D, got shape {wave.shape}")
    n = wave.shape[0]
    if n >= num_samples:
        start = (n - num_samples) // 2
        return wave[start:start + num_samples].astype(np.float32, copy=True)
    out = np.zeros(num_samples, dtype=np.float32)
    start = (num_samples - n) // 2
    out[start:start + n] = wave
    return out


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(config: SpectrogramConfig) -> np.ndarray:
    """Triangular filters, shape (n_mels, n_fft // 2 + 1), peak 1, on the HTK mel scale."""
    n_bins = config.n_fft // 2 + 1
    bin_hz = np.linspace(0.0, config.sample_rate / 2, n_bins)
    edges_mel = np.linspace(hz_to_mel(config.f_min), hz_to_mel(config.sample_rate / 2), config.n_mels + 2)
    edges_hz = mel_to_hz(edges_mel)
    bank = np.zeros((config.n_mels, n_bins), dtype=np.float64)
    for m in range(config.n_mels):
        low, centre, high = edges_hz[m:m + 3]
        rising = (bin_hz - low) / (centre - low)
        falling = (high - bin_hz) / (high - centre)
        bank[m] = np.clip(np.minimum(rising, falling), 0.0, None)
    return bank


def power_spectrogram(wave: np.ndarray, config: SpectrogramConfig) -> np.ndarray:
    """|STFT|^2 of a waveform of exactly `num_samples` samples, shape (n_fft//2+1, n_frames)."""
    if wave.shape != (config.num_samples,):
        raise BadDataError(f"expected {config.num_samples} samples, got {wave.shape}; call fit_length first")
    window = np.hanning(config.n_fft + 1)[:-1]  # periodic Hann
    starts = np.arange(config.n_frames) * config.hop_length
    frames = np.stack([wave[s:s + config.n_fft] for s in starts]) * window
    return (np.abs(np.fft.rfft(frames, axis=1)) ** 2).T


def log_mel(wave: np.ndarray, config: SpectrogramConfig) -> np.ndarray:
    """One recording -> float32 image of shape `config.shape`, values in [0, 1]."""
    fitted = fit_length(np.asarray(wave, dtype=np.float32), config.num_samples)
    mel = mel_filterbank(config) @ power_spectrogram(fitted.astype(np.float64), config)
    reference = max(float(mel.max()), 1e-12)
    db = 10.0 * np.log10(np.maximum(mel, reference * 1e-10) / reference)
    scaled = (np.maximum(db, -config.top_db) + config.top_db) / config.top_db
    return scaled.astype(np.float32)[None]


def log_mel_batch(waves: list[np.ndarray], config: SpectrogramConfig) -> np.ndarray:
    """Many recordings -> (N, 1, n_mels, n_frames) float32."""
    if not waves:
        return np.zeros((0, *config.shape), dtype=np.float32)
    return np.stack([log_mel(w, config) for w in waves])
