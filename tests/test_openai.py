"""The OpenAI-compatible routes of `kit serve`, driven with the `openai` Python client.

The worker is notebooks/openai_chat.ipynb, which follows RunPod's `openai_route`
contract: it streams ready SSE strings for chat and chunk dicts for completions,
so both shapes a real worker may yield are covered.
"""

from __future__ import annotations

import pytest
from conftest import NOTEBOOKS, run_kit
from test_serve import kit_serve

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def client():
    with kit_serve(NOTEBOOKS / "openai_chat.ipynb") as served:
        yield openai.OpenAI(base_url=f"{served.url}/v2/my-endpoint/openai/v1", api_key="unused", max_retries=0)


def test_models_list(client):
    assert [model.id for model in client.models.list()] == ["kit-echo-1"]


def test_chat_completion(client):
    reply = client.chat.completions.create(model="kit-echo-1", messages=[{"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content == "You said: hello there"
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == 4


def test_chat_completion_streams_the_workers_sse_strings(client):
    stream = client.chat.completions.create(model="kit-echo-1", messages=[{"role": "user", "content": "one two"}], stream=True)
    chunks = list(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "You said: one two"
    assert len(chunks) == 5 and chunks[-1].choices[0].finish_reason == "stop"


def test_completion_streams_the_workers_chunk_dicts(client):
    stream = client.completions.create(model="kit-echo-1", prompt="a b c", max_tokens=3, stream=True)
    assert [chunk.choices[0].text for chunk in stream] == ["You", " said:", " a", ""]


def test_completion_without_streaming(client):
    reply = client.completions.create(model="kit-echo-1", prompt="hi")
    assert reply.choices[0].text == "You said: hi"


def test_a_worker_error_reaches_the_client_as_an_api_error(client):
    with pytest.raises(openai.BadRequestError, match="messages must be a list"):
        client.chat.completions.create(model="kit-echo-1", messages="not a list")


def test_the_notebook_passes_kit_test():
    result = run_kit("test", NOTEBOOKS / "openai_chat.ipynb")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3/3 test cells passed" in result.stdout
