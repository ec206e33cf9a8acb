"""The queue emulator: RunPod's endpoint API for clients, the job-take protocol for workers.

Client-side checks use the SDK's own client (`runpod.Endpoint`); worker-side
checks speak the protocol as `runpod/serverless/modules/rp_job.py` does, and
one test runs a real SDK worker process against the emulator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests
import runpod

from kit.serve.emulator import HEADER_TIMEOUT, QueueEmulator

pytestmark = pytest.mark.process  # every test here starts the emulator's server


@pytest.fixture
def emu():
    with QueueEmulator(long_poll=1.0, runsync_wait=1.0) as emulator:
        yield emulator


@pytest.fixture
def endpoint(emu, monkeypatch):
    monkeypatch.setattr(runpod, "api_key", "any-key")
    monkeypatch.setattr(runpod, "endpoint_url_base", emu.url + "/v2")
    return runpod.Endpoint("my-endpoint")


class FakeWorker:
    """Talks to the worker routes the way the SDK does (URL templates, auth header, raw JSON posts)."""

    def __init__(self, emu: QueueEmulator, worker_id: str):
        self.env = emu.worker_env(worker_id)
        self.id = worker_id
        self.session = requests.Session()
        self.session.headers["Authorization"] = self.env["RUNPOD_AI_API_KEY"]

    def take(self, batch_size: int = 1) -> requests.Response:
        url = self.env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", self.id)
        if batch_size > 1:
            url = url.replace("/job-take/", "/job-take-batch/") + f"&batch_size={batch_size}"
        return self.session.get(url + "&job_in_progress=0", timeout=30)

    def stop_poll(self) -> requests.Response:
        url = self.env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", self.id).replace("/job-take/", "/job-stop/")
        return self.session.get(url, timeout=30)

    def done(self, job_id: str, result: dict, stream: bool = False) -> requests.Response:
        url = self.env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$RUNPOD_POD_ID", self.id).replace("$ID", job_id)
        return self.session.post(
            url + f"&isStream={'true' if stream else 'false'}",
            data=json.dumps(result),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=10,
        )

    def stream(self, job_id: str, chunk) -> requests.Response:
        url = self.env["RUNPOD_WEBHOOK_POST_STREAM"].replace("$RUNPOD_POD_ID", self.id).replace("$ID", job_id)
        return self.session.post(url + "&isStream=false", data=json.dumps({"output": chunk}), timeout=10)


def test_worker_env_points_the_sdk_at_the_emulator(emu):
    env = emu.worker_env("worker-7")
    assert env["RUNPOD_POD_ID"] == "worker-7"
    assert env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] == "true" and env["RUNPOD_SKIP_GPU_CHECK"] == "true"
    for name in ("RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_WEBHOOK_POST_OUTPUT", "RUNPOD_WEBHOOK_POST_STREAM", "RUNPOD_WEBHOOK_PING"):
        assert env[name].startswith(emu.url + "/v2/") and "?" in env[name], name
    assert "/job-take/$ID?" in env["RUNPOD_WEBHOOK_GET_JOB"]


def test_take_hands_out_a_submitted_job_and_done_completes_it(emu):
    worker = FakeWorker(emu, "w1")
    job_id = emu.submit({"input": {"x": 1}, "webhook": "https://example.invalid/hook"})
    response = worker.take()
    assert response.status_code == 200
    job = response.json()
    assert job == {"id": job_id, "input": {"x": 1}, "webhook": "https://example.invalid/hook"}
    assert emu.status(job_id)["status"] == "IN_PROGRESS"
    assert worker.done(job_id, {"output": {"y": 2}}).status_code == 200
    state = emu.wait(job_id, timeout=5)
    assert state["status"] == "COMPLETED" and state["output"] == {"y": 2} and state["workerId"] == "w1"
    assert state["delayTime"] >= 0 and state["executionTime"] >= 0


def test_a_result_reaches_the_client_as_the_worker_posted_its_json(emu):
    """The output's text is passed through (not parsed and encoded again); other bodies are re-encoded."""
    worker = FakeWorker(emu, "w1")
    url = worker.env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$RUNPOD_POD_ID", "w1")
    posted = {
        "kept": b'{"output": {"v": [1.50, 2e3], "name": "caf\\u00e9 \xe2\x98\x95"}}',
        "with_stop": b'{"output": {"v": 1.50}, "stopPod": true}',
    }
    for name, body in posted.items():
        job_id = emu.submit({"input": {"case": name}})
        assert worker.take().json()["id"] == job_id
        url_done = url.replace("$ID", job_id) + "&isStream=false"
        assert worker.session.post(url_done, data=body, timeout=10).status_code == 200
        for route in (f"/v2/ep/status/{job_id}", f"/v2/ep/status-sync/{job_id}"):
            response = requests.get(emu.url + route, timeout=10)
            assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
            state = response.json()
            assert state["status"] == "COMPLETED" and state["id"] == job_id and state["workerId"] == "w1"
            assert state["output"]["v"] in ([1.5, 2000.0], 1.5)
            if name == "kept":
                assert b'"output": {"v": [1.50, 2e3]' in response.content and state["output"]["name"] == "caf\u00e9 \u2615"
            else:
                assert b"1.50" not in response.content
    synced = requests.post(f"{emu.url}/v2/ep/runsync", json={"input": {}}, timeout=10)
    assert synced.json()["status"] == "IN_QUEUE"


