"""`app_guard`'s bounds with their state set up directly (no model needed to fill a queue, no clock to wait on):
the model's queue per session, per client and in all, and the upload quota over its window."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app_guard import RequestGuard, Refused, UploadQuota

MB = 2**20


def waiting_run(session: str, host: str):
    return SimpleNamespace(session_hash=session, request=SimpleNamespace(client=SimpleNamespace(host=host)))


def guard_with_queue(waiting: list) -> RequestGuard:
    queue = SimpleNamespace(event_queue_per_concurrency_id={"gpu": SimpleNamespace(queue=waiting)})
    return RequestGuard(None, SimpleNamespace(_queue=queue), max_upload_bytes=MB, upload_quota=UploadQuota(MB, MB, 60),
                        max_queued_runs=4, max_queued_runs_per_client=2)


def request_from(host: str):
    return SimpleNamespace(client=SimpleNamespace(host=host))


def refusal(check) -> tuple[int, str]:
    with pytest.raises(Refused) as refused:
        check()
    return refused.value.response.status_code, refused.value.args[0]


def test_one_waiting_run_per_session():
    guard = guard_with_queue([waiting_run("s1", "10.0.0.1")])
    assert refusal(lambda: guard.check_model_queue(request_from("10.0.0.9"), "s1")) == (
        429, "This session already has a Run waiting for the model; wait for its result first.")
    guard.check_model_queue(request_from("10.0.0.1"), "s2")  # the same client's other session may queue one


def test_a_few_waiting_runs_per_client_address():
    guard = guard_with_queue([waiting_run("s1", "10.0.0.1"), waiting_run("s2", "10.0.0.1")])
    status, message = refusal(lambda: guard.check_model_queue(request_from("10.0.0.1"), "s3"))
    assert status == 429 and message.startswith("You have 2 Runs waiting for the model already")
    guard.check_model_queue(request_from("10.0.0.2"), "s3")


def test_the_model_queue_has_a_cap():
    guard = guard_with_queue([waiting_run(f"s{i}", f"10.0.0.{i}") for i in range(4)])
    assert refusal(lambda: guard.check_model_queue(request_from("10.0.1.1"), "new")) == (
        503, "The model's queue is full (4 Runs waiting); try again in a minute.")
    guard_with_queue([]).check_model_queue(request_from("10.0.1.1"), None)  # an empty queue takes a Run


def test_the_upload_quota_counts_the_last_window_only():
    now = [0.0]
    quota = UploadQuota(per_client=3 * MB, total=5 * MB, window_s=3600, clock=lambda: now[0])
    quota.charge("a", 2 * MB)
    quota.check("a", MB)
    status, message = refusal(lambda: quota.check("a", MB + 1))
    assert status == 429 and message.startswith("Upload quota reached: 2 MB uploaded from your address in the last 1 h, "
                                                "at most 3 MB")
    quota.charge("b", 3 * MB)
    assert refusal(lambda: quota.check("c", MB))[0] == 503  # 5 MB in all
    now[0] = 3601  # both charges left the window
    quota.check("a", 3 * MB)
    quota.charge("a", 3 * MB)
    quota.check("c", 2 * MB)
