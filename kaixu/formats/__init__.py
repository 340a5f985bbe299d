"""Wire formats: one canonical chat model and one codec per provider API.

``get_codec("openai" | "anthropic" | "gemini" | "responses")`` returns the codec; see ``base.Codec``
for what a codec does and ``canonical`` for the model they translate through.
"""

from __future__ import annotations

from . import anthropic, gemini, openai, responses
from ._common import class_type, json_type
from .base import Codec, StreamDecoder, StreamEncoder
from .canonical import estimate_tokens
from .errors import FormatError, UnsupportedFeature

__all__ = [
    "FORMATS",
    "Codec",
    "FormatError",
    "StreamDecoder",
    "StreamEncoder",
    "UnsupportedFeature",
    "class_type",
    "estimate_tokens",
    "get_codec",
    "json_type",
]

_CODECS: dict[str, Codec] = {
    "openai": openai.CODEC,
    "anthropic": anthropic.CODEC,
    "gemini": gemini.CODEC,
    "responses": responses.CODEC,
}
#: The chat wire formats (the 3x3 matrices of tests/formats and bench/codec_events.py run over them); the
#: Responses API is a codec too, tested against each of them in tests/formats/test_responses.py.
FORMATS = ("openai", "anthropic", "gemini")


def get_codec(name: str) -> Codec:
    """The codec for a wire format name; ``KeyError`` for an unknown one (a config bug)."""
    try:
        return _CODECS[name]
    except KeyError:
        raise KeyError(f"unknown wire format {name!r}; expected one of {', '.join(_CODECS)}") from None