def test_empty_queue_holds_the_take_open_before_answering_204(emu):
    worker = FakeWorker(emu, "w1")
    started = time.monotonic()
    response = worker.take()
    assert response.status_code == 204
    assert time.monotonic() - started >= 0.9  # held for the long-poll, never an immediate 204


def test_a_held_take_receives_a_job_submitted_while_it_waits(emu):
    import threading

    worker = FakeWorker(emu, "w1")
    answers = []
    taker = threading.Thread(target=lambda: answers.append(worker.take()))
    taker.start()
    time.sleep(0.2)
    job_id = emu.submit({"input": "late"})
    taker.join(10)
    assert answers[0].status_code == 200 and answers[0].json()["id"] == job_id


def test_batch_take_returns_a_list_of_up_to_batch_size_jobs(emu):
    worker = FakeWorker(emu, "w1")
    ids = [emu.submit({"input": i}) for i in range(5)]
    first = worker.take(batch_size=3).json()
    second = worker.take(batch_size=3).json()
    assert [job["id"] for job in first] == ids[:3]
    assert [job["id"] for job in second] == ids[3:]


def test_worker_routes_reject_a_wrong_key(emu):
    worker = FakeWorker(emu, "w1")
    worker.session.headers["Authorization"] = "wrong"
    assert worker.take().status_code == 401


def test_run_status_output_through_the_runpod_client(emu, endpoint):
    worker = FakeWorker(emu, "w1")
    job = endpoint.run({"prompt": "hi"})
    assert job.status() == "IN_QUEUE"
    taken = worker.take().json()
    assert taken["input"] == {"prompt": "hi"}
    worker.done(taken["id"], {"output": "hello"})
    assert job.output(timeout=5) == "hello"
    assert job.status() == "COMPLETED"


