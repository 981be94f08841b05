"""FakePlaymentServer, exercised with a plain ``requests`` client (not the library's client)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from playment_torch.errors import ConfigError, PlaymentError
from playment_torch.testing.server import PLAYMENT_STORAGE, FakePlaymentServer

CURRENT_RESULT = {
    "annotation_data": {
        "annotations": [
            {"_id": "a1", "label": "car", "label_key": 1, "frame_id": "0"},
            {"_id": "a2", "label": "road", "label_key": 2, "frame_id": "0"},
            {"_id": "a3", "label": "car", "label_key": 1, "frame_id": "1"},
        ],
        "frames": [{"_id": "0"}, {"_id": "1"}],
        "masks": [],
    },
    "sensor_data": {"frames": [{"frame_id": "0", "sensors": []}, {"frame_id": "1", "sensors": []}]},
}
LEGACY_RESULT = {
    "legend": [{"id": "c1", "text": "car", "color": "#f00", "label_key": 1, "value": 1}],
    "url": f"{PLAYMENT_STORAGE}/legacy/cloud.pcd",
}
JOB_KEYS = {
    "project_id",
    "reference_id",
    "job_id",
    "batch_id",
    "status",
    "work_flow_id",
    "priority_weight",
    "tag",
    "result",
}
BATCH_KEYS = {
    "id",
    "name",
    "description",
    "is_default",
    "total_jobs",
    "completed_jobs",
    "total_frames",
    "completed_frames",
    "annotations",
    "created_at",
    "status",
}


@pytest.fixture
def server() -> Iterator[FakePlaymentServer]:
    with FakePlaymentServer(page_size=3) as fake:
        yield fake


def api(server: FakePlaymentServer, path: str, *, key: str | None = "<default>", **kwargs: object) -> requests.Response:
    headers = {} if key is None else {"x-api-key": server.api_key if key == "<default>" else key}
    return requests.get(f"{server.url}{path}", headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


def project_path(server: FakePlaymentServer, suffix: str) -> str:
    return f"/v1/projects/{server.project_id}{suffix}"


def error_of(response: requests.Response) -> tuple[int, str]:
    body = response.json()
    assert body["success"] is False
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return response.status_code, body["error"]["code"]


def signed_location(server: FakePlaymentServer, url: str) -> str:
    response = api(server, "/v1/attachments", params={"url": url}, allow_redirects=False)
    assert response.status_code == 302
    return response.headers["Location"]


# ------------------------------------------------------------------------------------------- envelopes


def test_project_details_envelope(server: FakePlaymentServer) -> None:
    batch = server.add_batch("night drive", batch_id="b-night")
    server.add_job(CURRENT_RESULT, batch_id=batch)
    server.add_job(LEGACY_RESULT, batch_id=batch, status="in_progress")
    server.add_job(LEGACY_RESULT)  # default batch
    body = api(server, project_path(server, "/details")).json()
    assert body["success"] is True
    data = body["data"]
    assert data["name"] == "Synthetic LiDAR"
    assert "base" in data
    batches = {b["id"]: b for b in data["batches"]}
    assert len(batches) == 2
    for entry in batches.values():
        assert set(entry) == BATCH_KEYS
    night = batches["b-night"]
    assert (night["name"], night["is_default"]) == ("night drive", False)
    assert (night["total_jobs"], night["completed_jobs"]) == (2, 1)
    assert (night["total_frames"], night["completed_frames"]) == (3, 2)
    assert night["annotations"] == 3
    default = next(b for b in batches.values() if b["is_default"])
    assert (default["total_jobs"], default["completed_jobs"], default["total_frames"]) == (1, 1, 1)


def test_job_envelope_and_result_url(server: FakePlaymentServer) -> None:
    job_id = server.add_job(CURRENT_RESULT, job_id="job-1", reference_id="drive-7")
    body = api(server, project_path(server, "/jobs/job-1")).json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) == JOB_KEYS
    assert (data["job_id"], data["project_id"], data["reference_id"], data["status"]) == (
        job_id,
        server.project_id,
        "drive-7",
        "completed",
    )
    assert data["result"].startswith(PLAYMENT_STORAGE + "/")
    assert data["result"].endswith(".json")


@pytest.mark.parametrize("result", [CURRENT_RESULT, LEGACY_RESULT], ids=["current", "legacy"])
def test_result_formats_roundtrip_through_attachments(server: FakePlaymentServer, result: dict) -> None:
    server.add_job(result, job_id="j")
    result_url = api(server, project_path(server, "/jobs/j")).json()["data"]["result"]
    response = requests.get(signed_location(server, result_url), timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == result
    listing = api(server, project_path(server, f"/batch/{server.add_batch('x')}"))
    assert listing.json()["data"]["jobs"] == []


@pytest.mark.parametrize("status", ["pending", "in_progress", "rejected", "skipped"])
def test_jobs_not_completed_have_empty_result(server: FakePlaymentServer, status: str) -> None:
    server.add_job(CURRENT_RESULT, job_id="j", status=status)
    data = api(server, project_path(server, "/jobs/j")).json()["data"]
    assert (data["status"], data["result"]) == (status, "")
    server.set_job_status("j", "completed")
    data = api(server, project_path(server, "/jobs/j")).json()["data"]
    assert data["status"] == "completed" and data["result"].startswith(PLAYMENT_STORAGE)


def test_replace_result_moves_to_a_new_url(server: FakePlaymentServer) -> None:
    server.add_job(CURRENT_RESULT, job_id="j")
    old = api(server, project_path(server, "/jobs/j")).json()["data"]["result"]
    new = server.replace_result("j", LEGACY_RESULT, {f"{PLAYMENT_STORAGE}/legacy/cloud.pcd": b"pcd"})
    assert new != old
    assert api(server, project_path(server, "/jobs/j")).json()["data"]["result"] == new
    assert requests.get(signed_location(server, new), timeout=10).json() == LEGACY_RESULT
    assert requests.get(signed_location(server, LEGACY_RESULT["url"]), timeout=10).content == b"pcd"


# ------------------------------------------------------------------------------------------- pagination


@pytest.mark.parametrize(("n_jobs", "page_sizes"), [(10, [3, 3, 3, 1]), (9, [3, 3, 3]), (7, [3, 3, 1]), (2, [2])])
def test_pagination(server: FakePlaymentServer, n_jobs: int, page_sizes: list[int]) -> None:
    batch = server.add_batch("b")
    added = [server.add_job(LEGACY_RESULT, batch_id=batch, reference_id=f"r{i}") for i in range(n_jobs)]
    seen, sizes, token = [], [], None
    while True:
        params = {} if token is None else {"page_token": token}
        body = api(server, project_path(server, f"/batch/{batch}"), params=params).json()
        data = body["data"]
        assert body["success"] is True
        assert (data["id"], data["project_id"], data["name"]) == (batch, server.project_id, "b")
        for job in data["jobs"]:
            assert set(job) == {"id", "reference_id", "status", "frames", "annotations"}
        seen += [job["id"] for job in data["jobs"]]
        sizes.append(len(data["jobs"]))
        token = data["next_page_token"]
        assert isinstance(token, str)
        if not token:
            break
    assert sizes == page_sizes
    assert seen == added  # stable insertion order, nothing repeated or lost


def test_pages_are_stable_and_tokens_opaque(server: FakePlaymentServer) -> None:
    batch = server.add_batch("b")
    for _ in range(5):
        server.add_job(None, batch_id=batch)
    first = api(server, project_path(server, f"/batch/{batch}")).json()["data"]
    again = api(server, project_path(server, f"/batch/{batch}"), params={"page_token": ""}).json()["data"]
    assert first == again
    token = first["next_page_token"]
    assert token and not token.isdigit()
    second = api(server, project_path(server, f"/batch/{batch}"), params={"page_token": token}).json()["data"]
    assert [j["id"] for j in second["jobs"]] != [j["id"] for j in first["jobs"]]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("token", ["%%%", "not-a-token", _b64("offset:-1"), _b64("offset:99"), _b64("page:3")])
def test_bad_page_token(server: FakePlaymentServer, token: str) -> None:
    batch = server.add_batch("b")
    server.add_job(None, batch_id=batch)
    response = api(server, project_path(server, f"/batch/{batch}"), params={"page_token": token})
    assert error_of(response) == (400, "invalid_request_error")


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("suffix", ["/details", "/batch/b", "/jobs/j"])
@pytest.mark.parametrize(("key", "expected"), [(None, (401, "unauthorized")), ("wrong", (400, "auth-failure"))])
def test_auth_failures(server: FakePlaymentServer, suffix: str, key: str | None, expected: tuple) -> None:
    server.add_batch("b", batch_id="b")
    server.add_job(None, job_id="j")
    assert error_of(api(server, project_path(server, suffix), key=key)) == expected
    assert api(server, project_path(server, suffix)).status_code == 200


@pytest.mark.parametrize(("key", "expected"), [(None, (401, "unauthorized")), ("wrong", (400, "auth-failure"))])
def test_attachments_need_the_key(server: FakePlaymentServer, key: str | None, expected: tuple) -> None:
    server.put_file("s3://bucket/x.bin", b"x")
    response = api(server, "/v1/attachments", key=key, params={"url": "s3://bucket/x.bin"}, allow_redirects=False)
    assert error_of(response) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/v1/projects/nope/details",
        "/v1/projects/{p}/batch/nope",
        "/v1/projects/{p}/jobs/nope",
        "/v1/projects/nope/jobs/j",
    ],
)
def test_unknown_resources_are_fs_0006(server: FakePlaymentServer, path: str) -> None:
    server.add_job(None, job_id="j")
    response = api(server, path.format(p=server.project_id))
    assert error_of(response) == (400, "FS_0006")


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        ("/v1/attachments", {}, (400, "GE_0001")),
        ("/v1/attachments", {"url": ""}, (400, "GE_0001")),
        ("/v1/attachments", {"url": "https://nowhere.example/x"}, (400, "FS_0006")),
        ("/v1/projects//details", {}, (400, "GE_0001")),
        ("/v1/projects/{p}/jobs/", {}, (400, "GE_0001")),
        ("/v2/anything", {}, (404, "not_found")),
        ("/", {}, (404, "not_found")),
    ],
)
def test_parameter_and_path_errors(server: FakePlaymentServer, path: str, params: dict, expected: tuple) -> None:
    response = api(server, path.format(p=server.project_id), params=params, allow_redirects=False)
    assert error_of(response) == expected


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_only_get_is_allowed(server: FakePlaymentServer, method: str) -> None:
    response = requests.request(
        method,
        f"{server.url}{project_path(server, '/details')}",
        headers={"x-api-key": server.api_key},
        data=b"{}",
        timeout=10,
    )
    assert error_of(response) == (405, "method_not_allowed")
    # The connection is still usable afterwards (the request body was drained).
    assert api(server, project_path(server, "/details")).status_code == 200


def test_exception_in_handler_is_a_500_json_body(server: FakePlaymentServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.add_job(None, job_id="j")

    def explode(job_id: str) -> None:
        raise RuntimeError("boom with a secret detail")

    monkeypatch.setattr(server, "_job_details", explode)
    response = api(server, project_path(server, "/jobs/j"))
    assert error_of(response) == (500, "api_error")
    assert "Traceback" not in response.text and "secret detail" not in response.text
    assert server.requests[-1].status == 500
    monkeypatch.undo()
    assert api(server, project_path(server, "/jobs/j")).status_code == 200


@pytest.mark.parametrize("method", ["_route", "_take_fault"])
def test_exception_outside_the_response_builder_is_a_500_too(
    server: FakePlaymentServer, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    def explode(*args: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(server, method, explode)
    response = api(server, project_path(server, "/details"))
    assert error_of(response) == (500, "api_error")
    monkeypatch.undo()
    assert api(server, project_path(server, "/details")).status_code == 200


# ------------------------------------------------------------------------------------- attachments & storage


@pytest.mark.parametrize(
    "url",
    [f"{PLAYMENT_STORAGE}/job/frame_0.pcd", "s3://synthetic-bucket/a/b.pcd", "gs://weird/path with space"],
)
def test_attachments_redirect_to_the_storage_host(server: FakePlaymentServer, url: str) -> None:
    content = bytes(range(256)) * 40
    server.put_file(url, content)
    location = signed_location(server, url)
    parts = urllib.parse.urlsplit(location)
    assert parts.hostname == "localhost" != urllib.parse.urlsplit(server.url).hostname
    assert location.startswith(server.storage_url + "/signed/")
    query = urllib.parse.parse_qs(parts.query)
    assert set(query) == {"expires", "signature"}
    assert float(query["expires"][0]) == pytest.approx(time.time() + server.signed_url_ttl, abs=5)
    response = requests.get(location, timeout=10)
    assert response.status_code == 200
    assert response.content == content
    assert response.headers["Content-Length"] == str(len(content))
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["ETag"] == f'"{hashlib.md5(content).hexdigest()}"'
    record = server.requests[-1]
    assert (record.route, record.host, record.sent_key, record.status) == (
        "storage",
        parts.netloc,
        False,
        200,
    )


def test_following_the_redirect_with_requests_leaks_the_key_and_the_log_shows_it(
    server: FakePlaymentServer,
) -> None:
    server.put_file("s3://b/k", b"data")
    response = api(server, "/v1/attachments", params={"url": "s3://b/k"})
    assert response.content == b"data"
    attach, storage = server.requests[-2:]
    assert (attach.route, attach.status, attach.sent_key) == ("attachments", 302, True)
    assert (storage.route, storage.status, storage.sent_key) == ("storage", 200, True)


def test_signed_urls_are_fresh_each_time(server: FakePlaymentServer) -> None:
    server.put_file("s3://b/k", b"data")
    first = signed_location(server, "s3://b/k")
    time.sleep(0.002)
    second = signed_location(server, "s3://b/k")
    assert first != second
    assert urllib.parse.urlsplit(first).path == urllib.parse.urlsplit(second).path


def test_expired_signed_url_is_403(server: FakePlaymentServer) -> None:
    server.put_file("s3://b/k", b"data")
    server.signed_url_ttl = 0.3
    location = signed_location(server, "s3://b/k")
    assert requests.get(location, timeout=10).status_code == 200
    time.sleep(0.4)
    response = requests.get(location, timeout=10)
    assert response.status_code == 403
    assert "expired" in response.text
    server.signed_url_ttl = -1
    assert requests.get(signed_location(server, "s3://b/k"), timeout=10).status_code == 403


def _tamper(location: str, **changes: str | None) -> str:
    parts = urllib.parse.urlsplit(location)
    query = dict(urllib.parse.parse_qsl(parts.query))
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@pytest.mark.parametrize(
    "change",
    [
        {"signature": "0" * 64},
        {"signature": None},
        {"expires": None},
        {"expires": str(time.time() + 10**6)},  # extending the expiry breaks the signature
    ],
)
def test_tampered_signed_url_is_403(server: FakePlaymentServer, change: dict) -> None:
    server.put_file("s3://b/k", b"data")
    response = requests.get(_tamper(signed_location(server, "s3://b/k"), **change), timeout=10)
    assert response.status_code == 403
    assert response.content != b"data"


def test_signature_is_bound_to_the_blob(server: FakePlaymentServer) -> None:
    server.put_file("s3://b/one", b"one")
    server.put_file("s3://b/two", b"two")
    one, two = signed_location(server, "s3://b/one"), signed_location(server, "s3://b/two")
    swapped = urllib.parse.urlsplit(one)._replace(query=urllib.parse.urlsplit(two).query).geturl()
    assert requests.get(swapped, timeout=10).status_code == 403


def test_direct_urls_need_no_auth(server: FakePlaymentServer) -> None:
    url = server.direct_url("scans/frame 0.pcd")
    # A customer's own server is another host than the API's.
    assert url.startswith(f"{server.storage_url}/direct/") and not url.startswith(server.url)
    assert requests.get(url, timeout=10).status_code == 404
    server.put_file(url, b"direct bytes")
    response = requests.get(url, timeout=10)
    assert (response.status_code, response.content) == (200, b"direct bytes")
    assert (server.requests[-1].route, server.requests[-1].sent_key) == ("direct", False)
    # A direct URL is an ordinary hosted URL too.
    assert requests.get(signed_location(server, url), timeout=10).content == b"direct bytes"


def test_storage_rejects_other_paths_and_methods(server: FakePlaymentServer) -> None:
    server.put_file("s3://b/k", b"data")
    location = signed_location(server, "s3://b/k")
    assert requests.get(f"{server.storage_url}/elsewhere", timeout=10).status_code == 404
    assert requests.put(location, data=b"x", timeout=10).status_code == 405


def test_many_parallel_downloads_over_keep_alive(server: FakePlaymentServer) -> None:
    blobs = {f"s3://b/{i}.bin": bytes([i]) * (1000 + i * 997) for i in range(64)}
    for url, content in blobs.items():
        server.put_file(url, content)
    session = requests.Session()
    session.headers["x-api-key"] = server.api_key
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=16)
    session.mount("http://", adapter)

    def fetch(url: str) -> bytes:
        location = session.get(
            f"{server.url}/v1/attachments", params={"url": url}, allow_redirects=False, timeout=10
        ).headers["Location"]
        response = requests.get(location, timeout=10)
        assert response.raw.version == 11
        return response.content

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = dict(zip(blobs, pool.map(fetch, blobs), strict=True))
    assert results == blobs
    assert time.perf_counter() - started < 5.0


# ------------------------------------------------------------------------------------------- faults


def test_fault_latency_and_global_latency(server: FakePlaymentServer) -> None:
    server.add_fault("project", latency=0.3)
    started = time.perf_counter()
    assert api(server, project_path(server, "/details")).status_code == 200
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    api(server, project_path(server, "/details"))
    assert time.perf_counter() - started < 0.25
    server.latency = 0.2
    started = time.perf_counter()
    api(server, project_path(server, "/details"))
    assert time.perf_counter() - started >= 0.2


@pytest.mark.parametrize(
    ("status", "error_code", "retry_after", "header"),
    [
        (429, "rate_limited", 2, "2"),
        (429, None, 1.5, "1.5"),
        (429, None, "Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT"),
        (503, "FS_0000", 3.0, "3"),
        (500, "api_error", None, None),
        (502, None, None, None),
        (503, None, None, None),
    ],
)
def test_status_faults(
    server: FakePlaymentServer, status: int, error_code: str | None, retry_after: object, header: str | None
) -> None:
    fault = server.add_fault("job", status=status, error_code=error_code, retry_after=retry_after)  # type: ignore[arg-type]
    server.add_job(None, job_id="j")
    response = api(server, project_path(server, "/jobs/j"))
    assert response.status_code == status
    assert response.headers.get("Retry-After") == header
    if error_code is None:
        assert response.headers["Content-Type"] == "text/html"
        assert str(status) in response.text
    else:
        assert error_of(response) == (status, error_code)
    assert fault.fired == 1 and fault.remaining == 0
    assert api(server, project_path(server, "/jobs/j")).status_code == 200


@pytest.mark.parametrize("route", ["storage", "direct", "job"])
def test_truncated_body_is_detected_by_requests(server: FakePlaymentServer, route: str) -> None:
    content = b"0123456789" * 5000
    server.add_job(None, job_id="j")
    url = server.direct_url("big.bin")
    server.put_file(url, content)
    target = {
        "storage": signed_location(server, url),
        "direct": url,
        "job": f"{server.url}{project_path(server, '/jobs/j')}",
    }[route]
    server.add_fault(route, truncate=True)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        requests.get(target, headers={"x-api-key": server.api_key}, timeout=10)
    assert server.requests[-1].route == route
    assert requests.get(target, headers={"x-api-key": server.api_key}, timeout=10).status_code == 200


@pytest.mark.parametrize("pooled", [False, True])
def test_dropped_connection_is_a_connection_error(server: FakePlaymentServer, pooled: bool) -> None:
    session = requests.Session()
    session.headers["x-api-key"] = server.api_key
    details = f"{server.url}{project_path(server, '/details')}"
    if pooled:
        assert session.get(details, timeout=10).status_code == 200
    server.add_fault("project", drop=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(details, timeout=10)
    assert server.requests[-1].status is None
    assert session.get(details, timeout=10).status_code == 200


def test_slow_body_arrives_whole_but_late(server: FakePlaymentServer) -> None:
    content = bytes(range(256)) * 64
    server.put_file("s3://b/slow.bin", content)
    location = signed_location(server, "s3://b/slow.bin")
    server.add_fault("storage", slow_body=0.5)
    started = time.perf_counter()
    response = requests.get(location, timeout=10, stream=True)
    first_byte = time.perf_counter() - started
    body = response.content
    elapsed = time.perf_counter() - started
    assert body == content
    assert first_byte < 0.4 <= elapsed
    # With a read timeout shorter than the gaps between chunks, the client gives up.
    server.add_fault("storage", slow_body=2.0)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(location, timeout=(5, 0.05)).content  # noqa: B018


def test_times_countdown_and_forever(server: FakePlaymentServer) -> None:
    path = project_path(server, "/details")
    fault = server.add_fault("project", status=503, times=2)
    assert [api(server, path).status_code for _ in range(3)] == [503, 503, 200]
    assert (fault.fired, fault.remaining) == (2, 0)
    forever = server.add_fault("project", status=500, times=None)
    assert [api(server, path).status_code for _ in range(4)] == [500] * 4
    assert forever.remaining is None and forever.fired == 4
    server.clear_faults()
    assert api(server, path).status_code == 200


def test_faults_fire_in_order_added(server: FakePlaymentServer) -> None:
    path = project_path(server, "/details")
    server.add_fault(status=503, times=1)
    server.add_fault(status=429, retry_after=0, times=2)
    assert [api(server, path).status_code for _ in range(4)] == [503, 429, 429, 200]


def test_fault_match_and_route_filters(server: FakePlaymentServer) -> None:
    server.add_job(None, job_id="job-a")
    server.add_job(None, job_id="job-b")
    server.put_file(f"{PLAYMENT_STORAGE}/x/frame_7.pcd", b"seven")
    server.put_file(f"{PLAYMENT_STORAGE}/x/frame_8.pcd", b"eight")
    fault = server.add_fault("job", status=500, times=None, match="job-b")
    storage_fault = server.add_fault("storage", status=503, times=None, match="frame_7")
    attach_fault = server.add_fault("attachments", status=502, times=1, match="frame_8")
    assert api(server, project_path(server, "/jobs/job-a")).status_code == 200
    assert api(server, project_path(server, "/jobs/job-b")).status_code == 500
    assert api(server, project_path(server, "/details")).status_code == 200
    assert (
        api(
            server,
            "/v1/attachments",
            params={"url": f"{PLAYMENT_STORAGE}/x/frame_8.pcd"},
            allow_redirects=False,
        ).status_code
        == 502
    )
    assert requests.get(signed_location(server, f"{PLAYMENT_STORAGE}/x/frame_8.pcd"), timeout=10).content == b"eight"
    assert requests.get(signed_location(server, f"{PLAYMENT_STORAGE}/x/frame_7.pcd"), timeout=10).status_code == 503
    assert (fault.fired, storage_fault.fired, attach_fault.fired) == (1, 1, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"route": "nope"},
        {"status": 99},
        {"error_code": "x"},
        {"drop": True, "status": 500},
        {"drop": True, "truncate": True},
        {"times": -1},
        {"latency": -1.0},
    ],
)
def test_bad_fault_options(server: FakePlaymentServer, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        server.add_fault(**kwargs)


# ----------------------------------------------------------------------------------------- log, repr, config


def test_request_log(server: FakePlaymentServer) -> None:
    server.add_job(None, job_id="j")
    api(server, project_path(server, "/jobs/j"), params={"a": "1"})
    api(server, project_path(server, "/jobs/j"), key=None)
    records = server.requests
    assert [(r.method, r.path, r.query, r.route, r.status, r.sent_key) for r in records] == [
        ("GET", project_path(server, "/jobs/j"), {"a": "1"}, "job", 200, True),
        ("GET", project_path(server, "/jobs/j"), {}, "job", 401, False),
    ]
    assert records[0].host == urllib.parse.urlsplit(server.url).netloc
    assert records[0].time <= records[1].time <= time.monotonic()
    for text in [repr(records), repr(server), str(server)]:
        assert server.api_key not in text
    assert server.url in repr(server) and server.project_id in repr(server)
    records.clear()  # a snapshot: the server's log is untouched
    assert len(server.requests) == 2
    server.clear_requests()
    assert server.requests == []


def test_server_is_silent(server: FakePlaymentServer, capfd: pytest.CaptureFixture[str]) -> None:
    server.add_fault("project", drop=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        api(server, project_path(server, "/details"))
    api(server, "/nowhere")
    api(server, project_path(server, "/details"), key=None)
    requests.request("BREW", f"{server.url}/", timeout=10)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_config_errors() -> None:
    fake = FakePlaymentServer(api_key="k", project_id="p")
    with pytest.raises(PlaymentError):
        _ = fake.url
    with pytest.raises(ConfigError):
        fake.add_job(None, batch_id="missing")
    fake.add_job(None, job_id="j")
    with pytest.raises(ConfigError):
        fake.add_job(None, job_id="j")
    with pytest.raises(ConfigError):
        fake.set_job_status("missing", "completed")
    with pytest.raises(ConfigError):
        FakePlaymentServer(page_size=0)
    assert (fake.api_key, fake.project_id) == ("k", "p")
    random_a, random_b = FakePlaymentServer(), FakePlaymentServer()
    assert random_a.api_key != random_b.api_key and random_a.project_id != random_b.project_id


def _port_open(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


def test_clean_shutdown() -> None:
    baseline = threading.active_count()
    fake = FakePlaymentServer().start()
    assert fake.start() is fake  # idempotent
    fake.put_file("s3://b/k", b"x" * 10_000)
    session = requests.Session()  # keeps connections alive on both listeners
    session.headers["x-api-key"] = fake.api_key
    assert session.get(f"{fake.url}/v1/attachments", params={"url": "s3://b/k"}, timeout=10).status_code == 200
    fake.add_fault("project", latency=30)
    outcome: list[object] = []

    def slow_request() -> None:
        try:
            outcome.append(requests.get(f"{fake.url}/v1/projects/{fake.project_id}/details", timeout=60))
        except requests.exceptions.RequestException as exc:
            outcome.append(exc)

    slow = threading.Thread(target=slow_request)
    slow.start()
    time.sleep(0.1)
    assert threading.active_count() > baseline + 2
    url, storage_url = fake.url, fake.storage_url
    started = time.perf_counter()
    fake.stop()
    fake.stop()  # idempotent
    slow.join(10)
    assert time.perf_counter() - started < 5
    # The request caught sleeping in injected latency is hung up on, not answered.
    assert len(outcome) == 1 and isinstance(outcome[0], requests.exceptions.ConnectionError)
    assert threading.active_count() == baseline
    assert not _port_open(url) and not _port_open(storage_url)
    with pytest.raises(PlaymentError):
        fake.start()
    session.close()


def test_context_manager_stops(server: FakePlaymentServer) -> None:
    baseline = threading.active_count()
    with FakePlaymentServer() as inner:
        assert _port_open(inner.url) and _port_open(inner.storage_url)
        body = json.loads(
            requests.get(
                f"{inner.url}/v1/projects/{inner.project_id}/details",
                headers={"x-api-key": inner.api_key},
                timeout=10,
            ).content
        )
        assert body == {
            "data": {"name": "Synthetic LiDAR", "base": body["data"]["base"], "batches": []},
            "success": True,
        }
    assert not _port_open(inner.url)
    assert threading.active_count() == baseline
