"""The embedding service the handler calls, with a tiny stand-in model.

Written for this port of runpod-workers/worker-infinity-embedding (commit 8ef2eed509bcb9f67c9d4cc9da409742b6d099e2);
not the original's code. The original runs infinity_emb's engines (a GPU-sized model download
at start); this one keeps the service's interface (route_openai_models,
route_openai_get_embeddings, infinity_rerank, config) and embeds by hashing words into a
fixed number of dimensions (models.json), so the worker starts in a second on a CPU.
"""

import asyncio
import hashlib
import re

import numpy as np
from config import EmbeddingServiceConfig
from utils import ModelInfo, OpenAIModelInfo, list_embeddings_to_response, to_rerank_response


class HashingEngine:
    def __init__(self, name: str, dimensions: int, seed: str):
        self.name, self.dimensions, self.seed = name, dimensions, seed

    def _vector(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dimensions, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            digest = hashlib.sha256(f"{self.seed}:{word}".encode()).digest()
            vector[digest[0] % self.dimensions] += 1.0 if digest[1] % 2 else -1.0
        norm = np.linalg.norm(vector)
        return vector / norm if norm else vector

    async def embed(self, texts: list[str]):
        await asyncio.sleep(0)
        return [self._vector(text) for text in texts], sum(len(text.split()) for text in texts)

    async def rerank(self, query: str, docs: list[str]):
        embedded, usage = await self.embed([query, *docs])
        return [float(embedded[0] @ doc) for doc in embedded[1:]], usage


class EmbeddingService:
    def __init__(self):
        self.config = EmbeddingServiceConfig()
        self.engines = {name: HashingEngine(name, **self.config.models[name]) for name in self.config.model_names}

    async def route_openai_models(self) -> dict:
        return OpenAIModelInfo(data=[ModelInfo(id=model_id, stats={}) for model_id in self.list_models()]).model_dump()

    def list_models(self) -> list[str]:
        return list(self.engines)

    async def route_openai_get_embeddings(self, embedding_input, model_name: str, return_as_list: bool = False):
        if not isinstance(embedding_input, list):
            embedding_input = [embedding_input]
        embeddings, usage = await self.engines[model_name].embed(embedding_input)
        response = list_embeddings_to_response(embeddings, model=model_name, usage=usage)
        return [response] if return_as_list else response

    async def infinity_rerank(self, query: str, docs: list[str], return_docs: bool, model_name: str):
        scores, usage = await self.engines[model_name].rerank(query, docs)
        return to_rerank_response(scores=scores, documents=docs if return_docs else None, model=model_name, usage=usage)