def test_runsync_returns_the_current_status_when_the_job_outlasts_the_wait(emu):
    response = requests.post(f"{emu.url}/v2/ep/runsync", json={"input": {}}, timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "IN_QUEUE" and "output" not in response.json()


def test_error_results_make_the_job_failed(emu, endpoint):
    worker = FakeWorker(emu, "w1")
    raised = emu.submit({"input": 1})
    returned = emu.submit({"input": 2})
    worker.take()
    worker.take()
    worker.done(raised, {"error": json.dumps({"error_type": "<class 'ValueError'>", "error_message": "bad"})})
    worker.done(returned, {"output": {"partial": 1}, "error": "model refused"})
    assert emu.wait(raised, 5)["status"] == "FAILED"
    state = emu.wait(returned, 5)
    assert state["status"] == "FAILED" and state["error"] == "model refused" and state["output"] == {"partial": 1}
    assert endpoint.health()["jobs"]["failed"] == 2


def test_stream_chunks_are_fetched_once_each_then_the_aggregate_output(emu, endpoint):
    worker = FakeWorker(emu, "w1")
    job = endpoint.run({"n": 3})
    job_id = worker.take().json()["id"]
    worker.stream(job_id, "a")
    worker.stream(job_id, "b")
    first = requests.get(f"{emu.url}/v2/ep/stream/{job_id}", timeout=5).json()
    assert first["status"] == "IN_PROGRESS" and first["stream"] == [{"output": "a"}, {"output": "b"}]
    worker.stream(job_id, "c")
    worker.done(job_id, {"output": ["a", "b", "c"]}, stream=True)
    assert list(job.stream()) == ["c"]
    assert job.output() == ["a", "b", "c"]


def test_stream_of_a_failed_job_says_why_as_status_does(emu):
    worker = FakeWorker(emu, "w1")
    job_id = emu.submit({"input": {}})
    worker.take()
    worker.stream(job_id, "a")
    error = "handler: boom\ntraceback: ValueError: boom"
    worker.done(job_id, {"error": error}, stream=True)
    answer = requests.get(f"{emu.url}/v2/ep/stream/{job_id}", timeout=5).json()
    assert answer == {"id": job_id, "status": "FAILED", "stream": [{"output": "a"}], "error": error}
    assert answer["error"] == emu.status(job_id)["error"]
    ok = emu.submit({"input": {}})
    worker.take()
    worker.done(ok, {"output": []}, stream=True)
    assert "error" not in requests.get(f"{emu.url}/v2/ep/stream/{ok}", timeout=5).json()


def test_cancel_a_queued_job_and_a_running_job_signals_its_worker(emu, endpoint):
    worker = FakeWorker(emu, "w1")
    running = endpoint.run({"slow": True})
    queued = endpoint.run({"slow": True})
    assert worker.take().json()["id"] == running.job_id
    assert running.cancel()["status"] == "CANCELLED"
    assert worker.stop_poll().json() == {"jobsToStop": [running.job_id]}
    assert queued.cancel()["status"] == "CANCELLED"
    assert worker.take().status_code == 204  # the cancelled queued job is never handed out
    assert running.status() == "CANCELLED"
    assert worker.done(running.job_id, {"output": "too late"}).status_code == 200
    assert emu.status(running.job_id)["status"] == "CANCELLED"


def test_health_and_purge_queue(emu, endpoint):
    FakeWorker(emu, "w1").take()  # the worker has asked for work: it counts as ready
    for i in range(3):
        endpoint.run({"i": i})
    health = endpoint.health()
    assert health["jobs"]["inQueue"] == 3
    assert health["workers"]["ready"] == 1 and health["workers"]["running"] == 0
    assert endpoint.purge_queue() == {"removed": 3, "status": "completed"}
    assert endpoint.health()["jobs"]["inQueue"] == 0


def test_unknown_job_is_404_and_bad_body_is_400(emu):
    assert requests.get(f"{emu.url}/v2/ep/status/nope", timeout=5).status_code == 404
    assert requests.post(f"{emu.url}/v2/ep/run", json={"prompt": "no input key"}, timeout=5).status_code == 400


def test_api_key_is_required_when_set(monkeypatch):
    with QueueEmulator(api_key="s3cret") as emu:
        url = f"{emu.url}/v2/ep/run"
        assert requests.post(url, json={"input": {}}, timeout=5).status_code == 401
        ok = requests.post(url, json={"input": {}}, headers={"Authorization": "Bearer s3cret"}, timeout=5)
        assert ok.status_code == 200 and ok.json()["status"] == "IN_QUEUE"
        monkeypatch.setattr(runpod, "endpoint_url_base", emu.url + "/v2")
        with pytest.raises(RuntimeError, match="401"):
            runpod.Endpoint("ep", api_key="wrong").health()


def test_worker_exit_fails_its_jobs_instead_of_losing_them(emu):
    worker = FakeWorker(emu, "w1")
    job_id = emu.submit({"input": {}})
    worker.take()
    assert emu.worker_exited("w1", "exited with code -9") == [job_id]
    state = emu.status(job_id)
    assert state["status"] == "FAILED" and "w1 exited with code -9" in state["error"]


@pytest.mark.process
def test_a_real_sdk_worker_process_runs_jobs_from_the_emulator(tmp_path):
    (tmp_path / "handler.py").write_text(
        textwrap.dedent(
            """
            import runpod

            def handler(job):
                if job["input"].get("fail"):
                    raise ValueError("asked to fail")
                return {"echo": job["input"]}

            if __name__ == "__main__":
                runpod.serverless.start({"handler": handler})
            """
        )
    )
    with QueueEmulator() as emu:
        env = {**os.environ, **emu.worker_env("real-1"), "RUNPOD_LOG_LEVEL": "WARN"}
        worker = subprocess.Popen(
            [sys.executable, "handler.py"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            ok = emu.submit({"input": {"n": 1}})
            bad = emu.submit({"input": {"fail": True}})
            assert emu.wait(ok, 60) == {**emu.status(ok), "status": "COMPLETED", "output": {"echo": {"n": 1}}}
            failed = emu.wait(bad, 60)
            assert failed["status"] == "FAILED" and "asked to fail" in failed["error"]
            assert emu.counters.duplicate_results == 0
        finally:
            worker.send_signal(signal.SIGTERM)
            emu.release_worker("real-1")
            try:
                assert worker.wait(30) == 0  # the SDK drains and exits cleanly
            finally:
                _kill_group(worker.pid)  # the SDK's heartbeat process, if anything is left


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def test_a_busy_port_is_a_kit_error(emu):
    from kit.errors import KitError

    with pytest.raises(KitError, match=f"cannot listen on 127.0.0.1:{emu.port}"):
        QueueEmulator(port=emu.port).start()


# ---------------------------------------------------------------- the full API
class SdkWorker:
    """A real `runpod` worker process running `handler_source` against the emulator."""

    def __init__(self, emu: QueueEmulator, directory, handler_source: str, worker_id: str = "real-1"):
        (directory / "handler.py").write_text(textwrap.dedent(handler_source))
        self.emu, self.id, self.log = emu, worker_id, directory / f"{worker_id}.log"
        env = {**os.environ, **emu.worker_env(worker_id), "RUNPOD_LOG_LEVEL": "INFO"}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "handler.py"],
                cwd=directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def __enter__(self) -> SdkWorker:
        return self

    def __exit__(self, *exc) -> None:
        _kill_group(self.process.pid, signal.SIGCONT)
        _kill_group(self.process.pid)
        self.process.wait(10)
        self.emu.release_worker(self.id)


SLEEPY_HANDLER = """
    import asyncio, os, runpod
    from pathlib import Path

    async def handler(job):
        job_input = job["input"]
        if "sleep" in job_input:
            try:
                await asyncio.sleep(job_input["sleep"])
            except asyncio.CancelledError:
                Path(job_input["stopped_file"]).write_text(job["id"])
                raise
        if "result" in job_input:
            return {"set": {1, 2}} if job_input["result"] == "set" else job_input["result"]
        if job_input.get("fail"):
            raise ValueError("asked to fail")
        return {"echo": job_input}

    if __name__ == "__main__":
        runpod.serverless.start({"handler": handler})
"""


def test_execution_timeout_ends_timed_out_stops_the_task_and_the_worker_keeps_serving(tmp_path):
    stopped = tmp_path / "stopped"
    with QueueEmulator() as emu, SdkWorker(emu, tmp_path, SLEEPY_HANDLER):
        slow = requests.post(
            f"{emu.url}/v2/ep/run",
            timeout=10,
            json={"input": {"sleep": 60, "stopped_file": str(stopped)}, "policy": {"executionTimeout": 5000}},
        ).json()["id"]
        state = emu.wait(slow, 30)
        assert state["status"] == "TIMED_OUT" and "policy.executionTimeout" in state["error"]
        after = emu.submit({"input": {"n": 2}})
        assert emu.wait(after, 30)["output"] == {"echo": {"n": 2}}  # the same worker, still serving
        deadline = time.monotonic() + 10
        while not stopped.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stopped.read_text() == slow  # cancelled through the SDK's own job-stop
        assert emu.health()["jobs"]["failed"] == 1


def test_a_result_the_sdk_cannot_serialise_fails_the_job_naming_the_cause(tmp_path):
    with QueueEmulator() as emu, SdkWorker(emu, tmp_path, SLEEPY_HANDLER):
        job = emu.submit({"input": {"result": "set"}})
        state = emu.wait(job, 30)
        assert state["status"] == "FAILED" and "without posting a result" in state["error"]
        assert "not JSON serializable" in (tmp_path / "real-1.log").read_text()  # what the SDK logged


def test_a_frozen_worker_fails_its_job_and_is_not_counted_running(tmp_path):
    with QueueEmulator(ping_timeout=4.0) as emu, SdkWorker(emu, tmp_path, SLEEPY_HANDLER) as worker:
        first = emu.submit({"input": {}})
        assert emu.wait(first, 30)["status"] == "COMPLETED"
        job = emu.submit({"input": {"sleep": 30, "stopped_file": str(tmp_path / "x")}})
        deadline = time.monotonic() + 10
        while emu.health()["workers"]["running"] != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        _kill_group(worker.process.pid, signal.SIGSTOP)  # the worker and its heartbeat process
        state = emu.wait(job, 20)
        assert state["status"] == "FAILED" and "stopped sending pings" in state["error"]
        health = emu.health()["workers"]
        assert health["running"] == 0 and health["unhealthy"] == 1


def test_an_oversized_result_is_413_and_fails_the_job(emu):
    worker = FakeWorker(emu, "w1")
    job_id = emu.submit({"input": {}})
    worker.take()
    response = worker.done(job_id, {"output": "x" * (65 * 1024**2)})
    assert response.status_code == 413 and response.json()["error"].startswith("result is over")
    state = emu.status(job_id)
    assert state["status"] == "FAILED" and "64 MiB body limit" in state["error"]


def test_job_done_from_a_worker_that_does_not_hold_the_job_is_refused(emu):
    holder, other = FakeWorker(emu, "w1"), FakeWorker(emu, "w2")
    job_id = emu.submit({"input": {}})
    holder.take()
    response = other.done(job_id, {"output": "forged"})
    assert response.status_code == 403 and "w2 does not hold" in response.json()["error"]
    assert emu.status(job_id)["status"] == "IN_PROGRESS"


def test_malformed_worker_bodies_are_400(emu):
    worker = FakeWorker(emu, "w1")
    job_id = emu.submit({"input": {}})
    worker.take()
    url = worker.env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$RUNPOD_POD_ID", "w1").replace("$ID", job_id)
    for body in ("[1, 2]", "not json", "[" * 100000 + "]" * 100000):
        response = worker.session.post(url, data=body, timeout=10)
        assert response.status_code == 400, body[:10]
        assert "error" in response.json()
    bad_batch = worker.env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", "w1").replace("/job-take/", "/job-take-batch/")
    assert worker.session.get(bad_batch + "&batch_size=abc", timeout=10).status_code == 400


class Receiver:
    """A local webhook receiver: records each POSTed body; can be started late."""

    def __init__(self, port: int = 0):
        import http.server

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, timeout: float = 20) -> list:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received


def test_webhooks_post_the_cloud_envelope_for_completed_and_failed_jobs(emu):
    receiver = Receiver()
    try:
        worker = FakeWorker(emu, "w1")
        ok = requests.post(f"{emu.url}/v2/ep/run", json={"input": {"n": 1}, "webhook": receiver.url}, timeout=5).json()["id"]
        bad = emu.submit({"input": {"n": 2}, "webhook": receiver.url})
        worker.take()
        worker.take()
        worker.done(ok, {"output": {"y": 1}})
        worker.done(bad, {"error": "boom"})
        bodies = {body["id"]: body for body in receiver.wait(2)}
        assert bodies[ok] == {
            **{k: bodies[ok][k] for k in ("delayTime", "executionTime")},
            "id": ok,
            "status": "COMPLETED",
            "input": {"n": 1},
            "output": {"y": 1},
            "webhook": receiver.url,
            "workerId": "w1",
        }
        assert bodies[bad]["status"] == "FAILED" and bodies[bad]["error"] == "boom" and bodies[bad]["input"] == {"n": 2}
    finally:
        receiver.close()


def test_a_webhook_receiver_that_is_down_gets_the_retry_and_never_blocks_the_job():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with QueueEmulator(long_poll=1.0, webhook_retry_delay=1.0) as emu:
        worker = FakeWorker(emu, "w1")
        job_id = emu.submit({"input": {}, "webhook": f"http://127.0.0.1:{port}/hook"})
        worker.take()
        worker.done(job_id, {"output": "done"})
        assert emu.status(job_id)["status"] == "COMPLETED"  # final at once, the receiver being down
        deadline = time.monotonic() + 5
        while not emu.webhooks and time.monotonic() < deadline:
            time.sleep(0.05)
        assert emu.webhooks[0]["delivered"] is False
        receiver = Receiver(port)  # up before the first retry
        try:
            assert receiver.wait(1)[0]["id"] == job_id
            # The emulator records the attempt once the receiver's answer is back, just after the
            # receiver saw the request: wait (bounded) for the record.
            deadline = time.monotonic() + 5
            while len(emu.webhooks) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert [w["attempt"] for w in emu.webhooks] == [1, 2] and emu.webhooks[-1]["delivered"]
        finally:
            receiver.close()


def test_status_ttl_removes_a_queued_job_and_a_finished_one():
    with QueueEmulator(long_poll=1.0) as emu:
        too_short = requests.post(f"{emu.url}/v2/ep/run", json={"input": {}, "policy": {"ttl": 500}}, timeout=5)
        assert too_short.status_code == 400 and "policy.ttl must be between 10000" in too_short.json()["error"]
        queued = requests.post(f"{emu.url}/v2/ep/run", json={"input": {}}, timeout=5).json()["id"]
        assert requests.get(f"{emu.url}/v2/ep/status/{queued}?ttl=500", timeout=5).json()["status"] == "IN_QUEUE"
        worker = FakeWorker(emu, "w1")
        done = emu.submit({"input": {}})
        deadline = time.monotonic() + 5
        while requests.get(f"{emu.url}/v2/ep/status/{queued}", timeout=5).status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert requests.get(f"{emu.url}/v2/ep/status/{queued}", timeout=5).json() == {"error": "request does not exist"}
        assert worker.take().json()["id"] == done  # the expired job was never handed out
        worker.done(done, {"output": 1})
        assert requests.get(f"{emu.url}/v2/ep/status/{done}?ttl=300", timeout=5).json()["status"] == "COMPLETED"
        deadline = time.monotonic() + 5
        while requests.get(f"{emu.url}/v2/ep/status/{done}", timeout=5).status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert requests.get(f"{emu.url}/v2/ep/status/{done}", timeout=5).status_code == 404


def test_retry_requeues_a_failed_job_under_its_id(emu, endpoint):
    worker = FakeWorker(emu, "w1")
    job = endpoint.run({"n": 1})
    worker.take()
    worker.done(job.job_id, {"error": "flaky"})
    assert job.status() == "FAILED"
    retried = requests.post(f"{emu.url}/v2/ep/retry/{job.job_id}", timeout=5)
    assert retried.json() == {"id": job.job_id, "status": "IN_QUEUE"}
    assert worker.take().json()["id"] == job.job_id
    worker.done(job.job_id, {"output": "fine"})
    assert job.output(timeout=5) == "fine" and endpoint.health()["jobs"]["retried"] == 1
    again = requests.post(f"{emu.url}/v2/ep/retry/{job.job_id}", timeout=5)
    assert again.status_code == 400 and "only FAILED or TIMED_OUT" in again.json()["error"]


def test_status_sync_waits_for_the_end(emu):
    import threading

    worker = FakeWorker(emu, "w1")
    job_id = emu.submit({"input": {}})
    worker.take()
    threading.Timer(0.5, lambda: worker.done(job_id, {"output": "late"})).start()
    state = requests.get(f"{emu.url}/v2/ep/status-sync/{job_id}?wait=5000", timeout=10).json()
    assert state["status"] == "COMPLETED" and state["output"] == "late"


def test_stream_holds_the_request_until_a_chunk_arrives(emu):
    import threading

    worker = FakeWorker(emu, "w1")
    job_id = emu.submit({"input": {}})
    worker.take()
    threading.Timer(0.5, lambda: worker.stream(job_id, "a")).start()
    answer = requests.get(f"{emu.url}/v2/ep/stream/{job_id}", timeout=10).json()
    assert answer["stream"] == [{"output": "a"}]
    assert emu.requests()["stream"] == 1  # one held request, not a busy loop


@pytest.mark.parametrize("wait", ["abc", "999", "300001", "1.5e3"])
def test_a_bad_wait_is_400_and_queues_nothing(emu, wait):
    response = requests.post(f"{emu.url}/v2/ep/runsync?wait={wait}", json={"input": {}}, timeout=5)
    assert response.status_code == 400
    assert response.json() == {"error": "wait is invalid; must be between 1000 and 300000"}
    assert emu.health()["jobs"]["inQueue"] == 0 and emu.counters.submitted == 0


def test_payload_limits_are_runpods(emu):
    big = {"input": {"blob": "x" * (10 * 1000**2 + 1)}}
    response = requests.post(f"{emu.url}/v2/ep/run", json=big, timeout=30)
    assert response.status_code == 400 and "RunPod accepts at most 10 MB" in response.json()["error"]
    accepted = requests.post(f"{emu.url}/v2/ep/runsync?wait=1000", json=big, timeout=30)
    assert accepted.status_code == 200  # /runsync takes up to 20 MB
    bigger = {"input": {"blob": "x" * (20 * 1000**2 + 1)}}
    response = requests.post(f"{emu.url}/v2/ep/runsync", json=bigger, timeout=30)
    assert response.status_code == 400 and "at most 20 MB" in response.json()["error"]
    assert emu.counters.submitted == 1


def test_every_error_is_json_unknown_routes_and_deep_bodies_included(emu):
    unknown = requests.get(f"{emu.url}/v2/ep/no-such-route", timeout=5)
    assert unknown.status_code == 404 and unknown.json() == {"error": "no route GET /v2/ep/no-such-route"}
    assert requests.get(f"{emu.url}/", timeout=5).json()["error"]
    wrong_method = requests.get(f"{emu.url}/v2/ep/run", timeout=5)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    deep = requests.post(f"{emu.url}/v2/ep/run", data="[" * 100000 + "]" * 100000, timeout=10)
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]


