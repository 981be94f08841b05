"""``PlaymentClient`` against the fake Playment server: endpoints, retries, errors, attachments and security.

Every fault test reads the server's request log, so it checks what went over the wire (how many attempts,
which host, whether the key was sent), not only what the client returned.
"""

from __future__ import annotations

import email.utils
import json
import logging
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import urllib3

import playment_torch.client as client_module
from playment_torch.client import PlaymentClient, RetryPolicy, parse_retry_after
from playment_torch.errors import (
    APIError,
    AuthenticationError,
    ConfigError,
    DownloadError,
    JobNotCompletedError,
    NotFoundError,
    PlaymentError,
    PlaymentFormatError,
    RateLimitError,
    ServerError,
)
from playment_torch.models import Job
from playment_torch.testing.server import PLAYMENT_STORAGE, FakePlaymentServer

# Recognisable, so a leak anywhere is found by a substring search.
KEY = "pk-LEAKCHECK-6f1d2c9b8a7e"
FAST = RetryPolicy(max_retries=3, backoff=0.01, backoff_max=0.05, retry_after_max=2)
ATTEMPTS = FAST.max_retries + 1
API_ROUTES = ("project", "batch", "job", "attachments")

LEGACY_URL = f"{PLAYMENT_STORAGE}/scans/legacy.pcd"
LEGACY_RESULT: dict[str, Any] = {
    "legend": [{"id": "c-car", "text": "Car", "label_key": 1}, {"id": "c-road", "text": "Road", "label_key": 0}],
    "url": LEGACY_URL,
}


@pytest.fixture
def fake() -> Iterator[FakePlaymentServer]:
    with FakePlaymentServer(api_key=KEY, page_size=3) as server:
        yield server


@pytest.fixture
def make_client(fake: FakePlaymentServer) -> Iterator[Callable[..., PlaymentClient]]:
    made: list[PlaymentClient] = []

    def make(**options: Any) -> PlaymentClient:
        options.setdefault("retry", FAST)
        client = PlaymentClient(options.pop("api_key", KEY), base_url=fake.url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., PlaymentClient]) -> PlaymentClient:
    return make_client()


def routes(fake: FakePlaymentServer) -> list[tuple[str, int | None]]:
    return [(r.route, r.status) for r in fake.requests]


def hosted(fake: FakePlaymentServer, name: str, content: bytes) -> str:
    return fake.put_file(f"{PLAYMENT_STORAGE}/files/{name}", content)


def add_job(fake: FakePlaymentServer) -> str:
    return fake.add_job(LEGACY_RESULT)


# ------------------------------------------------------------------------------------------- configuration


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch, fake: FakePlaymentServer) -> None:
    monkeypatch.setenv("PLAYMENT_API_KEY", KEY)
    with PlaymentClient(base_url=fake.url, retry=FAST) as env_client:
        assert env_client.get_project(fake.project_id).project_id == fake.project_id
    assert fake.requests[-1].sent_key
    # An explicit key wins over the environment.
    monkeypatch.setenv("PLAYMENT_API_KEY", "wrong")
    with PlaymentClient(KEY, base_url=fake.url, retry=FAST) as explicit:
        explicit.get_project(fake.project_id)


@pytest.mark.parametrize("env", [None, "", "   "])
def test_missing_api_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch, env: str | None) -> None:
    if env is None:
        monkeypatch.delenv("PLAYMENT_API_KEY", raising=False)
    else:
        monkeypatch.setenv("PLAYMENT_API_KEY", env)
    with pytest.raises(ConfigError, match="PLAYMENT_API_KEY"):
        PlaymentClient()


def test_defaults() -> None:
    client = PlaymentClient(KEY)
    assert client.base_url == "https://api.playment.io"
    assert client.timeout == 30.0
    assert client.retry == RetryPolicy(max_retries=5)
    assert PlaymentClient(KEY, max_retries=2).retry.max_retries == 2
    # 32 concurrent downloads must not queue for connections.
    assert client._http().get_adapter("https://api.playment.io")._pool_maxsize >= 32  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("base_url", "accepted"),
    [
        ("https://api.playment.io", True),
        ("https://api.playment.io/", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:9", True),
        ("http://[::1]:8080", True),
        ("http://api.playment.io", False),  # the key would travel in clear text
        ("http://10.0.0.5:8080", False),
        ("http://localhost.example.com", False),
        ("ftp://api.playment.io", False),
        ("api.playment.io", False),
        ("https://", False),
    ],
)
def test_base_url_safety(base_url: str, accepted: bool) -> None:
    if accepted:
        assert PlaymentClient(KEY, base_url=base_url).base_url == base_url.rstrip("/")
    else:
        with pytest.raises(ConfigError) as info:
            PlaymentClient(KEY, base_url=base_url)
        assert KEY not in str(info.value)


@pytest.mark.parametrize("call", ["get_project", "get_job", "iter_batch_jobs"])
def test_empty_ids_are_refused_before_any_request(client: PlaymentClient, fake: FakePlaymentServer, call: str) -> None:
    with pytest.raises(ConfigError, match="must be a non-empty string"):
        if call == "get_project":
            client.get_project(" ")
        elif call == "get_job":
            client.get_job(fake.project_id, "")
        else:
            list(client.iter_batch_jobs(fake.project_id, ""))
    assert fake.requests == []


# ------------------------------------------------------------------------------------------- endpoints


