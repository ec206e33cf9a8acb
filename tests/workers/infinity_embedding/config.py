"""Settings of the embedding worker, from the environment (and a .env file, as the original reads one).

Written for this port of runpod-workers/worker-infinity-embedding (commit 8ef2eed509bcb9f67c9d4cc9da409742b6d099e2);
not the original's code. The models and their sizes come from models.json beside this file.
"""

import json
import os
from functools import cached_property
from pathlib import Path

from dotenv import load_dotenv

MODELS_FILE = Path(__file__).parent / "models.json"


class EmbeddingServiceConfig:
    def __init__(self):
        load_dotenv()
        self.models = json.loads(MODELS_FILE.read_text(encoding="utf-8"))

    @cached_property
    def model_names(self) -> list[str]:
        names = [name for name in os.environ.get("MODEL_NAMES", ";".join(self.models)).split(";") if name]
        unknown = [name for name in names if name not in self.models]
        if unknown:
            raise ValueError(f"MODEL_NAMES names models this worker does not have: {unknown} (see models.json)")
        return names

    @cached_property
    def runpod_max_concurrency(self) -> int:
        return int(os.environ.get("RUNPOD_MAX_CONCURRENCY", 300))