@pytest.mark.parametrize("sent", [b"GET /v2/ep/hea", b"POST /v2/ep/run HTTP/1.1\r\nHost: x\r\n"], ids=["half a line", "half the headers"])
def test_a_connection_that_never_finishes_its_request_head_is_closed_within_the_header_timeout(sent):
    import socket

    def hung_up_after(connection, limit: float = 10.0) -> float:
        started = time.monotonic()
        connection.settimeout(limit)
        assert connection.recv(1024) == b""  # the server hung up
        return time.monotonic() - started

    with QueueEmulator(header_timeout=1.0) as emu:
        with socket.create_connection(("127.0.0.1", emu.port)) as slow:
            slow.sendall(sent)  # and never the rest
            assert hung_up_after(slow) < 1.0 + 1.0
        with socket.create_connection(("127.0.0.1", emu.port)) as kept:  # a kept-alive connection, after a request
            kept.sendall(b"GET /v2/ep/health HTTP/1.1\r\nHost: x\r\n\r\n")
            kept.settimeout(5)
            assert kept.recv(4096).startswith(b"HTTP/1.1 200")
            kept.sendall(sent)
            assert hung_up_after(kept) < 1.0 + 1.0
    assert HEADER_TIMEOUT <= 30  # `kit serve`'s default: a half-sent request is not held for long


