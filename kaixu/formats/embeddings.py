"""Embeddings in the two wire formats that have them (OpenAI `/v1/embeddings`, Gemini `:embedContent` and
`:batchEmbedContents`), used only when the client's format and the provider's differ; same-format requests
are forwarded untouched. Anthropic has no embeddings API.

Gemini's `taskType` and `title` change what the vector means and OpenAI cannot express them, so they are
refused (400 naming the field) rather than dropped; so are OpenAI token-id inputs, which Gemini cannot take.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from typing import Any

from ._common import JSON, expect_dict, expect_list, opt_int
from .canonical import Usage
from .errors import FormatError, UnsupportedFeature


@dataclass(slots=True)
class EmbeddingRequest:
    model: str
    inputs: list[str]
    dimensions: int | None = None
    single: bool = False
    """Gemini `:embedContent` (one input, answered as `embedding`, not `embeddings`)."""
    encoding: str = "float"
    """OpenAI `encoding_format` the client asked for (`float` or `base64`)."""


@dataclass(slots=True)
class EmbeddingResponse:
    model: str
    vectors: list[list[float]] = field(default_factory=list)
    usage: Usage | None = None
    """None: the provider reported no token count (Gemini never does); the settle step estimates it."""


# --- requests -----------------------------------------------------------------------


def decode_request(wire: str, body: JSON, *, model: str, single: bool) -> EmbeddingRequest:
    if wire == "openai":
        return _decode_openai_request(body, model)
    if wire == "gemini":
        if single:
            return EmbeddingRequest(model, [_gemini_text(body, "")], opt_int(body, "outputDimensionality"), True)
        requests = expect_list(body.get("requests"), "requests")
        inputs = [_gemini_text(expect_dict(r, f"requests[{i}]"), f"requests[{i}]") for i, r in enumerate(requests)]
        dims = {opt_int(r, "outputDimensionality", f"requests[{i}]") for i, r in enumerate(requests)}
        if len(dims) > 1:
            raise UnsupportedFeature("requests[].outputDimensionality", "must be the same for every request")
        return EmbeddingRequest(model, inputs, dims.pop() if dims else None)
    raise UnsupportedFeature("model", f"{wire} has no embeddings API")


def encode_request(wire: str, req: EmbeddingRequest) -> JSON:
    if wire == "openai":
        body: JSON = {"model": req.model, "input": req.inputs, "encoding_format": "float"}
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        return body
    if wire == "gemini":
        requests = []
        for text in req.inputs:
            item: JSON = {"model": f"models/{req.model}", "content": {"parts": [{"text": text}]}}
            if req.dimensions is not None:
                item["outputDimensionality"] = req.dimensions
            requests.append(item)
        return {"requests": requests}
    raise UnsupportedFeature("model", f"{wire} has no embeddings API")


def _decode_openai_request(body: JSON, model: str) -> EmbeddingRequest:
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs = list(raw)
    elif isinstance(raw, list) and raw:
        raise UnsupportedFeature("input", "token-id inputs can only go to OpenAI-compatible providers")
    else:
        raise FormatError("input", "must be a string or a non-empty array of strings")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise FormatError("encoding_format", "must be 'float' or 'base64'")
    return EmbeddingRequest(model, inputs, opt_int(body, "dimensions"), encoding=encoding)


def _gemini_text(request: JSON, prefix: str) -> str:
    at = f"{prefix}." if prefix else ""
    for name in ("taskType", "title"):
        if request.get(name) is not None:
            raise UnsupportedFeature(at + name, "changes the embedding and has no equivalent at this provider")
    content = expect_dict(request.get("content"), at + "content")
    parts = expect_list(content.get("parts"), at + "content.parts")
    texts = []
    for i, part in enumerate(parts):
        text = expect_dict(part, f"{at}content.parts[{i}]").get("text")
        if not isinstance(text, str):
            raise UnsupportedFeature(f"{at}content.parts[{i}]", "only text can be embedded at this provider")
        texts.append(text)
    return " ".join(texts)


# --- responses ----------------------------------------------------------------------


def decode_response(wire: str, body: JSON, model: str) -> EmbeddingResponse:
    if wire == "openai":
        data = sorted(expect_list(body.get("data"), "data"), key=lambda d: d.get("index", 0))
        usage = body.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return EmbeddingResponse(
            str(body.get("model") or model),
            [_floats(d.get("embedding")) for d in data],
            Usage(input_tokens=tokens) if isinstance(tokens, int) else None,
        )
    if "embeddings" in body:
        vectors = [list(e.get("values") or []) for e in expect_list(body["embeddings"], "embeddings")]
    else:
        vectors = [list(expect_dict(body.get("embedding"), "embedding").get("values") or [])]
    return EmbeddingResponse(model, vectors)  # Gemini reports no token counts for embeddings


def encode_response(wire: str, resp: EmbeddingResponse, req: EmbeddingRequest) -> JSON:
    if wire == "openai":
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, req.encoding)}
            for i, v in enumerate(resp.vectors)
        ]
        tokens = resp.usage.input_tokens if resp.usage is not None else 0  # the field is required
        return {
            "object": "list",
            "data": data,
            "model": resp.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    if req.single:
        return {"embedding": {"values": resp.vectors[0] if resp.vectors else []}}
    return {"embeddings": [{"values": v} for v in resp.vectors]}


def _floats(value: Any) -> list[float]:
    if isinstance(value, str):  # base64 little-endian float32, as OpenAI sends for encoding_format=base64
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return [float(x) for x in expect_list(value, "data[].embedding")]


def _encode_vector(values: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values
