"""RunPod's JavaScript SDK (`runpod-sdk` from npm) against the emulator and a real SDK worker.

`make js-deps` installs the SDK into .cache/js; this test does the same when
it is missing. Skipped only when Node.js itself is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import ROOT
from test_emulator import SdkWorker

from kit.serve.emulator import QueueEmulator

pytestmark = pytest.mark.process

JS_DIR = ROOT / ".cache" / "js"
SDK = JS_DIR / "node_modules" / "runpod-sdk" / "dist" / "src" / "index.js"

HANDLER = """
    import asyncio, runpod

    async def handler(job):
        job_input = job["input"]
        for i in range(job_input.get("stream", 0)):
            await asyncio.sleep(job_input["pause"])
            yield {"token": i}
        if "sleep" in job_input:
            await asyncio.sleep(job_input["sleep"])
        if "stream" not in job_input:
            yield {"echo": job_input}

    if __name__ == "__main__":
        runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})
"""


@pytest.fixture(scope="module")
def js_sdk():
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed (apt-get install nodejs npm)")
    if not SDK.is_file():
        JS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "tests" / "js" / "package.json", JS_DIR / "package.json")
        subprocess.run(
            ["npm", "install", "--prefix", str(JS_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
            check=True,
            timeout=300,
        )
    return SDK


def test_the_js_sdk_runs_polls_streams_cancels_and_reads_health(js_sdk, tmp_path):
    with QueueEmulator() as emu, SdkWorker(emu, tmp_path, HANDLER):
        result = subprocess.run(
            ["node", str(ROOT / "tests" / "js" / "drive.mjs"), js_sdk.as_uri(), f"{emu.url}/v2", "js-endpoint"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        calls = json.loads(result.stdout.splitlines()[-1])
        requests = emu.requests()
    print("requests by route:", requests)
    assert calls["run"]["status"] == "IN_QUEUE"
    assert calls["status"]["status"] == "COMPLETED" and calls["status"]["output"] == [{"echo": {"n": 1}}]
    # runSync on a job longer than its 3 s wait: /runsync answers first, then /status-sync until done.
    assert calls["runSync"]["status"] == "COMPLETED" and calls["runSync"]["output"] == [{"echo": {"sleep": 4}}]
    assert requests["status-sync"] >= 1
    assert calls["stream"] == [{"token": 0}, {"token": 1}, {"token": 2}]
    # /stream holds each request until a chunk or the end: a handful of requests, not thousands.
    assert requests["stream"] <= 8
    assert calls["cancel"]["status"] == "CANCELLED"
    assert calls["health"]["jobs"]["completed"] == 3 and "workers" in calls["health"]
