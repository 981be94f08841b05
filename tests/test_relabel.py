"""Sending frames back for labelling: the POST endpoints of the fake server, the client's POSTs, create_jobs, CLI.

Everything runs against the real HTTP stack and the fake server on loopback; the "worst frames" CSV is written by
the tests (one test derives it from a real per-frame evaluation of a dataset).
"""

from __future__ import annotations

import csv
import itertools
import json
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import FAST_RETRY, fast_client

import playment_torch as pt
from playment_torch.cli import main
from playment_torch.client import PlaymentClient
from playment_torch.errors import (
    APIError,
    AuthenticationError,
    ConfigError,
    FrameError,
    PlaymentError,
    PlaymentFormatError,
    RateLimitError,
    ServerError,
)
from playment_torch.relabel import RelabelOutcome, create_jobs, frame_sensor_data, read_frames_csv, reference_id_for
from playment_torch.testing.server import FakePlaymentServer
from playment_torch.testing.synthetic import SyntheticJob, make_job

WORK_FLOW = "wf-relabel-1"
BATCH = "hard frames 2026-12"


# ------------------------------------------------------------------------------------------- fixtures & helpers


@pytest.fixture(scope="module")
def source_jobs() -> list[SyntheticJob]:
    """Three synthetic jobs of ten frames (results only are served: relabelling never reads the files)."""
    return [make_job(seed=100 + i, n_frames=10, points_per_frame=10_000, beams=16, cameras=2) for i in range(3)]


@pytest.fixture
def project(server: FakePlaymentServer, source_jobs: list[SyntheticJob]) -> list[SyntheticJob]:
    for job in source_jobs:
        server.add_job(job.result, job_id=job.job_id)
    return source_jobs