def test_a_body_sent_too_slowly_is_408():
    import socket

    with QueueEmulator(idle_timeout=1.0) as emu, socket.create_connection(("127.0.0.1", emu.port)) as slow:
        slow.sendall(b'POST /v2/ep/run HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"input"')
        slow.settimeout(15)
        answer = slow.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in answer
        assert emu.counters.submitted == 0


def test_blocking_methods_work_from_the_on_job_end_callback():
    seen = []
    with QueueEmulator(long_poll=1.0, on_job_end=lambda state: seen.append(emu.status(state["id"]))) as emu:
        worker = FakeWorker(emu, "w1")
        job_id = emu.submit({"input": {}})
        worker.take()
        worker.done(job_id, {"output": 1})
        assert emu.wait(job_id, 5)["status"] == "COMPLETED"
        assert seen[0]["status"] == "COMPLETED"


def test_an_empty_api_key_is_refused():
    from kit.errors import KitError

    with pytest.raises(KitError, match="--api-key is empty"):
        QueueEmulator(api_key="")


def test_the_asyncio_client_runs_streams_and_cancels(emu, monkeypatch):
    import asyncio

    import aiohttp
    from runpod.endpoint import AsyncioEndpoint

    worker = FakeWorker(emu, "w1")

    async def client():
        async with aiohttp.ClientSession() as session:
            endpoint = AsyncioEndpoint("ep", session, api_key="k")
            job = await endpoint.run({"n": 1})
            assert await job.status() == "IN_QUEUE"
            taken = await asyncio.to_thread(lambda: worker.take().json())
            await asyncio.to_thread(worker.stream, taken["id"], "tok")
            await asyncio.to_thread(worker.done, taken["id"], {"output": ["tok"]}, True)
            assert [chunk async for chunk in job.stream()] == ["tok"]
            assert await job.output(timeout=5) == ["tok"]
            queued = await endpoint.run({"n": 2})
            assert (await queued.cancel())["status"] == "CANCELLED"
            return await endpoint.health()

    monkeypatch.setattr(runpod, "endpoint_url_base", emu.url + "/v2")
    health = asyncio.run(client())
    assert health["jobs"]["completed"] == 1


