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

from kit.local.emulator import QueueEmulator


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
            [sys.executable, "handler.py"], cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
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


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_busy_port_is_a_kit_error(emu):
    from kit.errors import KitError

    with pytest.raises(KitError, match=f"cannot listen on 127.0.0.1:{emu.port}"):
        QueueEmulator(port=emu.port).start()


STOP_WITH_CLIENTS_WAITING = """
import gc, json, threading, time, urllib.request
from kit.local.emulator import QueueEmulator

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
