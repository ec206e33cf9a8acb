"""The job input the whisper worker accepts, for runpod's rp_validator.

Written for this port of runpod-workers/worker-faster_whisper (commit bd500dc88f3828b4a03252473684059aa1b5b41c);
not the original's code: the names and defaults are the ones its handler reads.
"""


def _optional(kind, default):
    return {"type": kind, "required": False, "default": default}


INPUT_VALIDATIONS = {
    "audio": _optional(str, None),
    "audio_base64": _optional(str, None),
    "model": _optional(str, "base"),
    "transcription": _optional(str, "plain_text"),
    "translate": _optional(bool, False),
    "translation": _optional(str, "plain_text"),
    "language": _optional(str, None),
    "temperature": _optional(float, 0),
    "best_of": _optional(int, 5),
    "beam_size": _optional(int, 5),
    "patience": _optional(float, 1.0),
    "length_penalty": _optional(float, 0),
    "suppress_tokens": _optional(str, "-1"),
    "initial_prompt": _optional(str, None),
    "condition_on_previous_text": _optional(bool, True),
    "temperature_increment_on_fallback": _optional(float, 0.2),
    "compression_ratio_threshold": _optional(float, 2.4),
    "logprob_threshold": _optional(float, -1.0),
    "no_speech_threshold": _optional(float, 0.6),
    "enable_vad": _optional(bool, False),
    "word_timestamps": _optional(bool, False),
}
