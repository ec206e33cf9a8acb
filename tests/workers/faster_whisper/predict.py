"""The whisper worker's Predictor, with a tiny stand-in model.

Written for this port of runpod-workers/worker-faster_whisper (commit bd500dc88f3828b4a03252473684059aa1b5b41c);
not the original's code. The original loads faster_whisper models (downloads of 75 MB to 3 GB);
this Predictor keeps its interface and output shape but recognises no words: it finds the
stretches of sound (audio.py) and reports them as segments. The model names and their energy
thresholds come from models.json beside this file.
"""

import json
import os

import audio

MODELS = json.load(open(os.path.join(os.path.dirname(__file__), "models.json"), encoding="utf-8"))


class Predictor:
    def setup(self):
        self.models = {}

    def predict(self, audio, model_name="base", transcription="plain_text", translate=False, word_timestamps=False, **options):
        if model_name not in MODELS:
            raise ValueError(f"model {model_name!r} is not one of {sorted(MODELS)}")
        samples, rate = _read(audio)
        segments = [
            {"id": n, "start": start, "end": end, "text": f"[sound {start:.2f}-{end:.2f} s]"}
            for n, (start, end) in enumerate(_segments(samples, rate, MODELS[model_name]["threshold"]))
        ]
        text = " ".join(segment["text"] for segment in segments)
        return {
            "segments": segments,
            "detected_language": options.get("language") or "en",
            "transcription": text,
            "translation": text if translate else None,
            "device": "cpu",
            "model": model_name,
        }


def _read(path):
    return audio.read_wav(path)


def _segments(samples, rate, threshold):
    return audio.sounding_segments(samples, rate, threshold)