def test_get_project(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    batch = fake.add_batch("Night drives", batch_id="b-night")
    fake.add_job(LEGACY_RESULT, batch_id=batch)
    fake.add_job(None, batch_id=batch, status="labelling")
    project = client.get_project(fake.project_id)
    assert project.name == fake.project_name
    (only,) = project.batches
    assert (only.id, only.name, only.total_jobs, only.completed_jobs, only.total_frames) == (
        "b-night",
        "Night drives",
        2,
        1,
        1,
    )
    (record,) = fake.requests
    assert (record.method, record.route, record.path, record.sent_key) == (
        "GET",
        "project",
        f"/v1/projects/{fake.project_id}/details",
        True,
    )


def test_pagination_follows_tokens_over_many_pages(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    batch = fake.add_batch("big")
    job_ids = [fake.add_job(LEGACY_RESULT, batch_id=batch, reference_id=f"r{i}") for i in range(8)]
    jobs = list(client.iter_batch_jobs(fake.project_id, batch))
    assert [j.job_id for j in jobs] == job_ids
    assert [j.reference_id for j in jobs] == [f"r{i}" for i in range(8)]
    assert {(j.batch_id, j.status) for j in jobs} == {(batch, "completed")}
    pages = [r for r in fake.requests if r.route == "batch"]
    assert len(pages) == 3  # page_size 3: 3 + 3 + 2
    tokens = [r.query.get("page_token") for r in pages]
    assert tokens[0] == "" and all(tokens[1:]) and len(set(tokens)) == 3


def test_pagination_retries_a_failed_page(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    batch = fake.add_batch("big")
    job_ids = [fake.add_job(LEGACY_RESULT, batch_id=batch) for _ in range(7)]
    pages = client.iter_batch_jobs(fake.project_id, batch)
    first = [next(pages) for _ in range(3)]
    fake.add_fault("batch", status=503)  # the second page fails once
    rest = list(pages)
    assert [j.job_id for j in first + rest] == job_ids
    assert [s for route, s in routes(fake) if route == "batch"] == [200, 503, 200, 200]


def _stub_pages(client: PlaymentClient, pages: list[dict[str, Any]]) -> list[str]:
    tokens: list[str] = []

    def get_json(path: str, *, params: dict[str, str], what: str) -> Any:
        tokens.append(params["page_token"])
        return {"data": pages[len(tokens) - 1], "success": True}

    client._get_json = get_json  # type: ignore[method-assign,assignment]
    return tokens


@pytest.mark.parametrize(
    ("pages", "expected_ids", "expected_tokens"),
    [
        ([{"jobs": [{"id": "a"}], "next_page_token": "t1"}, {"jobs": [{"id": "b"}]}], ["a", "b"], ["", "t1"]),
        (
            [{"jobs": [{"id": "a"}], "next_page_token": "t1"}, {"jobs": [{"id": "b"}], "next_page_token": None}],
            ["a", "b"],
            ["", "t1"],
        ),
        # A page without jobs ends the listing even when it carries a token.
        ([{"jobs": [{"id": "a"}], "next_page_token": "t1"}, {"jobs": [], "next_page_token": "t2"}], ["a"], ["", "t1"]),
        ([{"jobs": [], "next_page_token": "t1"}], [], [""]),
    ],
)
def test_pagination_stops(
    client: PlaymentClient, pages: list[dict[str, Any]], expected_ids: list[str], expected_tokens: list[str]
) -> None:
    tokens = _stub_pages(client, pages)
    assert [j.job_id for j in client.iter_batch_jobs("p", "b")] == expected_ids
    assert tokens == expected_tokens


def test_pagination_refuses_a_repeated_token(client: PlaymentClient) -> None:
    page = {"jobs": [{"id": "a"}], "next_page_token": "same"}
    _stub_pages(client, [page, page, page])
    with pytest.raises(PlaymentFormatError, match="repeated page token 'same'"):
        list(client.iter_batch_jobs("p", "b"))


def test_get_job_and_result(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    job_id = fake.add_job(LEGACY_RESULT, reference_id="ref-7")
    job = client.get_job(fake.project_id, job_id)
    assert (job.job_id, job.project_id, job.status, job.reference_id, job.is_completed) == (
        job_id,
        fake.project_id,
        "completed",
        "ref-7",
        True,
    )
    assert job.result_url.startswith(f"{PLAYMENT_STORAGE}/") and job.result_url.endswith(".json")
    fake.clear_requests()
    result = client.get_result(job)
    assert (result.job_id, result.project_id, result.format) == (job_id, fake.project_id, "legacy")
    assert {e.label_key: e.label for e in result.frames[0].labels} == {0: "Road", 1: "Car"}
    # The result went through the attachments endpoint, then the signed URL on the storage host.
    assert routes(fake) == [("attachments", 302), ("storage", 200)]
    assert fake.requests[0].query == {"url": job.result_url}


@pytest.mark.parametrize(("status", "result"), [("labelling", LEGACY_RESULT), ("completed", None), ("rejected", None)])
def test_result_of_an_unfinished_job(
    client: PlaymentClient, fake: FakePlaymentServer, status: str, result: Any
) -> None:
    job = client.get_job(fake.project_id, fake.add_job(result, status=status))
    fake.clear_requests()
    with pytest.raises(JobNotCompletedError) as info:
        client.get_result(job)
    assert info.value.job_id == job.job_id
    assert job.job_id in str(info.value)
    assert info.value.status == (status if status != "completed" else "completed without result")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"<html>not json</html>", "is not JSON"),
        (b'{"legend": [{"text": "Car"}], "url": "u"}', "legend[0]: missing required key 'label_key'"),
        (b'{"something": "else"}', "unknown result format"),
    ],
)
def test_malformed_result_names_the_job(
    client: PlaymentClient, fake: FakePlaymentServer, content: bytes, expected: str
) -> None:
    job = client.get_job(fake.project_id, add_job(fake))
    fake.put_file(job.result_url, content)
    with pytest.raises(PlaymentFormatError) as info:
        client.get_result(job)
    assert f"job {job.job_id}" in str(info.value) and expected in str(info.value)


def test_unknown_job_and_project(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    with pytest.raises(NotFoundError) as info:
        client.get_job(fake.project_id, "no-such-job")
    assert (info.value.status_code, info.value.code, info.value.attempts) == (400, "FS_0006", 1)
    assert info.value.url == f"{fake.url}/v1/projects/{fake.project_id}/jobs/no-such-job"
    with pytest.raises(NotFoundError):
        client.get_project("no-such-project")
    assert len(fake.requests) == 2  # not found is not retried


def test_wrong_key_is_an_authentication_error(
    make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer
) -> None:
    with pytest.raises(AuthenticationError) as info:
        make_client(api_key="not-the-key").get_project(fake.project_id)
    assert (info.value.status_code, info.value.code) == (400, "auth-failure")
    assert len(fake.requests) == 1


# ------------------------------------------------------------------------------------------- retries


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    value = call()
    return value, time.monotonic() - start


def test_429_without_retry_after_backs_off_briefly(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    job_id = add_job(fake)
    fake.add_fault("job", status=429, times=2)
    job, elapsed = _timed(lambda: client.get_job(fake.project_id, job_id))
    assert job.job_id == job_id
    assert routes(fake) == [("job", 429), ("job", 429), ("job", 200)]
    assert elapsed < 1.0


def test_429_honours_retry_after_seconds(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    job_id = add_job(fake)
    fake.add_fault("job", status=429, retry_after=0.4)
    _, elapsed = _timed(lambda: client.get_job(fake.project_id, job_id))
    assert routes(fake) == [("job", 429), ("job", 200)]
    assert elapsed >= 0.38
    gap = fake.requests[1].time - fake.requests[0].time
    assert 0.38 <= gap < 1.9


def test_429_honours_retry_after_http_date(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    job_id = add_job(fake)
    # HTTP dates have whole seconds: two seconds ahead is a wait between 1 and 2 seconds.
    fake.add_fault("job", status=429, retry_after=email.utils.formatdate(time.time() + 2, usegmt=True))
    _, elapsed = _timed(lambda: client.get_job(fake.project_id, job_id))
    assert routes(fake) == [("job", 429), ("job", 200)]
    assert 0.9 <= elapsed < 3.0


def test_retry_after_is_capped(make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer) -> None:
    client = make_client(retry=RetryPolicy(max_retries=2, backoff=0.01, retry_after_max=0.2))
    job_id = add_job(fake)
    fake.add_fault("job", status=503, retry_after=3600)
    _, elapsed = _timed(lambda: client.get_job(fake.project_id, job_id))
    assert routes(fake) == [("job", 503), ("job", 200)]
    assert 0.18 <= elapsed < 1.5


@pytest.mark.parametrize(
    ("status", "error", "route"),
    [
        (429, RateLimitError, "job"),
        (503, ServerError, "job"),
        (500, ServerError, "project"),
        (502, ServerError, "attachments"),
        (408, APIError, "job"),
    ],
)
def test_retries_exhausted_say_how_many_attempts(
    client: PlaymentClient, fake: FakePlaymentServer, status: int, error: type[APIError], route: str
) -> None:
    job_id = add_job(fake)
    fake.add_fault(route, status=status, times=None)
    calls: dict[str, Callable[[], Any]] = {
        "job": lambda: client.get_job(fake.project_id, job_id),
        "project": lambda: client.get_project(fake.project_id),
        "attachments": lambda: client.download(LEGACY_URL),
    }
    with pytest.raises(error) as info:
        calls[route]()
    assert type(info.value) is error
    assert (info.value.status_code, info.value.attempts) == (status, ATTEMPTS)
    assert f"after {ATTEMPTS} attempts" in str(info.value)
    assert routes(fake) == [(route, status)] * ATTEMPTS


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_status_then_success(client: PlaymentClient, fake: FakePlaymentServer, status: int) -> None:
    job_id = add_job(fake)
    fake.add_fault("job", status=status)
    assert client.get_job(fake.project_id, job_id).job_id == job_id
    assert routes(fake) == [("job", status), ("job", 200)]


@pytest.mark.parametrize(
    ("status", "code", "error", "attempts"),
    [
        (400, "auth-failure", AuthenticationError, 1),
        (400, "unauthorized", AuthenticationError, 1),
        (400, "FS_0006", NotFoundError, 1),
        (400, "GE_0001", APIError, 1),
        (400, "invalid_request_error", APIError, 1),
        (400, "FS_0000", ServerError, ATTEMPTS),  # Playment's "try later" codes are retried
        (400, "FS_0008", ServerError, ATTEMPTS),
        (400, "api_error", ServerError, ATTEMPTS),
        (401, None, AuthenticationError, 1),
        (401, "unauthorized", AuthenticationError, 1),
        (403, None, AuthenticationError, 1),
        (404, None, NotFoundError, 1),
        (404, "FS_0006", NotFoundError, 1),
        (405, None, APIError, 1),
        (422, "GE_0001", APIError, 1),
        (503, "FS_0006", NotFoundError, 1),  # the code says "permanent": no retry
    ],
)
def test_error_bodies_map_to_subclasses(
    client: PlaymentClient,
    fake: FakePlaymentServer,
    status: int,
    code: str | None,
    error: type[APIError],
    attempts: int,
) -> None:
    job_id = add_job(fake)
    fake.add_fault("job", status=status, error_code=code, times=None)
    with pytest.raises(APIError) as info:
        client.get_job(fake.project_id, job_id)
    assert type(info.value) is error
    assert (info.value.status_code, info.value.code, info.value.attempts) == (status, code, attempts)
    assert len(fake.requests) == attempts
    assert info.value.url == f"{fake.url}/v1/projects/{fake.project_id}/jobs/{job_id}"
    if code:
        assert f"code {code}" in str(info.value)


@pytest.mark.parametrize("code", ["FS_0000", "FS_0008", "api_error"])
def test_try_later_codes_then_success(client: PlaymentClient, fake: FakePlaymentServer, code: str) -> None:
    job_id = add_job(fake)
    fake.add_fault("job", status=400, error_code=code, times=2)
    assert client.get_job(fake.project_id, job_id).status == "completed"
    assert routes(fake) == [("job", 400), ("job", 400), ("job", 200)]


@pytest.mark.parametrize("route", ["job", "attachments", "storage"])
def test_dropped_connection_is_retried(client: PlaymentClient, fake: FakePlaymentServer, route: str) -> None:
    job = client.get_job(fake.project_id, add_job(fake))
    fake.clear_requests()
    fake.add_fault(route, drop=True)
    if route == "job":
        assert client.get_job(fake.project_id, job.job_id) == job
    else:
        assert client.get_result(job).format == "legacy"
    assert (route, None) in routes(fake)
    assert routes(fake)[-1][1] == 200


def test_dropped_connections_exhaust_retries(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    job_id = add_job(fake)
    fake.add_fault("job", drop=True, times=None)
    with pytest.raises(APIError) as info:
        client.get_job(fake.project_id, job_id)
    assert (info.value.status_code, info.value.attempts) == (None, ATTEMPTS)
    assert f"after {ATTEMPTS} attempts" in str(info.value)
    assert routes(fake) == [("job", None)] * ATTEMPTS


def test_timeout_is_retried_then_succeeds(make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer) -> None:
    client = make_client(timeout=0.25)
    job_id = add_job(fake)
    fake.add_fault("job", latency=2.0)
    job, elapsed = _timed(lambda: client.get_job(fake.project_id, job_id))
    assert job.job_id == job_id
    assert 0.25 <= elapsed < 1.5  # the slow answer was not waited for


def test_timeouts_exhaust_retries(make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer) -> None:
    client = make_client(timeout=0.2)
    job_id = add_job(fake)
    fault = fake.add_fault("job", latency=0.5, times=None)
    with pytest.raises(APIError) as info:
        client.get_job(fake.project_id, job_id)
    assert (info.value.status_code, info.value.attempts) == (None, ATTEMPTS)
    assert "Timeout" in str(info.value) and f"after {ATTEMPTS} attempts" in str(info.value)
    assert fault.fired == ATTEMPTS


def test_download_timeout_is_retried(make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer) -> None:
    client = make_client(timeout=0.25)
    url = hosted(fake, "slow.bin", b"x" * 1000)
    fake.add_fault("storage", latency=0.8)
    assert client.download(url) == b"x" * 1000
    assert [r for r, _ in routes(fake)].count("attachments") == 2


@pytest.mark.parametrize("route", ["storage", "job"])
def test_slow_body_within_timeout(
    make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer, route: str
) -> None:
    # 0.8 s in all, but a chunk every 0.04 s: the timeout is per read, not per download.
    client = make_client(timeout=0.4)
    job = client.get_job(fake.project_id, add_job(fake))
    content = bytes(range(256)) * 64
    url = hosted(fake, "slow-body.bin", content)
    fake.clear_requests()
    fake.add_fault(route, slow_body=0.8)
    if route == "storage":
        body, elapsed = _timed(lambda: client.download(url))
        assert body == content
    else:
        again, elapsed = _timed(lambda: client.get_job(fake.project_id, job.job_id))
        assert again == job
    assert elapsed >= 0.7
    assert len([r for r in fake.requests if r.route == route]) == 1  # no retry was needed


# ------------------------------------------------------------------------------------------- downloads


@pytest.mark.parametrize("route", ["storage", "direct", "job"])
def test_truncated_body_is_retried_never_returned(client: PlaymentClient, fake: FakePlaymentServer, route: str) -> None:
    content = b"0123456789" * 100
    url = (
        fake.put_file(fake.direct_url("own/file.bin"), content) if route == "direct" else hosted(fake, "t.bin", content)
    )
    job_id = add_job(fake)
    fake.clear_requests()
    fake.add_fault(route, truncate=True)
    if route == "job":
        assert client.get_job(fake.project_id, job_id).job_id == job_id
    else:
        assert client.download(url) == content
    assert [s for r, s in routes(fake) if r == route] == [200, 200]


def test_always_truncated_body_fails(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    url = hosted(fake, "t.bin", b"x" * 1000)
    fake.add_fault("storage", truncate=True, times=None)
    with pytest.raises(DownloadError) as info:
        client.download(url)
    assert info.value.attempts == ATTEMPTS
    assert info.value.url == url
    assert "bytes" in str(info.value) and f"after {ATTEMPTS} attempts" in str(info.value)


def test_attachment_routes(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    files = {
        f"{PLAYMENT_STORAGE}/a/cloud.pcd": b"playment-hosted",
        "s3://customer-bucket/scans/0001.pcd": b"from s3",
        "gs://customer-bucket/scans/0002.pcd": b"from gcs",
    }
    for url, content in files.items():
        fake.put_file(url, content)
    own = fake.put_file(fake.direct_url("mine/cloud.pcd"), b"customer's own server")
    for url, content in files.items():
        fake.clear_requests()
        assert client.download(url) == content
        assert routes(fake) == [("attachments", 302), ("storage", 200)]
        assert fake.requests[0].query == {"url": url}
    fake.clear_requests()
    assert client.download(own) == b"customer's own server"
    assert routes(fake) == [("direct", 200)]  # fetched directly, never through attachments


def test_unknown_attachment(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    with pytest.raises(NotFoundError) as info:
        client.download(f"{PLAYMENT_STORAGE}/never/uploaded.pcd?X-Amz-Signature=abc")
    assert (info.value.status_code, info.value.code, info.value.attempts) == (400, "FS_0006", 1)
    assert info.value.url == f"{fake.url}/v1/attachments"  # no query string: it names the file's URL
    assert "X-Amz-Signature" not in str(info.value)
    assert routes(fake) == [("attachments", 400)]


def test_file_missing_on_storage_or_own_server(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    with pytest.raises(NotFoundError):
        client.download(fake.direct_url("nothing-here.pcd"))
    assert routes(fake) == [("direct", 404)]


def test_own_server_refusing_is_not_re_signed(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    url = fake.put_file(fake.direct_url("private.pcd"), b"x")
    fake.add_fault("direct", status=403, times=None)
    with pytest.raises(DownloadError, match="HTTP 403"):
        client.download(url)
    assert routes(fake) == [("direct", 403)]


def test_expired_signature_asks_again(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    url = hosted(fake, "cloud.pcd", b"points")
    fake.add_fault("storage", status=403)  # S3's answer to an expired signature
    assert client.download(url) == b"points"
    assert routes(fake) == [("attachments", 302), ("storage", 403), ("attachments", 302), ("storage", 200)]
    signatures = [r.query["signature"] for r in fake.requests if r.route == "storage"]
    assert signatures[0] != signatures[1]


def test_signature_expiring_in_flight(make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer) -> None:
    client = make_client()
    fake.signed_url_ttl = 0.8
    url = hosted(fake, "cloud.pcd", b"points")
    fake.add_fault("storage", latency=1.2)  # the first signed URL is stale when the storage checks it
    assert client.download(url) == b"points"
    assert routes(fake) == [("attachments", 302), ("storage", 403), ("attachments", 302), ("storage", 200)]


def test_expired_signatures_are_bounded(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    fake.signed_url_ttl = 0  # every signed URL is already expired
    url = hosted(fake, "cloud.pcd", b"points")
    with pytest.raises(DownloadError) as info:
        client.download(url)
    assert info.value.attempts == ATTEMPTS
    assert "403" in str(info.value)
    # Each attempt asks for a signature at most twice.
    assert [r for r, _ in routes(fake)] == ["attachments", "storage"] * 2 * ATTEMPTS


def test_size_cap(make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer) -> None:
    client = make_client(max_download_bytes=100)
    at_cap = hosted(fake, "at-cap.bin", b"a" * 100)
    over = hosted(fake, "over.bin", b"b" * 101)
    assert client.download(at_cap) == b"a" * 100
    fake.clear_requests()
    with pytest.raises(DownloadError, match="101 bytes, over the 100-byte cap"):
        client.download(over)
    assert routes(fake) == [("attachments", 302), ("storage", 200)]  # not retried


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "/etc/passwd", "relative/cloud.pcd", "FILE:///etc/hostname", "", "   "],
)
def test_local_files_are_refused_without_a_mapping(client: PlaymentClient, fake: FakePlaymentServer, url: str) -> None:
    with pytest.raises(DownloadError):
        client.download(url)
    assert fake.requests == []


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    (root / "sub").mkdir(parents=True)
    (root / "a.pcd").write_bytes(b"scan a")
    (root / "sub" / "b c.pcd").write_bytes(b"scan b")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    return root


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket/scans/a.pcd", b"scan a"),
        ("s3://bucket/scans/sub/b%20c.pcd", b"scan b"),
        ("s3://bucket/scans/sub/b c.pcd", b"scan b"),
        ("s3://bucket/scans/a.pcd?versionId=3", b"scan a"),
        ("s3://bucket/scans/sub/../a.pcd", b"scan a"),  # inside the root after normalising: fine
        ("file:///mnt/data/a.pcd", b"scan a"),
    ],
)
def test_local_roots(
    make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer, scans: Path, url: str, expected: bytes
) -> None:
    client = make_client(local_roots={"s3://bucket/scans/": scans, "file:///mnt/data/": str(scans)})
    assert client.download(url) == expected
    assert fake.requests == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://bucket/scans/../secret.txt", "escapes its local root"),
        ("s3://bucket/scans/%2e%2e/secret.txt", "escapes its local root"),
        ("s3://bucket/scans/sub/../../secret.txt", "escapes its local root"),
        ("s3://bucket/scans/missing.pcd", "cannot read local file"),
        ("s3://bucket/scans/sub", "cannot read local file"),  # a folder
        ("s3://bucket/scans/big.pcd", "10001 bytes, over the 10000-byte cap"),
        ("file:///etc/passwd", "refusing to read a local file"),
    ],
)
def test_local_roots_refuse(
    make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer, scans: Path, url: str, message: str
) -> None:
    (scans / "big.pcd").write_bytes(b"9" * 10_001)
    client = make_client(local_roots={"s3://bucket/scans/": scans}, max_download_bytes=10_000)
    with pytest.raises(DownloadError, match=message):
        client.download(url)
    assert fake.requests == []


def test_unmapped_s3_goes_through_attachments(
    make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer, scans: Path
) -> None:
    client = make_client(local_roots={"s3://bucket/scans/": scans})
    fake.put_file("s3://bucket/other/a.pcd", b"remote")
    assert client.download("s3://bucket/other/a.pcd") == b"remote"
    assert [r for r, _ in routes(fake)] == ["attachments", "storage"]


# ------------------------------------------------------------------------------------------- a scripted server


class _Scripted(BaseHTTPRequestHandler):
    """Answers what the test scripted for each path: for responses the fake server cannot give."""

    protocol_version = "HTTP/1.1"
    script: ClassVar[dict[str, Callable[[BaseHTTPRequestHandler], None]]] = {}
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.hits.append(path)
        self.script[path](self)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""


def _json(status: int, payload: Any) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def _chunked(size: int) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for start in range(0, size, 1000):
            chunk = b"z" * min(1000, size - start)
            handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    return answer


def _redirect(location: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


@pytest.fixture
def scripted() -> Iterator[tuple[str, dict[str, Callable[[BaseHTTPRequestHandler], None]], list[str]]]:
    script: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
    hits: list[str] = []
    handler = type("Handler", (_Scripted,), {"script": script, "hits": hits})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script, hits
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    ("payload", "error", "attempts"),
    [
        # HTTP 200 with Playment's failure body: the code decides, and a permanent one is not retried.
        ({"success": False, "error": {"code": "GE_0001", "message": "bad"}}, APIError, 1),
        ({"success": False, "error": {"code": "auth-failure", "message": "no"}}, AuthenticationError, 1),
        ({"success": False, "error": {"code": "FS_0008", "message": "later"}}, ServerError, ATTEMPTS),
        ({"success": False}, APIError, 1),
    ],
)
def test_failure_body_with_http_200(
    scripted: tuple[str, dict[str, Any], list[str]], payload: Any, error: type[APIError], attempts: int
) -> None:
    base, script, hits = scripted
    script["/v1/projects/p/jobs/j"] = _json(200, payload)
    with PlaymentClient(KEY, base_url=base, retry=FAST) as client, pytest.raises(APIError) as info:
        client.get_job("p", "j")
    assert type(info.value) is error
    assert (info.value.status_code, info.value.attempts) == (200, attempts)
    assert len(hits) == attempts


def test_non_json_success_is_a_format_error(scripted: tuple[str, dict[str, Any], list[str]]) -> None:
    base, script, hits = scripted
    script["/v1/projects/p/details"] = lambda h: (
        h.send_response(200),
        h.send_header("Content-Length", "4"),
        h.end_headers(),
        h.wfile.write(b"<ok>"),
    )
    with PlaymentClient(KEY, base_url=base, retry=FAST) as client, pytest.raises(PlaymentFormatError, match="not JSON"):
        client.get_project("p")
    assert hits == ["/v1/projects/p/details"]


def test_size_cap_without_content_length(scripted: tuple[str, dict[str, Any], list[str]]) -> None:
    base, script, _ = scripted
    script["/direct/small"] = _chunked(5000)
    script["/direct/big"] = _chunked(50_000)
    with PlaymentClient(KEY, base_url=base, retry=FAST, max_download_bytes=10_000) as client:
        assert client.download(f"{base}/direct/small") == b"z" * 5000
        with pytest.raises(DownloadError, match="exceeds the 10000-byte cap"):
            client.download(f"{base}/direct/big")


def test_attachments_answering_with_a_body(
    scripted: tuple[str, dict[str, Any], list[str]], fake: FakePlaymentServer
) -> None:
    base, script, _ = scripted
    url = hosted(fake, "body.bin", b"signed in a body")
    script["/v1/attachments"] = _json(200, {"data": {"url": fake.signed_url(url)}, "success": True})
    with PlaymentClient(KEY, base_url=base, retry=FAST) as client:
        assert client.download(url) == b"signed in a body"
    assert [(r.route, r.sent_key) for r in fake.requests] == [("storage", False)]


def test_redirect_from_a_file_url_is_not_followed(
    scripted: tuple[str, dict[str, Any], list[str]], fake: FakePlaymentServer
) -> None:
    base, script, hits = scripted
    # A user's URL that redirects elsewhere: following it could hand the request (and a key) to anyone.
    script["/direct/moved"] = _redirect(f"{fake.url}/v1/projects/{fake.project_id}/details")
    with PlaymentClient(KEY, base_url=base, retry=FAST) as client, pytest.raises(DownloadError, match="redirect"):
        client.download(f"{base}/direct/moved")
    assert hits == ["/direct/moved"] and fake.requests == []


# ------------------------------------------------------------------------------------------- retry policy


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_future_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    parsed = parse_retry_after(when)
    assert parsed is not None and 28.5 <= parsed <= 30.0


def test_backoff_is_exponential_capped_and_jittered(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy(backoff=0.1, backoff_max=0.3, jitter=0.5, retry_after_max=5)
    monkeypatch.setattr(client_module.random, "random", lambda: 0.0)
    assert [round(policy.delay(n), 9) for n in range(4)] == [0.1, 0.2, 0.3, 0.3]
    monkeypatch.setattr(client_module.random, "random", lambda: 1.0)
    assert [round(policy.delay(n), 9) for n in range(4)] == [0.15, 0.3, 0.45, 0.45]
    # A server's hint replaces the backoff, up to the cap.
    assert policy.delay(0, "2") == 2.0
    assert policy.delay(3, "600") == 5.0
    assert policy.delay(0, "garbage") == pytest.approx(0.15)


@pytest.mark.parametrize(
    ("status", "code", "retry"),
    [
        (None, None, True),
        (408, None, True),
        (429, None, True),
        (500, None, True),
        (599, None, True),
        (400, "FS_0000", True),
        (400, "FS_0008", True),
        (400, "api_error", True),
        (200, "FS_0008", True),
        (400, None, False),
        (400, "GE_0001", False),
        (401, None, False),
        (404, None, False),
        (200, None, False),
    ],
)
def test_should_retry(status: int | None, code: str | None, retry: bool) -> None:
    assert RetryPolicy().should_retry(status, code) is retry


# ------------------------------------------------------------------------------------------- security


def _workload(client: PlaymentClient, fake: FakePlaymentServer) -> list[BaseException]:
    """Touch every endpoint and every failure path; return the exceptions raised along the way."""
    batch = fake.add_batch("b")
    job_ids = [fake.add_job(LEGACY_RESULT, batch_id=batch) for _ in range(4)]
    fake.put_file(LEGACY_URL, b"# .PCD v0.7\n")
    own = fake.put_file(fake.direct_url("own.pcd"), b"own")
    client.get_project(fake.project_id)
    assert len(list(client.iter_batch_jobs(fake.project_id, batch))) == 4
    job = client.get_job(fake.project_id, job_ids[0])
    client.get_result(job)
    client.download(LEGACY_URL)
    client.download(own)
    fake.add_fault("storage", status=403)
    fake.add_fault("job", status=429, retry_after=0)
    fake.add_fault("attachments", status=503)
    client.get_job(fake.project_id, job_ids[1])
    client.download(LEGACY_URL)
    failures: list[Callable[[], Any]] = [
        lambda: client.get_job(fake.project_id, "missing"),
        lambda: client.download(f"{PLAYMENT_STORAGE}/missing.pcd?sig=1"),
        lambda: client.download("file:///etc/passwd"),
        lambda: client.get_result(Job(fake.project_id, "j", "labelling")),
        lambda: PlaymentClient(KEY, base_url="http://api.playment.io"),
        lambda: PlaymentClient("wrong-key", base_url=fake.url, retry=FAST).get_project(fake.project_id),
    ]
    fake.add_fault("project", status=500, times=None, match="details")
    failures.append(lambda: client.get_project(fake.project_id))
    errors: list[BaseException] = []
    for failure in failures:
        with pytest.raises(PlaymentError) as info:
            failure()
        errors.append(info.value)
    fake.clear_faults()
    fake.add_fault("storage", truncate=True, times=None)
    with pytest.raises(DownloadError) as truncated:
        client.download(LEGACY_URL)
    errors.append(truncated.value)
    fake.clear_faults()
    return errors


def test_key_only_sent_to_the_api_host(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    _workload(client, fake)
    api_host = fake.url.split("://", 1)[1]
    records = fake.requests
    assert {r.route for r in records} >= {"project", "batch", "job", "attachments", "storage", "direct"}
    assert {r.method for r in records} == {"GET"}
    for record in records:
        if record.host != api_host:
            assert not record.sent_key, record
    assert not any(r.sent_key for r in records if r.route == "storage")
    assert sum(1 for r in records if r.route == "storage") >= 4
    assert all(r.sent_key for r in records if r.route in API_ROUTES)


def test_key_never_leaks(client: PlaymentClient, fake: FakePlaymentServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors = _workload(client, fake)
    assert len(errors) == 8
    assert {type(e) for e in errors} >= {NotFoundError, DownloadError, JobNotCompletedError, ConfigError, ServerError}
    assert KEY not in repr(client) and KEY not in str(client)
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            assert KEY not in str(chain) and KEY not in repr(chain)
            chain = chain.__cause__ or chain.__context__
        assert KEY.encode() not in pickle.dumps(error)
    # The logs were captured (retries, requests), and none holds the key or a signature.
    assert any("retry" in r.getMessage() for r in caplog.records)
    assert any(r.name == "playment_torch" and r.levelno == logging.DEBUG for r in caplog.records)
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in repr(record.args)
    assert KEY not in caplog.text
    assert "signature=" not in " ".join(r.getMessage() for r in caplog.records if r.name == "playment_torch")


@pytest.mark.parametrize(
    "error",
    [
        APIError("x", status_code=503, code="FS_0008", url="https://a.b/c?sig=1", attempts=4),
        NotFoundError("y", status_code=404, url="https://a.b/d"),
        DownloadError("z", url="https://s3/e?X-Amz-Signature=abc", attempts=2),
    ],
)
def test_errors_pickle_with_their_attributes(error: PlaymentError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    for name in ("status_code", "code", "url", "attempts"):
        assert getattr(copy, name, None) == getattr(error, name, None)
    assert "sig" not in str(error).split("(")[-1].replace("signature", "")  # query strings are stripped


def test_client_pickles_without_its_session(client: PlaymentClient, fake: FakePlaymentServer) -> None:
    client.get_project(fake.project_id)
    copy = pickle.loads(pickle.dumps(client))
    assert copy._session is None
    assert copy.get_project(fake.project_id).project_id == fake.project_id
    assert copy._http() is not client._http()
    copy.close()


# ------------------------------------------------------------------------------------------- concurrency


def test_one_session_shared_by_threads(client: PlaymentClient) -> None:
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(client._http())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(s) for s in seen}) == 1


def test_a_forked_process_gets_its_own_session(client: PlaymentClient, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = client._http()
    real_pid = client_module.os.getpid()
    monkeypatch.setattr(client_module.os, "getpid", lambda: real_pid + 1)
    child = client._http()
    assert child is not parent and client._http() is child


def test_every_request_has_a_timeout(
    make_client: Callable[..., PlaymentClient], fake: FakePlaymentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(timeout=7.5)
    seen: list[tuple[str, Any, Any]] = []
    real_urlopen = urllib3.HTTPConnectionPool.urlopen

    # GETs go to urllib3's pool directly: every one of them passes here, with its timeout and redirect policy.
    def spy(self: urllib3.HTTPConnectionPool, method: str, url: str, **kwargs: Any) -> Any:
        timeout = kwargs.get("timeout")
        seen.append((url, (timeout.connect_timeout, timeout.read_timeout), kwargs.get("redirect")))
        return real_urlopen(self, method, url, **kwargs)

    monkeypatch.setattr(urllib3.HTTPConnectionPool, "urlopen", spy)
    _workload(client, fake)
    assert len(seen) >= 20
    # 30 s: the workload's wrong-key client, built with the default timeout.
    assert {(timeout, redirects) for _, timeout, redirects in seen} == {((7.5, 7.5), False), ((30.0, 30.0), False)}
    assert sum(timeout == (7.5, 7.5) for _, timeout, _ in seen) >= 20


def test_concurrent_downloads_scale(
    client: PlaymentClient, fake: FakePlaymentServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="urllib3")
    contents = {f"{PLAYMENT_STORAGE}/bulk/{i:04d}.bin": f"file {i} ".encode() * 50 for i in range(500)}
    for url, content in contents.items():
        fake.put_file(url, content)
    urls = list(contents)
    client.download(urls[0])  # connections warm
    fake.latency = 0.02

    sequential_n = 40
    start = time.monotonic()
    for url in urls[:sequential_n]:
        assert client.download(url) == contents[url]
    sequential = (time.monotonic() - start) / sequential_n

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        bodies = list(pool.map(client.download, urls))
    concurrent = (time.monotonic() - start) / len(urls)

    assert bodies == [contents[u] for u in urls]
    assert sequential >= 0.04  # two requests of 20 ms each
    assert sequential / concurrent >= 5, (sequential, concurrent)
    assert not any(r.status != 200 and r.route == "storage" for r in fake.requests)
    # The pool holds a connection per thread: none was thrown away for lack of room.
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


@pytest.mark.parametrize(
    ("url", "hosted"),
    [
        ("https://playment-data-uploads.s3.ap-south-1.amazonaws.com/a/b.pcd", True),
        ("https://s3.ap-south-1.amazonaws.com/playment-data-uploads/a/b.pcd", True),
        ("https://files.playment.io/a.json", True),
        ("s3://customer-bucket/scan.pcd", True),
        ("gs://customer-bucket/scan.pcd", True),
        ("https://s3.amazonaws.com/customer-bucket/scan.pcd", False),
        ("https://data.example.com/scan.pcd", False),
    ],
)
def test_which_urls_go_through_attachments(url: str, hosted: bool) -> None:
    client = PlaymentClient("k", base_url="http://127.0.0.1:1")
    assert client.is_playment_hosted(url) is hosted


def test_private_files_on_any_host_go_through_attachments(fake: FakePlaymentServer, client: PlaymentClient) -> None:
    # The seed page's own mask URL is on a host the client does not know as Playment's: a mask is private anyway.
    url = "https://xyz.s3.com/123.txt"
    fake.put_file(url, b"[16, 58, 58]")
    assert not client.is_playment_hosted(url)
    assert client.download(url, private=True) == b"[16, 58, 58]"
    assert [(r.route, r.sent_key) for r in fake.requests] == [("attachments", True), ("storage", False)]


@pytest.mark.parametrize("key", ["sec ret", "secret\nKEY", "sécret", "secret\x00"])
def test_keys_no_header_can_carry_are_refused_without_echo(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        PlaymentClient(key, base_url="http://127.0.0.1:1")
    assert "secret" not in str(info.value) and "KEY" not in str(info.value)


@pytest.mark.parametrize("base_url", ["http://[::1", "http://127.0.0.1:notaport"])
def test_malformed_base_url_is_a_config_error(base_url: str) -> None:
    with pytest.raises(ConfigError, match="not a valid URL"):
        PlaymentClient(KEY, base_url=base_url)


@pytest.mark.parametrize("url", ["http://[::1/x", "https://host:port/x"])
def test_malformed_download_url_is_a_download_error(client: PlaymentClient, url: str) -> None:
    with pytest.raises(DownloadError, match="malformed URL"):
        client.download(url)


def test_request_errors_that_retrying_cannot_fix_fail_at_once(
    fake: FakePlaymentServer, client: PlaymentClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise ValueError("Invalid header value b'x'")  # what http.client raises for a header it cannot send

    monkeypatch.setattr(urllib3.HTTPConnectionPool, "urlopen", refuse)
    with pytest.raises(DownloadError, match=r"refused before sending \(ValueError\)"):
        client.download(fake.direct_url("a.bin"))
    assert len(calls) == 1