def test_the_curl_lines_of_runpods_docs_work_with_either_authorization_style():
    """RunPod's operation reference sends `authorization: $RUNPOD_API_KEY` (no Bearer); its SDKs send Bearer."""
    import shutil

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    with QueueEmulator(api_key="s3cret", long_poll=1.0) as emu:

        def curl(*args):
            result = subprocess.run(["curl", "-s", "-w", "\\n%{http_code}", *args], capture_output=True, text=True, timeout=30)
            body, code = result.stdout.rsplit("\n", 1)
            return int(code), json.loads(body)

        code, job = curl(
            "--request",
            "POST",
            "--url",
            f"{emu.url}/v2/ep/run",
            "-H",
            "accept: application/json",
            "-H",
            "authorization: s3cret",
            "-H",
            "content-type: application/json",
            "-d",
            '{"input": {"prompt": "Hello World"}}',
        )
        assert code == 200 and job["status"] == "IN_QUEUE"
        code, state = curl(f"{emu.url}/v2/ep/status/{job['id']}", "-H", "Authorization: Bearer s3cret")
        assert code == 200 and state["id"] == job["id"]
        code, refused = curl(f"{emu.url}/v2/ep/health", "-H", "authorization: wrong")
        assert code == 401 and refused == {"error": "Unauthorized"}


