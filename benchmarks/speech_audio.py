"""Real speech for audio-model benchmarks: espeak-ng phrases at 16 kHz between silence and noise.

A VAD's job is to say where speech is; synthetic Gaussian inputs never ask it. This builds one
mono 16 kHz float32 stream from Debian's `espeak-ng` (Spanish and English phrases, as SARAi hears),
with gaps of silence and of low noise between them, and cuts it into the windows a streaming model
reads. Labels (speech or not, per window) come from where the phrases were placed, so a bench can
show both agreement with FP32 and with the truth.
"""

import os
import shutil
import subprocess
import tempfile
import wave

import numpy as np

RATE = 16000
PHRASES = (
    ("es", "Hola, soy SARAi. Voy a desplegar el modelo cuantizado en el servidor de inferencia."),
    ("en", "The quantized model must behave the same as the original, window after window."),
    ("es", "Si la latencia supera dos segundos y medio, la versión anterior vuelve sola."),
    ("en", "Speech, then silence, then noise: every decision should stay where it was."),
)


def _speak(lang, text, path):
    exe = shutil.which("espeak-ng")
    if not exe:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng (requirements-apt.txt lists it)")
    subprocess.run([exe, "-v", lang, "-s", "150", "-w", path, text], check=True, capture_output=True)
    with wave.open(path, "rb") as w:
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    # Linear resampling to 16 kHz is enough for a VAD (espeak-ng speaks at 22.05 kHz).
    t_out = np.arange(int(len(pcm) * RATE / rate)) / RATE
    return np.interp(t_out, np.arange(len(pcm)) / rate, pcm).astype(np.float32)


def speech_stream(seed=0, gap_s=1.0, noise_level=0.01):
    """(samples float32 [n], speech mask bool [n]): phrases separated by silence, then noise, gaps."""
    rng = np.random.default_rng(seed)
    gap = int(gap_s * RATE)
    parts, mask = [np.zeros(gap, np.float32)], [np.zeros(gap, bool)]
    with tempfile.TemporaryDirectory(prefix="sarai-speech-") as tmp:
        for i, (lang, text) in enumerate(PHRASES):
            voice = _speak(lang, text, os.path.join(tmp, f"{i}.wav"))
            parts.append(voice)
            mask.append(np.abs(voice) > 0.02)  # speech where espeak-ng made sound (its pauses are silence)
            filler = (rng.normal(0, noise_level, gap).astype(np.float32) if i % 2 else np.zeros(gap, np.float32))
            parts.append(filler)
            mask.append(np.zeros(gap, bool))
    return np.concatenate(parts), np.concatenate(mask)


def windows(samples, mask, size=512, context=64):
    """Windows as silero-vad's own wrapper feeds them: `context` samples of the previous window
    before each `size` new ones ([N, 1, context + size]); a window is speech when a quarter of it is."""
    n = len(samples) // size
    padded = np.concatenate([np.zeros(context, np.float32), samples[: n * size]])
    out = np.stack([padded[i * size: i * size + context + size] for i in range(n)])[:, None, :]
    labels = mask[: n * size].reshape(n, size).mean(axis=1) >= 0.25
    return out.astype(np.float32), labels
