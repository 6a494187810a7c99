"""Audio features in plain torch (torchaudio is not a dependency): resampling and log-mel.

Resampling is band-limited interpolation: each output sample is a sum of input samples
weighted by a Hann-windowed sinc whose cutoff is just below the lower of the two Nyquist
frequencies, so downsampling does not alias (linear interpolation would fold everything
above the new Nyquist back into the audible band). The log-mel spectrogram uses the HTK mel
scale, triangular filters over the power spectrum of a Hann-windowed STFT, and a natural
log with a floor of 1e-6.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as nnf

# Pass band as a fraction of the lower Nyquist frequency, and sinc lobes kept on each side:
# a compromise between transition sharpness and cost (taps grow with both).
ROLLOFF = 0.95
ZERO_CROSSINGS = 8
LOG_FLOOR = 1e-6
_CHUNK = 8192  # output samples computed at once; bounds memory to _CHUNK x taps


def resample(signal: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample a 1-D float signal from ``orig_rate`` to ``new_rate`` Hz (any ratio)."""
    if orig_rate == new_rate:
        return signal
    # The filter's cutoff in cycles per input sample, times two (sinc zero crossings every 1/bandwidth).
    bandwidth = ROLLOFF * min(orig_rate, new_rate) / orig_rate
    half = math.ceil(ZERO_CROSSINGS / bandwidth)
    taps = torch.arange(-half + 1, half + 1)
    padded = nnf.pad(signal.float(), (half, half + 1))
    out_length = math.ceil(signal.shape[0] * new_rate / orig_rate)
    step = orig_rate / new_rate
    pieces = []
    for start in range(0, out_length, _CHUNK):
        # Positions of the output samples on the input's time axis, in float64: long signals
        # would lose the fractional part in float32.
        position = torch.arange(start, min(start + _CHUNK, out_length), dtype=torch.float64) * step
        nearest = position.floor().long()
        index = nearest[:, None] + taps
        distance = (position[:, None] - index).float()
        window = 0.5 + 0.5 * torch.cos(math.pi * distance / half)
        kernel = bandwidth * torch.sinc(bandwidth * distance) * window
        pieces.append((padded[index + half] * kernel).sum(dim=1))
    return torch.cat(pieces)


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_points(n_mels: int, sample_rate: int) -> torch.Tensor:
    """The ``n_mels + 2`` edge frequencies (Hz) of the filters, equally spaced in mel, 0 to Nyquist."""
    top = hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    return mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))


def mel_center_frequencies(n_mels: int, sample_rate: int) -> torch.Tensor:
    """The frequency (Hz) where each mel band's triangular filter peaks."""
    return mel_points(n_mels, sample_rate)[1:-1]


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Triangular filters ``[n_mels, n_fft // 2 + 1]`` mapping a power spectrum to mel bands."""
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_points(n_mels, sample_rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def log_mel_spectrogram(
    samples: torch.Tensor, filterbank: torch.Tensor, n_fft: int, hop_length: int
) -> torch.Tensor:
    """``[n_mels, frames]`` log-mel energies of a 1-D signal (frames = 1 + len // hop_length)."""
    spectrum = torch.stft(
        samples,
        n_fft=n_fft,
        hop_length=hop_length,
        window=torch.hann_window(n_fft, device=samples.device),
        center=True,
        return_complex=True,
    )
    power = spectrum.real**2 + spectrum.imag**2
    return torch.log(filterbank.to(samples.device) @ power + LOG_FLOOR)
