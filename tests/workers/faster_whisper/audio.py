"""Reading a WAV file and finding where its sound is, with the standard library and numpy.

Written for this port of runpod-workers/worker-faster_whisper (commit bd500dc88f3828b4a03252473684059aa1b5b41c).
"""

import wave

import numpy as np


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """Mono samples in [-1, 1] and the sample rate."""
    with wave.open(path, "rb") as wav:
        rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
        raw = wav.readframes(wav.getnframes())
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128) / 128
    else:
        samples = np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768
    return samples.reshape(-1, channels).mean(axis=1), rate


def sounding_segments(samples: np.ndarray, rate: int, threshold: float, window: float = 0.02) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches whose RMS energy is above `threshold`."""
    size = max(1, int(rate * window))
    frames = len(samples) // size
    energy = np.sqrt((samples[: frames * size].reshape(frames, size) ** 2).mean(axis=1)) if frames else np.zeros(0)
    segments, start = [], None
    for index, loud in enumerate(energy > threshold):
        if loud and start is None:
            start = index
        elif not loud and start is not None:
            segments.append((start * window, index * window))
            start = None
    if start is not None:
        segments.append((start * window, frames * window))
    return [(round(a, 2), round(b, 2)) for a, b in segments]
