"""The queue state machine, driven directly: no sockets, no threads, a clock the test moves."""

from __future__ import annotations

import pytest

from kit import platform
from kit.serve.queue import (
    DROPPED_AFTER_PINGS,
    DROPPED_AFTER_SECONDS,
    FINAL_STATUSES,
    Event,
    Queue,
    RequestError,
    Status,
    WorkerState,
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def events():
    return []


@pytest.fixture
def queue(clock, events):
    return Queue(clock=clock, notify=lambda event, subject: events.append((event, subject)), ping_timeout=10.0)


def take_one(queue: Queue, worker_id: str = "w1") -> dict:
    (job,) = queue.take(queue.worker(worker_id), 1)
    return job


def test_a_job_goes_from_queue_to_worker_to_completed(queue, clock, events):
    job = queue.submit({"input": {"x": 1}, "webhook": "http://127.0.0.1:1/hook"})
    assert job.status is Status.IN_QUEUE and (Event.QUEUED, None) in events
    clock.advance(2)
    assert take_one(queue) == {"id": job.id, "input": {"x": 1}, "webhook": "http://127.0.0.1:1/hook"}
    clock.advance(3)
    queue.done("w1", job.id, {"output": {"y": 2}})
    assert job.state() == {
        "id": job.id,
        "status": "COMPLETED",
        "delayTime": 2000,
        "executionTime": 3000,
        "workerId": "w1",
        "output": {"y": 2},
    }
    assert (Event.ENDED, job) in events
    assert job.webhook_body()["input"] == {"x": 1} and job.webhook_body()["webhook"] == "http://127.0.0.1:1/hook"


def test_execution_timeout_ends_the_job_timed_out_and_stops_its_task(queue, clock, events):
    job = queue.submit({"input": {}, "policy": {"executionTimeout": 5000}})
    take_one(queue)
    clock.advance(4.9)
    queue.tick()
    assert job.status is Status.IN_PROGRESS
    clock.advance(0.2)
    queue.tick()
    assert job.status is Status.TIMED_OUT and "5000 ms" in job.error
    worker = queue.worker("w1")
    assert queue.take_stops(worker) == [job.id] and (Event.STOP, worker) in events
    assert not worker.jobs  # the worker is free for the next job
    queue.done("w1", job.id, {"output": "late"})  # a late result changes nothing
    assert job.status is Status.TIMED_OUT and queue.counters.timed_out == 1
    assert queue.health()["jobs"]["failed"] == 1


def test_the_endpoint_default_execution_timeout_applies_without_a_policy(clock):
    queue = Queue(clock=clock, execution_timeout=30)
    job = queue.submit({"input": {}})
    take_one(queue)
    clock.advance(31)
    queue.tick()
    assert job.status is Status.TIMED_OUT


@pytest.mark.parametrize(
    "policy, message",
    [
        ({"executionTimeout": 1000}, "between 5000 and"),
        ({"executionTimeout": "60s"}, "number of milliseconds"),
        ({"ttl": 9999}, "policy.ttl must be between 10000 and"),
        ("fast", "JSON object"),
    ],
)
def test_a_bad_policy_is_refused_and_nothing_is_queued(queue, policy, message):
    with pytest.raises(RequestError, match=message):
        queue.submit({"input": {}, "policy": policy})
    assert not queue.queue and not queue.jobs


def test_ttl_removes_a_job_queued_running_or_done_counted_from_submission(queue, clock):
    running = queue.submit({"input": {}, "policy": {"ttl": 10000}})
    done = queue.submit({"input": {}, "policy": {"ttl": 10000}})
    queued = queue.submit({"input": {}, "policy": {"ttl": 10000}})
    assert take_one(queue)["id"] == running.id
    clock.advance(9)
    assert take_one(queue)["id"] == done.id  # the TTL does not restart when a job starts
    queue.done("w1", done.id, {"output": 1})
    clock.advance(1.1)
    queue.tick()
    assert all(queue.get(job.id) is None for job in (running, done, queued))
    assert not queue.queue and queue.counters.expired == 2
    assert queue.take_stops(queue.worker("w1")) == [running.id]  # its task is stopped too


def test_status_ttl_removes_the_job_sooner(queue, clock):
    job = queue.submit({"input": {}})
    take_one(queue)
    queue.done("w1", job.id, {"output": 1})
    queue.set_ttl(job, 5.0)
    clock.advance(5.1)
    queue.tick()
    assert queue.get(job.id) is None
    with pytest.raises(RequestError):
        queue.set_ttl(queue.submit({"input": {}}), 0)


def test_results_expire_after_runpods_retention(queue, clock):
    run = queue.submit({"input": {}})
    sync = queue.submit({"input": {}}, sync=True)
    for _ in range(2):
        job = take_one(queue)
        queue.done("w1", job["id"], {"output": 1})
    clock.advance(platform.RETENTION_RUNSYNC + 1)
    queue.tick()
    assert queue.get(sync.id) is None and queue.get(run.id) is run
    clock.advance(platform.RETENTION_RUN)
    queue.tick()
    assert queue.get(run.id) is None


def test_retry_requeues_a_failed_or_timed_out_job_under_the_same_id(queue, clock):
    job = queue.submit({"input": {"n": 1}})
    take_one(queue)
    queue.done("w1", job.id, {"error": "boom"})
    queue.retry(job)
    assert job.status is Status.IN_QUEUE and "error" not in job.state() and job.state()["retries"] == 1
    assert take_one(queue, "w2")["id"] == job.id
    queue.done("w2", job.id, {"output": "ok"})
    assert job.state()["output"] == "ok" and job.state()["workerId"] == "w2"
    assert queue.health()["jobs"]["retried"] == 1
    with pytest.raises(RequestError, match="only FAILED or TIMED_OUT"):
        queue.retry(job)


def test_job_done_from_a_worker_that_does_not_hold_the_job_is_refused(queue):
    job = queue.submit({"input": {}})
    take_one(queue, "w1")
    with pytest.raises(PermissionError, match="w2 does not hold"):
        queue.done("w2", job.id, {"output": "forged"})
    with pytest.raises(PermissionError):
        queue.stream("w2", job.id, {"output": "forged"})
    with pytest.raises(LookupError):
        queue.done("w1", "no-such-job", {"output": 1})
    assert job.status is Status.IN_PROGRESS and queue.counters.foreign_results == 2


def test_malformed_worker_bodies_are_request_errors(queue):
    job = queue.submit({"input": {}})
    take_one(queue)
    for body in ([1, 2], "text", None):
        with pytest.raises(RequestError):
            queue.done("w1", job.id, body)
        with pytest.raises(RequestError):
            queue.stream("w1", job.id, body)
    assert job.status is Status.IN_PROGRESS


def test_a_worker_that_stops_pinging_fails_its_jobs_and_is_not_counted_running(queue, clock):
    job = queue.submit({"input": {}})
    take_one(queue)
    worker = queue.worker("w1")
    queue.ping(worker, {job.id})
    assert queue.health()["workers"]["running"] == 1
    clock.advance(10.5)
    queue.tick()
    assert job.status is Status.FAILED and "stopped sending pings" in job.error
    health = queue.health()["workers"]
    assert health["running"] == 0 and health["unhealthy"] == 1
    other = queue.submit({"input": {}})
    assert queue.take(worker, 1) == []  # a frozen worker gets no more jobs
    queue.ping(worker, set())  # it came back
    assert take_one(queue)["id"] == other.id


def test_a_worker_moves_through_its_states_and_says_when_it_is_ready(queue, clock, events):
    worker = queue.worker("w1")
    assert worker.state is WorkerState.STARTING and queue.health()["workers"]["initializing"] == 1
    assert queue.take(worker, 1) == []  # its first job-take request, with nothing queued
    assert worker.state is WorkerState.READY and events.count((Event.READY, worker)) == 1
    queue.take(worker, 1)
    assert events.count((Event.READY, worker)) == 1  # said once
    queue.ping(worker, set())
    clock.advance(10.5)
    queue.tick()
    assert worker.state is WorkerState.UNRESPONSIVE and worker.unresponsive == "no ping for 10 s"
    queue.ping(worker, set())
    assert worker.state is WorkerState.READY and worker.unresponsive is None
    queue.release(worker)
    assert worker.state is WorkerState.RELEASED and not queue.may_take(worker)
    queue.ping(worker, set())
    clock.advance(10.5)
    queue.tick()  # a released worker is not judged by its pings any more
    assert worker.state is WorkerState.RELEASED


def test_a_transition_asserts_the_state_it_leaves():
    from kit.serve.queue import Worker

    worker = Worker("w1", state=WorkerState.RELEASED)
    with pytest.raises(AssertionError, match="released"):
        worker.move(WorkerState.UNRESPONSIVE, WorkerState.READY)


def test_a_job_the_pings_stop_listing_without_a_result_fails(queue, clock):
    """The SDK could not serialise the result: it logs a TypeError, posts nothing and forgets the job."""
    job = queue.submit({"input": {}})
    take_one(queue)
    worker = queue.worker("w1")
    queue.ping(worker, set())  # a ping sent before the SDK registered the job: not yet a loss
    queue.ping(worker, {job.id})
    for _ in range(DROPPED_AFTER_PINGS - 1):
        queue.ping(worker, set())
    assert job.status is Status.IN_PROGRESS
    queue.ping(worker, set())
    # Enough pings, but too soon: a worker whose setup failed may still be about to exit and report it.
    assert job.status is Status.IN_PROGRESS
    clock.advance(DROPPED_AFTER_SECONDS)
    queue.ping(worker, set())
    assert job.status is Status.FAILED and "without posting a result" in job.error


def test_an_oversized_result_fails_the_job_with_the_reason(queue):
    job = queue.submit({"input": {}})
    take_one(queue)
    queue.fail_result("w1", job.id, "result over the limit")
    assert job.status is Status.FAILED and job.error == "result over the limit"


def test_cancel_of_a_running_job_signals_its_worker_and_a_worker_exit_fails_its_jobs(queue):
    running = queue.submit({"input": {}})
    held = queue.submit({"input": {}})
    take_one(queue, "w1")
    take_one(queue, "w2")
    queue.cancel(running)
    assert running.status is Status.CANCELLED and queue.take_stops(queue.worker("w1")) == [running.id]
    assert queue.worker_exited("w2", "exited with code -9") == [held.id]
    assert held.status is Status.FAILED and "w2 exited with code -9" in held.error


def test_stream_chunks_are_read_once(queue):
    job = queue.submit({"input": {}})
    take_one(queue)
    queue.stream("w1", job.id, {"output": "a"})
    queue.stream("w1", job.id, {"output": "b"})
    assert queue.read_stream(job) == [{"output": "a"}, {"output": "b"}]
    assert queue.read_stream(job) == []


def test_an_endpoint_execution_timeout_outside_runpods_range_is_refused(clock):
    with pytest.raises(ValueError, match="between 5 s and 7 days"):
        Queue(clock=clock, execution_timeout=1)


def test_a_timed_out_job_can_be_retried_and_its_old_workers_late_result_is_refused(queue, clock):
    job = queue.submit({"input": {}, "policy": {"executionTimeout": 5000}})
    take_one(queue, "w1")
    clock.advance(6)
    queue.tick()
    queue.retry(job)
    assert take_one(queue, "w2")["id"] == job.id
    with pytest.raises(PermissionError):
        queue.done("w1", job.id, {"output": "stale"})  # the first run, finishing late
    queue.done("w2", job.id, {"output": "fresh"})
    assert job.state()["output"] == "fresh" and queue.counters.retried == 1


def test_final_statuses_match_the_strings_clients_read():
    assert {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"} == {s for s in map(str, Status) if s in FINAL_STATUSES}
    assert "IN_PROGRESS" not in FINAL_STATUSES and "TIMED_OUT" in FINAL_STATUSES
