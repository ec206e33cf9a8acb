"""Response shapes of the embedding worker (OpenAI's embeddings and models lists, errors).

Written for this port of runpod-workers/worker-infinity-embedding (commit 8ef2eed509bcb9f67c9d4cc9da409742b6d099e2);
not the original's code.
"""

from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    object: str = "error"
    message: str
    type: str
    param: str | None = None
    code: int


def create_error_response(message: str, err_type: str = "BadRequestError", status_code: HTTPStatus = HTTPStatus.BAD_REQUEST):
    return ErrorResponse(message=message, type=err_type, code=status_code.value)


class ModelInfo(BaseModel):
    id: str
    stats: dict[str, Any]
    object: str = "model"
    owned_by: str = "infinity"


class OpenAIModelInfo(BaseModel):
    data: list[ModelInfo] = Field(default_factory=list)
    object: str = "list"


def list_embeddings_to_response(embeddings, model: str, usage: int) -> dict[str, Any]:
    return {
        "model": model,
        "object": "list",
        "data": [{"object": "embedding", "embedding": [round(float(x), 6) for x in e], "index": i} for i, e in enumerate(embeddings)],
        "usage": {"prompt_tokens": usage, "total_tokens": usage},
    }


def to_rerank_response(scores: list[float], model: str, usage: int, documents: list[str] | None = None) -> dict[str, Any]:
    results = [{"relevance_score": score, "index": i} for i, score in enumerate(scores)]
    if documents is not None:
        for result, document in zip(results, documents):
            result["document"] = document
    return {"model": model, "results": results, "usage": {"prompt_tokens": usage, "total_tokens": usage}}