# --- runpod 2.0's prestart failure, as the SDK itself builds it ------------------------------


@pytest.mark.skipif(
    not hasattr(runpod.serverless, "register_prestart_hook"),
    reason=f"runpod {runpod.__version__} has no prestart-failure path (runpod 2.0 has; make test-rp2 runs this)",
)
def test_a_prestart_failure_from_the_sdk_is_read_as_the_workers_setup_error():
    from runpod.serverless.modules.rp_prestart import build_prestart_failed_payload

    from kit.platform import prestart_failure

    try:
        raise RuntimeError("model file missing")
    except RuntimeError as error:
        payload = build_prestart_failed_payload(error)
    assert prestart_failure(json.dumps(payload)) == "RuntimeError: model file missing"


def test_a_handler_exception_from_the_sdk_is_not_a_setup_error():
    import asyncio

    from runpod.serverless.modules.rp_job import run_job

    from kit.platform import prestart_failure

    def handler(job):
        raise RuntimeError("bad input")

    result = asyncio.run(run_job(handler, {"id": "j1", "input": {}}))
    assert "bad input" in result["error"]
    assert prestart_failure(result["error"]) is None
    assert prestart_failure("a plain error") is None and prestart_failure({"event": "prestart_failed"}) is None


STOP_WITH_CLIENTS_WAITING = """
import gc, json, threading, time, urllib.request
from kit.serve.emulator import QueueEmulator

emulator = QueueEmulator("127.0.0.1", 0, None).start()


def runsync():
    request = urllib.request.Request(f"{emulator.url}/v2/local/runsync", data=b'{"input": {}}', headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=30).read()
    except Exception:
        pass


clients = [threading.Thread(target=runsync) for _ in range(2)]
for client in clients:
    client.start()
time.sleep(1)
emulator.stop()
for client in clients:
    client.join(10)
gc.collect()
print("stopped")
"""


@pytest.mark.process
def test_stopping_with_clients_waiting_on_runsync_leaves_no_pending_task(tmp_path):
    # `kit serve` printed "Task was destroyed but it is pending!" after "stopped" at the end of a run.
    result = subprocess.run([sys.executable, "-c", STOP_WITH_CLIENTS_WAITING], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped"
    assert "Task was destroyed" not in result.stderr, result.stderr