def write_frames(path: Path, rows: list[tuple[str, str]], *, header: tuple[str, str] = ("job", "frame")) -> Path:
    """A per-frame metrics CSV like the evaluation writes: job, frame, and metric columns."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", header[0], header[1], "miou", "accuracy"])
        for rank, (job_id, frame_id) in enumerate(rows):
            writer.writerow([rank, job_id, frame_id, f"{0.1 + rank / 100:.3f}", "0.5"])
    return path


def worst_rows(jobs: list[SyntheticJob]) -> list[tuple[str, str]]:
    return [(jobs[0].job_id, "3"), (jobs[2].job_id, "0"), (jobs[1].job_id, "9"), (jobs[0].job_id, "7")]


def posts(server: FakePlaymentServer, route: str = "create_job") -> list[Any]:
    return [r for r in server.requests if r.method == "POST" and r.route == route]


def source_frame(job: SyntheticJob, frame_id: str) -> dict[str, Any]:
    return next(f for f in job.result["sensor_data"]["frames"] if f["frame_id"] == frame_id)


def batches_named(client: PlaymentClient, project_id: str, name: str) -> list[Any]:
    return [b for b in client.get_project(project_id).batches if b.name == name]


def api_post(server: FakePlaymentServer, suffix: str, body: Any, *, key: str | None = "default") -> requests.Response:
    headers = {} if key is None else {"x-api-key": server.api_key if key == "default" else key}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = f"{server.url}/v1/projects/{server.project_id}{suffix}"
    return requests.post(url, data=data, headers=headers, timeout=10)


def error_of(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    assert body["success"] is False
    return response.status_code, body["error"]["code"], body["error"]["message"]


def sensor_data_of(job: SyntheticJob, frame_id: str) -> dict[str, Any]:
    return {"frames": [source_frame(job, frame_id)], "sensor_meta": job.result["sensor_data"]["sensor_meta"]}


# ------------------------------------------------------------------------------------------- the round trip


def test_dry_run_then_real_run_then_rerun_creates_nothing_twice(server, project, tmp_path):
    client = fast_client(server)
    rows = worst_rows(project)
    frames = write_frames(tmp_path / "worst.csv", rows)

    dry = create_jobs(server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client, dry_run=True)
    assert (dry.planned, dry.created, dry.skipped, dry.failed) == (4, 0, 0, 0)
    assert dry.batch_created and dry.batch_id == ""
    assert [(o.source_job_id, o.source_frame_id) for o in dry.outcomes] == rows
    assert [o.reference_id for o in dry.outcomes] == [f"relabel:{j}:{f}" for j, f in rows]
    assert not [r for r in server.requests if r.method != "GET"], "a dry run must not POST"
    assert batches_named(client, server.project_id, BATCH) == []
    text = str(dry)
    assert text.splitlines()[0] == f"would create batch {BATCH!r} in project {server.project_id}"
    assert text.splitlines()[1] == f"would create relabel:{rows[0][0]}:3"
    assert text.splitlines()[-1] == "dry run: 4 to create, 0 skipped, 0 failed (nothing created)"

    jobs_before = len(server._jobs)
    real = create_jobs(server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client)
    assert (real.created, real.skipped, real.failed) == (4, 0, 0)
    assert real.batch_created and real.batch_id
    assert len(posts(server, "create_batch")) == 1
    posted = [r.body["reference_id"] for r in posts(server)]
    assert sorted(posted) == sorted(o.reference_id for o in real.outcomes)
    assert len(server._jobs) == jobs_before + 4
    assert real.summary() == "relabel: 4 created, 0 skipped, 0 failed"

    # Read back: the job endpoint, the batch listing, and the sensor data the server received.
    listed = {s.reference_id: s for s in client.iter_batch_jobs(server.project_id, real.batch_id)}
    assert set(listed) == {o.reference_id for o in real.outcomes}
    by_id = {job.job_id: job for job in project}
    for outcome in real.outcomes:
        job = client.get_job(server.project_id, outcome.job_id)
        assert (job.reference_id, job.batch_id, job.work_flow_id) == (outcome.reference_id, real.batch_id, WORK_FLOW)
        assert job.status == "created" and not job.is_completed and job.result_url == ""
        assert listed[outcome.reference_id].job_id == outcome.job_id
        sent = server.job_data(outcome.job_id)["sensor_data"]
        source = by_id[outcome.source_job_id]
        want = source_frame(source, outcome.source_frame_id)
        (frame,) = sent["frames"]
        assert frame["frame_id"] == outcome.source_frame_id
        assert frame["sensors"] == want["sensors"] and frame["ego_pose"] == want["ego_pose"]
        assert frame == want
        assert sent["sensor_meta"] == source.result["sensor_data"]["sensor_meta"]
    (batch,) = batches_named(client, server.project_id, BATCH)
    assert batch.total_jobs == 4

    server.clear_requests()
    again = create_jobs(server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client)
    assert (again.created, again.skipped, again.failed) == (0, 4, 0)
    assert not again.batch_created and again.batch_id == real.batch_id
    assert [o.job_id for o in again.outcomes] == [o.job_id for o in real.outcomes]
    assert all(o.reason == f"already in batch {BATCH!r}" for o in again.outcomes)
    assert [r for r in server.requests if r.method == "POST"] == []
    assert len(server._jobs) == jobs_before + 4
    assert len(batches_named(client, server.project_id, BATCH)) == 1


def test_a_partial_run_then_the_full_list_creates_only_the_rest(server, project, tmp_path):
    client = fast_client(server)
    rows = [*worst_rows(project), (project[1].job_id, "0")]
    frames = write_frames(tmp_path / "worst.csv", rows)
    first = create_jobs(server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client, limit=2)
    assert (first.created, len(first.outcomes)) == (2, 2)
    second = create_jobs(server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client)
    assert [o.status for o in second.outcomes] == ["skipped", "skipped", "created", "created", "created"]
    assert second.batch_id == first.batch_id and not second.batch_created
    references = Counter(r.body["reference_id"] for r in posts(server))
    assert len(references) == 5 and set(references.values()) == {1}
    assert len(batches_named(client, server.project_id, BATCH)) == 1


def test_frames_listed_twice_and_pairs_and_frame_refs(server, project):
    client = fast_client(server)
    job = project[0]
    frames = [(job.job_id, "1"), (job.job_id, "1"), pt.FrameRef(server.project_id, job.job_id, "2", 2, "", "", "")]
    report = create_jobs(server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client)
    assert [o.status for o in report.outcomes] == ["created", "skipped", "created"]
    assert report.outcomes[1].reason == "listed twice (first on row 1)"
    assert len(posts(server)) == 2


def test_bad_sources_fail_alone_and_the_rest_is_created(server, project, tmp_path):
    client = fast_client(server)
    legacy = make_job(seed=7, result_format="legacy", points_per_frame=10_000, beams=16)
    server.add_job(legacy.result, job_id="legacy-job")
    server.add_job(project[0].result, job_id="pending-job", status="in_progress")
    rows = [
        (project[0].job_id, "0"),
        (project[0].job_id, "42"),
        ("no-such-job", "0"),
        ("legacy-job", "0"),
        ("pending-job", "0"),
        (project[1].job_id, "1"),
    ]
    report = create_jobs(
        server.project_id,
        write_frames(tmp_path / "w.csv", rows),
        work_flow_id=WORK_FLOW,
        batch_name=BATCH,
        client=client,
    )
    assert [o.status for o in report.outcomes] == ["created", "failed", "failed", "failed", "failed", "created"]
    reasons = [o.reason for o in report.outcomes]
    assert "no such frame" in reasons[1] and "frames: 0, 1, 2" in reasons[1]
    assert "no-such-job" in reasons[2] and "not found" in reasons[2]
    assert "no sensor_data" in reasons[3]
    assert "not 'completed'" in reasons[4]
    assert not report.ok and report.summary() == "relabel: 2 created, 0 skipped, 4 failed"
    assert len(posts(server)) == 2
    assert all(server.api_key not in reason for reason in reasons)


def test_nothing_to_create_creates_no_empty_batch(server, project):
    client = fast_client(server)
    report = create_jobs(
        server.project_id, [(project[0].job_id, "99")], work_flow_id=WORK_FLOW, batch_name=BATCH, client=client
    )
    assert (report.failed, report.batch_id, report.batch_created) == (1, "", False)
    assert posts(server, "create_batch") == []
    assert report.batch_line() == f"no batch {BATCH!r} in project {server.project_id} (nothing to create)"


def test_an_existing_batch_of_that_name_is_reused(server, project):
    client = fast_client(server)
    batch_id = server.add_batch(BATCH)
    existing = server.add_job(None, batch_id=batch_id, reference_id=reference_id_for(project[0].job_id, "0"))
    frames = [(project[0].job_id, "0"), (project[0].job_id, "1")]
    report = create_jobs(server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client)
    assert report.batch_id == batch_id and not report.batch_created
    assert [(o.status, o.job_id == existing) for o in report.outcomes] == [("skipped", True), ("created", False)]
    assert posts(server, "create_batch") == []
    assert client.get_job(server.project_id, report.outcomes[1].job_id).batch_id == batch_id


# ------------------------------------------------------------------------------------------- lost answers, retries


def test_a_dropped_post_is_not_retried_and_a_rerun_creates_it_once(server, project):
    client = fast_client(server)
    frames = [(project[0].job_id, str(i)) for i in range(3)]
    server.add_fault("create_job", drop=True, times=1)
    report = create_jobs(
        server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client, num_threads=1
    )
    assert [o.status for o in report.outcomes] == ["failed", "created", "created"]
    assert "may have applied the request" in report.outcomes[0].reason
    assert len(posts(server)) == 3, "the dropped POST must not be retried"
    again = create_jobs(server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client)
    assert [o.status for o in again.outcomes] == ["created", "skipped", "skipped"]
    listed = Counter(s.reference_id for s in client.iter_batch_jobs(server.project_id, report.batch_id))
    assert sorted(listed) == sorted(o.reference_id for o in report.outcomes) and set(listed.values()) == {1}


def test_a_failing_check_after_the_run_keeps_the_report(server, project):
    client = fast_client(server)
    frames = [(project[0].job_id, str(i)) for i in range(3)]
    server.add_fault("create_job", drop=True, times=1)
    # No batch exists before the run, so the only listing is the check after it.
    server.add_fault("batch", status=400, error_code="GE_0001", times=None)
    report = create_jobs(
        server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client, num_threads=1
    )
    assert [o.status for o in report.outcomes] == ["failed", "created", "created"]
    assert [r.route for r in server.requests if r.route == "batch"] == ["batch"]


def test_an_applied_post_whose_answer_is_lost_counts_as_created(server, project):
    # The server waits 0.8 s, then creates the job and answers a client that gave up after 0.3 s: the job exists
    # although the client saw a timeout. It must not retry, and the listing after the run finds the job. At 2
    # requests/s the first job POST leaves at 1.0 s (after the source read and the batch POST), the job lands at
    # 1.8 s, and the listing follows the last POST at 2.5 s.
    client = PlaymentClient(server.api_key, base_url=server.url, retry=FAST_RETRY, timeout=0.3)
    frames = [(project[0].job_id, str(i)) for i in range(4)]
    server.add_fault("create_job", latency=0.8, times=1)
    report = create_jobs(
        server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client, num_threads=1, rate=2
    )
    assert [o.status for o in report.outcomes] == ["created"] * 4
    assert report.outcomes[0].reason == "its answer was lost, but the batch lists the job"
    assert report.outcomes[0].job_id
    references = Counter(r.body["reference_id"] for r in posts(server))
    assert set(references.values()) == {1}, "a POST that may have been applied was retried"
    listed = [s.reference_id for s in client.iter_batch_jobs(server.project_id, report.batch_id)]
    assert sorted(listed) == sorted(o.reference_id for o in report.outcomes)


@pytest.mark.parametrize(
    ("fault", "retried", "error"),
    [
        ({"status": 429, "error_code": "rate_limit", "retry_after": "0"}, True, None),
        ({"status": 429}, True, None),
        ({"status": 503}, True, None),
        ({"status": 408}, True, None),
        ({"status": 500, "error_code": "api_error"}, False, ServerError),
        ({"status": 502}, False, ServerError),
        ({"status": 400, "error_code": "FS_0000"}, False, ServerError),
        ({"drop": True}, False, APIError),
    ],
)
def test_post_retries_only_what_was_not_applied(server, project, fault, retried, error):
    client = fast_client(server)
    server.add_fault("create_job", times=1, **fault)
    call = {
        "reference_id": "r-1",
        "work_flow_id": WORK_FLOW,
        "sensor_data": sensor_data_of(project[0], "0"),
    }
    if error is None:
        job = client.create_job(server.project_id, **call)
        assert (job.reference_id, job.work_flow_id) == ("r-1", WORK_FLOW)
        assert client.get_job(server.project_id, job.job_id).reference_id == "r-1"
    else:
        with pytest.raises(error) as caught:
            client.create_job(server.project_id, **call)
        assert server.api_key not in str(caught.value)
        assert caught.value.attempts == 1
    assert len(posts(server)) == (2 if retried else 1)
    assert all(r.sent_key for r in posts(server))


def test_post_gives_up_on_429_after_the_retries(server):
    client = fast_client(server)
    server.add_fault("create_batch", status=429, times=None)
    with pytest.raises(RateLimitError) as caught:
        client.create_batch(server.project_id, "b")
    assert caught.value.attempts == FAST_RETRY.max_retries + 1
    assert len(posts(server, "create_batch")) == FAST_RETRY.max_retries + 1


def test_connection_refused_is_retried_because_nothing_was_sent():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = PlaymentClient("k" * 20, base_url=f"http://127.0.0.1:{port}", retry=FAST_RETRY)
    with pytest.raises(APIError, match="nothing was sent") as caught:
        client.create_batch("p", "b")
    assert caught.value.attempts == FAST_RETRY.max_retries + 1
    assert "k" * 20 not in str(caught.value)


def test_a_failed_batch_post_whose_batch_exists_is_reused(server, project):
    # The batch is created but its answer is lost: create_jobs finds it by name instead of making a second one.
    # At 1 request/s: the batch POST leaves at 1 s and times out at 1.3 s, the batch lands at 1.5 s, and the
    # second look at the project comes at 2 s.
    client = PlaymentClient(server.api_key, base_url=server.url, retry=FAST_RETRY, timeout=0.3)
    server.add_fault("create_batch", latency=0.5, times=1)
    report = create_jobs(
        server.project_id, [(project[0].job_id, "0")], work_flow_id=WORK_FLOW, batch_name=BATCH, client=client, rate=1
    )
    assert report.created == 1
    (batch,) = batches_named(client, server.project_id, BATCH)
    assert report.batch_id == batch.id
    assert len(posts(server, "create_batch")) == 1


# ------------------------------------------------------------------------------------------- validation & auth


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c, p, j: c.create_batch(p, ""), "'name' is required"),
        (
            lambda c, p, j: c.create_job(
                p, reference_id="", work_flow_id=WORK_FLOW, sensor_data=sensor_data_of(j, "0")
            ),
            "'reference_id' is required",
        ),
        (
            lambda c, p, j: c.create_job(p, reference_id="r", work_flow_id="", sensor_data=sensor_data_of(j, "0")),
            "'work_flow_id' is required",
        ),
        (
            lambda c, p, j: c.create_job(
                p, reference_id="r", work_flow_id=WORK_FLOW, batch_id="nope", sensor_data=sensor_data_of(j, "0")
            ),
            "batch_id nope does not exist",
        ),
        (
            lambda c, p, j: c.create_job(
                p, reference_id="r", work_flow_id=WORK_FLOW, sensor_data={"frames": "x", "sensor_meta": [{}]}
            ),
            "sensor_meta[0] must be an object with an 'id'",
        ),
        (
            lambda c, p, j: c.create_job(
                p,
                reference_id="r",
                work_flow_id=WORK_FLOW,
                sensor_data={"frames": [], "sensor_meta": j.result["sensor_data"]["sensor_meta"]},
            ),
            "'frames' must be a non-empty array",
        ),
        (
            lambda c, p, j: c.create_job(
                p,
                reference_id="r",
                work_flow_id=WORK_FLOW,
                sensor_data={
                    "frames": [{"frame_id": "0", "sensors": [{"sensor_id": "radar", "data_url": "https://x/y"}]}],
                    "sensor_meta": j.result["sensor_data"]["sensor_meta"],
                },
            ),
            "frames[0].sensors[0].sensor_id 'radar' is not in sensor_meta",
        ),
    ],
)
def test_validation_errors_surface_with_the_servers_message(server, project, call, message):
    client = fast_client(server)
    with pytest.raises(PlaymentError) as caught:
        call(client, server.project_id, project[0])
    error = caught.value
    assert isinstance(error, APIError) and (error.status_code, error.code) == (400, "GE_0001")
    assert message in str(error) and server.api_key not in str(error)
    assert len([r for r in server.requests if r.method == "POST"]) == 1, "a validation error is not retried"
    assert [r.status for r in server.requests] == [400]


def test_wrong_key_is_an_authentication_error_and_stops_the_run(server, project):
    good = fast_client(server)
    good.create_batch(server.project_id, BATCH)
    bad = PlaymentClient("wrong-key-123", base_url=server.url, retry=FAST_RETRY)
    with pytest.raises(AuthenticationError) as caught:
        bad.create_job(
            server.project_id, reference_id="r", work_flow_id="w", sensor_data=sensor_data_of(project[0], "0")
        )
    assert "wrong-key-123" not in str(caught.value) and caught.value.code == "auth-failure"
    with pytest.raises(AuthenticationError):
        create_jobs(server.project_id, [(project[0].job_id, "0")], work_flow_id="w", batch_name=BATCH, client=bad)


def test_server_post_routes_follow_the_get_rules(server):
    assert error_of(api_post(server, "/batch", {"name": "x"}, key=None))[:2] == (401, "unauthorized")
    assert error_of(api_post(server, "/batch", {"name": "x"}, key="nope"))[:2] == (400, "auth-failure")
    assert error_of(api_post(server, "/batch", b"not json"))[:2] == (400, "GE_0001")
    assert error_of(api_post(server, "/jobs", [1, 2]))[:2] == (400, "GE_0001")
    other = f"{server.url}/v1/projects/other/batch"
    response = requests.post(other, json={"name": "x"}, headers={"x-api-key": server.api_key}, timeout=10)
    assert error_of(response)[:2] == (400, "FS_0006")
    get = requests.get(f"{server.url}/v1/projects/{server.project_id}/jobs", headers={"x-api-key": server.api_key})
    assert error_of(get)[:2] == (405, "method_not_allowed") and get.headers["Allow"] == "POST"
    created = api_post(server, "/batch", {"name": "night", "description": "rainy"})
    batch_id = created.json()["data"]["batch_id"]
    details = requests.get(
        f"{server.url}/v1/projects/{server.project_id}/details", headers={"x-api-key": server.api_key}
    )
    (batch,) = [b for b in details.json()["data"]["batches"] if b["id"] == batch_id]
    assert (batch["name"], batch["description"], batch["total_jobs"]) == ("night", "rainy", 0)
    records = [r for r in server.requests if r.method == "POST"]
    assert [r.route for r in records] == ["create_batch"] * 3 + ["create_job", "create_batch", "create_batch"]
    assert records[-1].body == {"name": "night", "description": "rainy"} and records[2].body is None


def test_a_job_without_batch_goes_to_the_default_batch(server, project):
    client = fast_client(server)
    job = client.create_job(
        server.project_id, reference_id="r", work_flow_id="w", sensor_data=sensor_data_of(project[0], "4")
    )
    fetched = client.get_job(server.project_id, job.job_id)
    default = next(b for b in client.get_project(server.project_id).batches if b.is_default)
    assert fetched.batch_id == default.id and job.batch_id == ""


# ------------------------------------------------------------------------------------------- rate


def test_posts_stay_under_the_documented_rate(server, project):
    client = fast_client(server)
    frames = [(job.job_id, str(i)) for job in project for i in range(10)]
    started = time.monotonic()
    report = create_jobs(
        server.project_id, frames, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client, num_threads=8
    )
    elapsed = time.monotonic() - started
    assert report.created == 30
    stamps = sorted(r.time for r in server.requests if r.method == "POST")
    assert len(stamps) == 31
    busiest = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    # A bucket of 20/s with bursts of one allows 21 in a window that starts on a token; 23 leaves scheduling slack.
    assert busiest <= 23, f"{busiest} POSTs in one second"
    # 31 POSTs and 3 job reads through one bucket of 20/s cannot take less than ~1.6 s.
    assert elapsed >= 1.5
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert sorted(gaps)[len(gaps) // 2] >= 0.035, "POSTs are not paced"


# ------------------------------------------------------------------------------------------- CLI


def cli_args(server: FakePlaymentServer, frames: Path, *extra: str) -> list[str]:
    return [
        "relabel",
        "--project",
        server.project_id,
        "--base-url",
        server.url,
        "--frames",
        str(frames),
        "--work-flow-id",
        WORK_FLOW,
        "--batch-name",
        BATCH,
        *extra,
    ]


def test_cli_dry_run_run_rerun_and_failures(server, project, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLAYMENT_API_KEY", server.api_key)
    rows = worst_rows(project)
    frames = write_frames(tmp_path / "worst.csv", rows, header=("job_id", "frame_id"))

    assert main(cli_args(server, frames, "--dry-run", "--limit", "3")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"would create batch {BATCH!r} in project {server.project_id}"
    assert out[1:4] == [f"would create relabel:{j}:{f}" for j, f in rows[:3]]
    assert out[-1] == "dry run: 3 to create, 0 skipped, 0 failed (nothing created)"
    assert [r for r in server.requests if r.method == "POST"] == []

    assert main(cli_args(server, frames, "--quiet")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"created batch {BATCH!r} (")
    assert out[-1] == "relabel: 4 created, 0 skipped, 0 failed"
    assert main(cli_args(server, frames)) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "relabel: 0 created, 4 skipped, 0 failed"

    broken = write_frames(tmp_path / "broken.csv", [*rows, (project[0].job_id, "77")])
    assert main(cli_args(server, broken)) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == "relabel: 0 created, 4 skipped, 1 failed"
    assert f"failed relabel:{project[0].job_id}:77" in captured.out
    assert captured.err.strip() == ("playment-torch: error: 1 of 5 frames failed (listed above); rerun to retry them")
    assert server.api_key not in captured.out + captured.err


def test_cli_bad_frames_file_exits_1(server, project, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLAYMENT_API_KEY", server.api_key)
    bad = tmp_path / "bad.csv"
    bad.write_text("job,score\nj,1\n")
    assert main(cli_args(server, bad)) == 1
    assert "needs a 'job' (or 'job_id') and a 'frame'" in capsys.readouterr().err
    assert main(cli_args(server, tmp_path / "missing.csv")) == 1
    assert "cannot read the frames file" in capsys.readouterr().err
    assert main(["relabel", "--project", "p", "--frames", "x.csv"]) == 2  # missing required options


# ------------------------------------------------------------------------------------------- pieces


def test_reference_ids_are_readable_or_hashed_and_deterministic():
    job = "3f3e8675-ca69-46d7-aa34-96f90fcbb732"
    assert reference_id_for(job, "12") == f"relabel:{job}:12"
    assert reference_id_for(job, "12", prefix="round-2") == f"round-2:{job}:12"
    odd = reference_id_for(job, "front:lidar/0007")
    assert odd.startswith("relabel:sha256:") and len(odd) == len("relabel:sha256:") + 40
    assert odd == reference_id_for(job, "front:lidar/0007") != reference_id_for(job, "front:lidar/0008")
    assert reference_id_for("x" * 200, "1").startswith("relabel:sha256:")
    # No separator confusion: ids holding ':' never take the readable form.
    assert reference_id_for("a:b", "c") != reference_id_for("a", "b:c")
    hashed = RelabelOutcome(odd, job, "front:lidar/0007", "created", job_id="new-job")
    assert hashed.describe() == f"created {odd} (job {job}, frame front:lidar/0007) -> job new-job"
    for prefix in ("", "has space", "x" * 33, "a:b"):
        with pytest.raises(ConfigError):
            reference_id_for(job, "1", prefix=prefix)


def test_read_frames_csv_columns_order_limit_and_errors(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("\ufeffmiou, Job_ID ,frame\n0.1,j1,3\n\n0.2,j2,0\n0.3,j1,1\n", encoding="utf-8")
    assert read_frames_csv(path) == [("j1", "3"), ("j2", "0"), ("j1", "1")]
    assert read_frames_csv(path, limit=2) == [("j1", "3"), ("j2", "0")]
    path.write_text("job,frame\nj1,\n")
    with pytest.raises(PlaymentFormatError, match="line 2: empty job or frame"):
        read_frames_csv(path)
    path.write_text("")
    with pytest.raises(PlaymentFormatError, match="empty file"):
        read_frames_csv(path)
    with pytest.raises(ConfigError):
        read_frames_csv(path, limit=-1)


def test_frame_sensor_data_layouts():
    flat = {
        "annotation_data": {"frames": [{"_id": "f7"}]},
        "sensor_data": {
            "ego_pose": {},
            "sensors": [{"sensor_id": "lidar", "data_url": "https://x/1.pcd"}],
            "sensor_meta": [{"id": "lidar", "modality": "lidar"}],
        },
    }
    assert frame_sensor_data(flat, job_id="j", frame_id="f7") == {
        "frames": [
            {"frame_id": "f7", "ego_pose": {}, "sensors": [{"sensor_id": "lidar", "data_url": "https://x/1.pcd"}]}
        ],
        "sensor_meta": [{"id": "lidar", "modality": "lidar"}],
    }
    numeric = {"sensor_data": {"frames": [{"frame_id": 3, "sensors": []}], "sensor_meta": []}}
    assert frame_sensor_data(numeric, job_id="j", frame_id="3")["frames"][0]["frame_id"] == 3
    with pytest.raises(FrameError, match="frames: 3"):
        frame_sensor_data(numeric, job_id="j", frame_id="4")
    with pytest.raises(PlaymentFormatError, match="legacy"):
        frame_sensor_data({"legend": [], "url": "u"}, job_id="j", frame_id="0")


def test_front_door_exports():
    import playment_torch.relabel as relabel

    assert pt.create_jobs is relabel.create_jobs
    assert pt.RelabelReport is relabel.RelabelReport and pt.RelabelOutcome is relabel.RelabelOutcome


# ------------------------------------------------------------------------------------------- the loop, end to end


def test_worst_frames_of_an_evaluation_go_back_and_read_back(server, tmp_path):
    """Evaluate a "model" per frame, write the worst frames as CSV, relabel them, and read the new jobs back."""
    import torch

    from playment_torch.metrics import SegmentationMetrics
    from playment_torch.testing.synthetic import add_synthetic_project

    jobs = add_synthetic_project(server, n_jobs=2, frames_per_job=3, points_per_frame=10_000, seed=5, cameras=1)
    client = fast_client(server)
    dataset = pt.PlaymentSegmentationDataset(
        server.project_id, client=client, cache_dir=tmp_path / "cache", point_fields=("x", "y", "z"), progress=False
    )
    # The "model" gets frame i wrong on a share of points that grows with i: the last frames are the worst.
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(len(dataset)):
        sample = dataset[i]
        prediction = sample.labels.clone()
        wrong = torch.rand(len(prediction), generator=generator) < 0.1 + 0.1 * i
        prediction[wrong] = (prediction[wrong] + 1) % len(dataset.classes)
        metrics = SegmentationMetrics(len(dataset.classes), ignore_index=dataset.ignore_index)
        metrics.update(prediction, sample.labels)
        frame = dataset.frames[i]
        rows.append((metrics.miou(), frame.job_id, frame.frame_id))
    rows.sort()
    worst = tmp_path / "frames.csv"
    with worst.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["job", "frame", "miou"])
        writer.writerows([job_id, frame_id, f"{miou:.4f}"] for miou, job_id, frame_id in rows)

    report = pt.create_jobs(server.project_id, worst, work_flow_id=WORK_FLOW, batch_name=BATCH, client=client, limit=2)
    expected = [(job_id, frame_id) for _, job_id, frame_id in rows[:2]]
    assert [(o.source_job_id, o.source_frame_id) for o in report.outcomes] == expected
    # The most-corrupted frames, worst first, are the last two of the dataset.
    assert expected == [(dataset.frames[i].job_id, dataset.frames[i].frame_id) for i in (5, 4)]
    results = {job.job_id: job.result for job in jobs}
    for outcome in report.outcomes:
        created = client.get_job(server.project_id, outcome.job_id)
        assert created.reference_id == f"relabel:{outcome.source_job_id}:{outcome.source_frame_id}"
        (frame,) = server.job_data(outcome.job_id)["sensor_data"]["frames"]
        source = results[outcome.source_job_id]["sensor_data"]
        assert frame == next(f for f in source["frames"] if f["frame_id"] == outcome.source_frame_id)
    listed = {s.reference_id for s in client.iter_batch_jobs(server.project_id, report.batch_id)}
    assert listed == {o.reference_id for o in report.outcomes}
