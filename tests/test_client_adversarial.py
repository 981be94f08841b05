"""``PlaymentClient`` under attack and under faults the happy path never sees (issues 10, 11 and 13).

Each test drives the real HTTP stack: the fake Playment server, or a tiny scripted ``http.server`` (or raw socket)
in the test for answers the fake cannot give. Nothing of our own code is mocked.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from playment_torch.cache import cache_key
from playment_torch.client import PlaymentClient, RetryPolicy
from playment_torch.errors import (
    APIError,
    AuthenticationError,
    ConfigError,
    DownloadError,
    NotFoundError,
    PlaymentError,
    PlaymentFormatError,
    url_identity,
)
from playment_torch.models import Job
from playment_torch.testing.server import PLAYMENT_STORAGE, FakePlaymentServer

KEY = "pk-ADVERSARIAL-4c1e9a7f3b2d"
FAST = RetryPolicy(max_retries=3, backoff=0.01, backoff_max=0.05, retry_after_max=2)
ATTEMPTS = FAST.max_retries + 1
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake() -> Iterator[FakePlaymentServer]:
    with FakePlaymentServer(api_key=KEY) as server:
        yield server


def hosted(fake: FakePlaymentServer, name: str, content: bytes) -> str:
    url = f"{PLAYMENT_STORAGE}/{fake.project_id}/{name}"
    fake.put_file(url, content)
    return url


def chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# ------------------------------------------------------------------------------------------- a scripted server

Answer = Callable[[BaseHTTPRequestHandler], None]


class _Scripted(BaseHTTPRequestHandler):
    """Answers what the test scripted for each path, and records every request with the key it carried."""

    protocol_version = "HTTP/1.1"
    script: ClassVar[dict[str, Answer]] = {}
    hits: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.hits.append((self.path, self.headers.get("x-api-key")))
        answer = self.script.get(self.path.split("?", 1)[0])
        if answer is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        answer(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""


class Scripted:
    def __init__(self) -> None:
        self.script: dict[str, Answer] = {}
        self.hits: list[tuple[str, str | None]] = []
        handler = type("Handler", (_Scripted,), {"script": self.script, "hits": self.hits})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.close()


@pytest.fixture
def recorder() -> Iterator[Scripted]:
    """A second listener on another loopback port: the host that must never see the key."""
    server = Scripted()
    yield server
    server.close()


def raw(body: bytes, *, status: int = 200, headers: dict[str, str] | None = None, close: bool = False) -> Answer:
    """Send exactly these headers and bytes (no Content-Length unless given), then optionally hang up."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if close:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()

    return answer


def json_answer(status: int, payload: Any) -> Answer:
    body = json.dumps(payload).encode()
    return raw(body, status=status, headers={"Content-Type": "application/json", "Content-Length": str(len(body))})


# ------------------------------------------------------------------------------------------- 10.3 URL identity


@pytest.mark.parametrize(
    ("url", "identity"),
    [
        # S3 SigV4 (and its session token), S3 SigV2: gone; versionId names content and stays.
        (
            "https://b.s3.amazonaws.com/scan.pcd?versionId=2&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F"
            "&X-Amz-Date=20261201T000000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=abc"
            "&X-Amz-Security-Token=tok",
            "https://b.s3.amazonaws.com/scan.pcd?versionId=2",
        ),
        (
            "https://b.s3.amazonaws.com/a.pcd?AWSAccessKeyId=AK&Signature=s%3D&Expires=17",
            "https://b.s3.amazonaws.com/a.pcd",
        ),
        (
            "https://b.s3.amazonaws.com/a.pcd?x-amz-security-token=t&versionId=v1",
            "https://b.s3.amazonaws.com/a.pcd?versionId=v1",
        ),
        # GCS V4 and V2
        (
            "https://storage.googleapis.com/b/a.pcd?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=c"
            "&X-Goog-Date=d&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature=ff&generation=7",
            "https://storage.googleapis.com/b/a.pcd?generation=7",
        ),
        (
            "https://storage.googleapis.com/b/a.pcd?GoogleAccessId=x&Expires=1&Signature=y",
            "https://storage.googleapis.com/b/a.pcd",
        ),
        # Azure SAS: its short names go only together with a SAS signature
        (
            "https://acct.blob.core.windows.net/c/a.pcd?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-12-01&st=2026-11-30"
            "&spr=https&sig=Zm9v&skoid=1&sktid=2&skt=3&ske=4&sks=b&skv=5&sr=b&versionid=9",
            "https://acct.blob.core.windows.net/c/a.pcd?versionid=9",
        ),
        ("https://example.com/a.pcd?st=3&sp=2", "https://example.com/a.pcd?sp=2&st=3"),
        # CloudFront
        ("https://d1.cloudfront.net/a.pcd?Policy=p&Signature=s&Key-Pair-Id=K", "https://d1.cloudfront.net/a.pcd"),
        (
            "https://d1.cloudfront.net/a.pcd?Expires=1&Signature=s&Key-Pair-Id=K&rev=3",
            "https://d1.cloudfront.net/a.pcd?rev=3",
        ),
        # Playment's / the fake server's, case-insensitively; user info and fragment dropped, order canonical.
        (
            "HTTP://User:Pw@Files.Example.COM:8080/a.pcd?z=1&a=2&SIGNATURE=x&Expires=3#frag",
            "http://files.example.com:8080/a.pcd?a=2&z=1",
        ),
        ("https://h/a.pcd?b=2&a=1&a=0", "https://h/a.pcd?a=0&a=1&b=2"),
        ("https://h/a.pcd", "https://h/a.pcd"),
        ("s3://bucket/key/a.pcd?versionId=3", "s3://bucket/key/a.pcd?versionId=3"),
        ("no scheme here?signature=x", "no scheme here"),
    ],
)
def test_url_identity(url: str, identity: str) -> None:
    assert url_identity(url) == identity


def test_cache_keys_keep_versions_and_drop_signatures(fake: FakePlaymentServer) -> None:
    def key(url: str) -> str:
        return cache_key("points", project_id="p", job_id="j", frame_id="f", url=url)

    assert key("https://h/scan.pcd?versionId=1") != key("https://h/scan.pcd?versionId=2")
    assert key("https://h/scan.pcd?versionId=2&X-Amz-Signature=a") == key(
        "https://h/scan.pcd?X-Amz-Signature=b&versionId=2"
    )
    # Two real signatures of one file (the fake server's expires + signature) share one key.
    url = hosted(fake, "scan.pcd", b"pcd")
    first, second = fake.signed_url(url, ttl=10), fake.signed_url(url, ttl=20)
    assert first != second
    assert key(first) == key(second) and "signature" not in key(first) and "expires" not in key(first)


# ------------------------------------------------------------------------------------------- 10.4 encoded bodies

PAYLOAD = b"".join(b"%d,%d,%d\n" % (i, i * 7 % 13, i * 31 % 101) for i in range(20_000))


def deflate(data: bytes, *, wbits: int) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(PAYLOAD)),
        ("x-gzip", gzip.compress(PAYLOAD)),
        ("deflate", deflate(PAYLOAD, wbits=15)),
        ("deflate", deflate(PAYLOAD, wbits=-15)),  # raw deflate, as some servers send it
        ("gzip", gzip.compress(PAYLOAD[:1000]) + gzip.compress(PAYLOAD[1000:])),  # two gzip members
    ],
)
@pytest.mark.parametrize("in_place", [False, True])
def test_encoded_bodies_decode_whole(scripted: Scripted, coding: str, encoded: bytes, in_place: bool) -> None:
    scripted.script["/direct/a"] = raw(
        encoded, headers={"Content-Encoding": coding, "Content-Length": str(len(encoded))}
    )
    with PlaymentClient(KEY, base_url=scripted.url, retry=FAST) as client:
        assert client.download(f"{scripted.url}/direct/a", in_place=in_place) == PAYLOAD


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
@pytest.mark.parametrize("framing", ["honest-length", "no-length", "chunked"])
def test_truncated_compressed_stream_is_a_retried_download_error(scripted: Scripted, coding: str, framing: str) -> None:
    # A proxy or a server that cut the compressed stream short but framed what it sent correctly: HTTP says the
    # body is whole, only the decoder can tell. urllib3's own decoding returns the short text.
    encoded = gzip.compress(PAYLOAD) if coding == "gzip" else deflate(PAYLOAD, wbits=15)
    cut = encoded[: len(encoded) * 2 // 3]
    headers = {"Content-Encoding": coding}
    body = cut
    if framing == "honest-length":
        headers["Content-Length"] = str(len(cut))
    elif framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        body = f"{len(cut):x}\r\n".encode() + cut + b"\r\n0\r\n\r\n"
    scripted.script["/direct/cut"] = raw(body, headers=headers, close=framing == "no-length")
    with PlaymentClient(KEY, base_url=scripted.url, retry=FAST) as client, pytest.raises(DownloadError) as info:
        client.download(f"{scripted.url}/direct/cut")
    assert f"truncated {coding} stream" in str(info.value)
    assert info.value.attempts == ATTEMPTS and len(scripted.hits) == ATTEMPTS


def test_encoded_body_shorter_than_its_content_length_is_retried(scripted: Scripted) -> None:
    encoded = gzip.compress(PAYLOAD)
    calls = []

    def answer(handler: BaseHTTPRequestHandler) -> None:
        calls.append(1)
        sent = encoded if len(calls) > 1 else encoded[: len(encoded) // 2]
        raw(sent, headers={"Content-Encoding": "gzip", "Content-Length": str(len(encoded))}, close=True)(handler)

    scripted.script["/direct/a"] = answer
    with PlaymentClient(KEY, base_url=scripted.url, retry=FAST) as client:
        assert client.download(f"{scripted.url}/direct/a") == PAYLOAD
    assert len(calls) == 2


def test_gzip_bomb_is_capped_on_its_decoded_size(scripted: Scripted) -> None:
    bomb = gzip.compress(b"\0" * 5_000_000)  # ~5 KB on the wire
    scripted.script["/direct/bomb"] = raw(bomb, headers={"Content-Encoding": "gzip", "Content-Length": str(len(bomb))})
    client = PlaymentClient(KEY, base_url=scripted.url, retry=FAST, max_download_bytes=1_000_000)
    with client, pytest.raises(DownloadError, match="exceeds the 1000000-byte cap"):
        client.download(f"{scripted.url}/direct/bomb")
    assert len(scripted.hits) == 1  # a cap is not worth a retry


@pytest.mark.parametrize(
    ("coding", "body", "message"),
    [
        ("br", b"\x0b\x02\x80hi\x03", "unsupported Content-Encoding"),
        ("gzip, br", b"x", "unsupported Content-Encoding"),
        ("gzip", b"this is not gzip at all", "corrupt gzip stream"),
        ("deflate", deflate(b"abc", wbits=15) + b"trailing", "data after the end of the deflate stream"),
    ],
)
def test_bad_encodings_are_download_errors(scripted: Scripted, coding: str, body: bytes, message: str) -> None:
    scripted.script["/direct/x"] = raw(body, headers={"Content-Encoding": coding, "Content-Length": str(len(body))})
    with PlaymentClient(KEY, base_url=scripted.url, retry=FAST) as client, pytest.raises(DownloadError, match=message):
        client.download(f"{scripted.url}/direct/x")


def test_an_empty_body_with_a_content_encoding_is_empty(scripted: Scripted) -> None:
    # S3 serves an empty object stored with Content-Encoding: gzip as 0 bytes with that header.
    scripted.script["/direct/empty"] = raw(b"", headers={"Content-Encoding": "gzip", "Content-Length": "0"})
    with PlaymentClient(KEY, base_url=scripted.url, retry=FAST) as client:
        assert client.download(f"{scripted.url}/direct/empty") == b""


def test_only_decodable_encodings_are_advertised(scripted: Scripted) -> None:
    seen: list[str | None] = []

    def answer(handler: BaseHTTPRequestHandler) -> None:
        seen.append(handler.headers.get("Accept-Encoding"))
        raw(b"ok", headers={"Content-Length": "2"})(handler)

    scripted.script["/direct/a"] = answer
    with PlaymentClient(KEY, base_url=scripted.url, retry=FAST) as client:
        client.download(f"{scripted.url}/direct/a")
    assert seen == ["gzip, deflate"]


# ------------------------------------------------------------------------------------------- 10.7 backslash trick


def test_backslash_authority_never_carries_the_key_to_another_port(
    fake: FakePlaymentServer, recorder: Scripted
) -> None:
    # urllib.parse reads host 127.0.0.1 and the API's port; urllib3 (and so requests) connects to the recorder.
    api_port = fake.url.rsplit(":", 1)[1]
    recorder.script["/%5C@127.0.0.1:" + api_port + "/direct/x"] = raw(b"ok", headers={"Content-Length": "2"})
    tricky = f"http://127.0.0.1:{recorder.port}\\@127.0.0.1:{api_port}/direct/x"
    with PlaymentClient(KEY, base_url=fake.url, retry=FAST) as client, pytest.raises(DownloadError, match="backslash"):
        client.download(tricky)
    assert recorder.hits == [] and fake.requests == []


def test_attachments_redirect_with_a_backslash_never_carries_the_key(scripted: Scripted, recorder: Scripted) -> None:
    # A Location from the API itself (a compromised or buggy proxy) crafted to look like the API's origin.
    location = f"http://127.0.0.1:{recorder.port}\\@127.0.0.1:{scripted.port}/signed/x?signature=s"
    scripted.script["/v1/attachments"] = raw(b"", status=302, headers={"Location": location, "Content-Length": "0"})
    with PlaymentClient(KEY, base_url=scripted.url, retry=FAST) as client, pytest.raises(DownloadError):
        client.download("s3://bucket/scan.pcd")
    assert recorder.hits == []
    assert [key for _, key in scripted.hits] == [KEY]  # the attachments call itself, once: not retried


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{p}\\@127.0.0.1:{a}/x",
        "http://127.0.0.1:{p} @127.0.0.1:{a}/x",
        "http://127.0.0.1:{p}\t@127.0.0.1:{a}/x",
        "http://127.0.0.1:{a}/x\r\nx-api-key: y",
        "http://127.0.0.1:{a}/x\x00.pcd",
    ],
)
def test_ambiguous_urls_are_refused_before_any_request(fake: FakePlaymentServer, recorder: Scripted, url: str) -> None:
    url = url.format(p=recorder.port, a=fake.url.rsplit(":", 1)[1])
    with PlaymentClient(KEY, base_url=fake.url, retry=FAST) as client, pytest.raises(DownloadError) as info:
        client.download(url)
    assert info.value.attempts == 1
    assert recorder.hits == [] and fake.requests == []


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:1\\@127.0.0.1:2", "http://127.0.0.1:1 /x", "http://127.0.0.1:1/\x00"]
)
def test_ambiguous_base_url_is_a_config_error(base_url: str) -> None:
    with pytest.raises(ConfigError, match="not a valid URL"):
        PlaymentClient(KEY, base_url=base_url)


def test_urls_with_spaces_in_their_path_still_download(fake: FakePlaymentServer) -> None:
    # S3 keys with spaces are common and requests encodes them: only the authority must be unambiguous.
    url = fake.direct_url("my scan.pcd")
    fake.put_file(url, b"spaced")
    with PlaymentClient(KEY, base_url=fake.url, retry=FAST) as client:
        assert client.download(url.replace("%20", " ")) == b"spaced"


# ------------------------------------------------------------------------------------------- 10.8 echoed keys


def test_a_server_echoing_the_key_never_puts_it_in_an_error(
    fake: FakePlaymentServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.echo_key_in_errors = True
    errors: list[PlaymentError] = []
    with PlaymentClient("pk-WRONG-but-still-secret", base_url=fake.url, retry=FAST) as wrong:
        with pytest.raises(AuthenticationError) as auth:
            wrong.get_project(fake.project_id)
        errors.append(auth.value)
    with PlaymentClient(KEY, base_url=fake.url, retry=FAST) as client:
        with pytest.raises(NotFoundError) as missing:
            client.get_job(fake.project_id, "nope")
        errors.append(missing.value)
        fake.add_fault("job", status=503, error_code="FS_0008", times=None)
        with pytest.raises(APIError) as later:
            client.get_job(fake.project_id, "nope")
        errors.append(later.value)
    assert "invalid API key" in str(errors[0]) and "<redacted>" in str(errors[0])
    for error in errors:
        for link in chain(error):
            for secret in (KEY, "pk-WRONG-but-still-secret"):
                assert secret not in str(link) and secret not in repr(link)
        assert KEY.encode() not in pickle.dumps(error)
    assert any("retry" in r.getMessage() for r in caplog.records)  # the retried 503s were logged...
    assert KEY not in caplog.text and "pk-WRONG" not in caplog.text  # ...without the echoed key


@pytest.mark.parametrize(
    "message",
    [
        "bad request: x-api-key: sk-live-0123456789",
        "bad request, header X-API-KEY=sk-live-0123456789 refused",
        'bad request {"api_key": "sk-live-0123456789"}',
        "bad request: apikey='sk-live-0123456789'",
    ],
)
def test_key_looking_values_in_server_messages_are_redacted(scripted: Scripted, message: str) -> None:
    scripted.script["/v1/projects/p/details"] = json_answer(
        400, {"success": False, "error": {"code": "GE_0001", "message": message}}
    )
    with PlaymentClient(KEY, base_url=scripted.url, retry=FAST) as client, pytest.raises(APIError) as info:
        client.get_project("p")
    assert "sk-live-0123456789" not in str(info.value)
    assert "bad request" in str(info.value) and "<redacted>" in str(info.value)


def test_the_key_echoed_in_an_error_code_is_redacted(scripted: Scripted) -> None:
    scripted.script["/v1/projects/p/details"] = json_answer(
        400, {"success": False, "error": {"code": KEY, "message": "no"}}
    )
    with PlaymentClient(KEY, base_url=scripted.url, retry=FAST) as client, pytest.raises(APIError) as info:
        client.get_project("p")
    assert KEY not in str(info.value) and KEY not in repr(info.value.code)


# ------------------------------------------------------------------------------------------- 10.9 logs


def test_debug_logs_hold_no_signature_and_no_key(fake: FakePlaymentServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    urls = [hosted(fake, f"logs/{i}.bin", b"x" * (100 + i)) for i in range(4)]
    with PlaymentClient(KEY, base_url=fake.url, retry=FAST) as client:
        for url in urls:
            client.download(url)
        fake.add_fault("storage", status=500, times=1)
        client.download(urls[0])  # a retried signed URL
        client.get_project(fake.project_id)
    signatures = {r.query["signature"] for r in fake.requests if r.route == "storage"}
    expiries = {r.query["expires"] for r in fake.requests if r.route == "storage"}
    assert len(signatures) == 6
    urllib3_lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("GET /signed/" in line for line in urllib3_lines)  # urllib3 logged the signed requests...
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in signatures | expiries | {KEY}:
        assert secret not in text  # ...without their query strings
    assert "signature=" not in text and "expires=" not in text


def test_exception_chains_hold_no_signature(scripted: Scripted) -> None:
    # A signed URL on a host that refuses connections: requests' error text quotes the URL with its query.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    location = f"http://127.0.0.1:{port}/signed/x?expires=99&signature=SIGSECRET123"
    scripted.script["/v1/attachments"] = raw(b"", status=302, headers={"Location": location, "Content-Length": "0"})
    with PlaymentClient(KEY, base_url=scripted.url, retry=FAST) as client, pytest.raises(PlaymentError) as info:
        client.download("s3://bucket/scan.pcd")
    links = list(chain(info.value))
    assert len(links) >= 2  # the requests error is chained as the cause
    for link in links:
        assert "SIGSECRET123" not in str(link) and "SIGSECRET123" not in repr(link.args)


# ------------------------------------------------------------------------------------------- 10.10 pickles

_WORKER = """
import os, pickle, sys
client = pickle.loads(sys.stdin.buffer.read())
try:
    print(client.get_project(sys.argv[1]).name)
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def _worker(blob: bytes, project_id: str, key: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PLAYMENT_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    if key is not None:
        env["PLAYMENT_API_KEY"] = key
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, project_id], input=blob, capture_output=True, env=env, timeout=60, check=True
    )
    return done.stdout.decode().strip()


def test_a_key_from_the_environment_is_not_pickled(fake: FakePlaymentServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYMENT_API_KEY", KEY)
    client = PlaymentClient(base_url=fake.url, retry=FAST)
    assert client.get_project(fake.project_id).name == fake.project_name
    blob = pickle.dumps(client)
    assert KEY.encode() not in blob
    # A worker with the environment set reads its own key; one without fails on first use with a ConfigError.
    assert _worker(blob, fake.project_id, KEY) == fake.project_name
    missing = _worker(blob, fake.project_id, None)
    assert missing.startswith("ConfigError") and "PLAYMENT_API_KEY" in missing
    # In this process: the copy re-reads the environment, so a rotated key is picked up.
    monkeypatch.setenv("PLAYMENT_API_KEY", "pk-rotated")
    with pytest.raises(AuthenticationError):
        pickle.loads(blob).get_project(fake.project_id)


def test_an_explicit_key_is_pickled(fake: FakePlaymentServer) -> None:
    client = PlaymentClient(KEY, base_url=fake.url, retry=FAST)
    blob = pickle.dumps(client)
    assert KEY.encode() in blob  # documented: workers need it
    assert _worker(blob, fake.project_id, None) == fake.project_name


# ------------------------------------------------------------------------------------------- 10.11 deadline


def test_drip_fed_body_passes_its_deadline_and_is_retried(fake: FakePlaymentServer) -> None:
    url = fake.direct_url("drip.bin")
    fake.put_file(url, b"d" * 2000)
    fake.add_fault("direct", slow_body=8.0, times=1)  # 20 pieces, one every 0.4 s: every read is in time
    with PlaymentClient(KEY, base_url=fake.url, retry=FAST, timeout=5.0, download_deadline=0.5) as client:
        start = time.monotonic()
        assert client.download(url) == b"d" * 2000
        elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 4.0, elapsed  # without a deadline: 8 s
    assert [r.route for r in fake.requests] == ["direct", "direct"]


def test_a_body_that_never_finishes_in_time_fails(fake: FakePlaymentServer) -> None:
    url = hosted(fake, "drip.bin", b"d" * 2000)
    fake.add_fault("storage", slow_body=3.0, times=None)
    retry = RetryPolicy(max_retries=1, backoff=0.01)
    with PlaymentClient(KEY, base_url=fake.url, retry=retry, timeout=5.0, download_deadline=0.3) as client:
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"body too slow: .* over the 0\.3 s deadline") as info:
            client.download(url)
        assert time.monotonic() - start < 3.0  # without a deadline: 2 x 3 s
    assert info.value.attempts == 2


def test_an_api_answer_has_a_deadline_too(fake: FakePlaymentServer) -> None:
    fake.add_fault("project", slow_body=3.0, times=None)
    retry = RetryPolicy(max_retries=0)
    client = PlaymentClient(KEY, base_url=fake.url, retry=retry, timeout=5.0, download_deadline=0.3)
    with client, pytest.raises(APIError, match="body too slow"):
        client.get_project(fake.project_id)


def test_the_deadline_grows_with_the_size(fake: FakePlaymentServer) -> None:
    url = fake.direct_url("big-slow.bin")
    fake.put_file(url, b"b" * 4000)
    fake.add_fault("direct", slow_body=1.0, times=None)  # 4000 bytes in 1 s: over 0.3 s, but 4 KB/s
    client = PlaymentClient(
        KEY, base_url=fake.url, retry=RetryPolicy(max_retries=0), download_deadline=0.3, min_download_rate=2000
    )
    with client:
        assert client.download(url) == b"b" * 4000  # allowed 4000 / 2000 = 2 s


@pytest.mark.parametrize(
    "options",
    [
        {"download_deadline": 0},
        {"download_deadline": -1.0},
        {"min_download_rate": 0},
        {"rate_limit": 0},
        {"rate_limit": "fast"},
        {"breaker_threshold": -1},
    ],
)
def test_bad_reliability_options_are_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PlaymentClient(KEY, base_url="http://127.0.0.1:1", **options)


# ------------------------------------------------------------------------------------------- 10.12 crashes


def test_deeply_nested_api_answer_is_a_format_error(scripted: Scripted) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    scripted.script["/v1/projects/p/jobs/j"] = raw(deep, headers={"Content-Length": str(len(deep))})
    client = PlaymentClient(KEY, base_url=scripted.url, retry=FAST)
    with client, pytest.raises(PlaymentFormatError, match=r"job j: .*nested too deeply") as info:
        client.get_job("p", "j")
    assert "/v1/projects/p/jobs/j" in str(info.value)
    assert len(scripted.hits) == 1


def test_deeply_nested_job_result_is_a_format_error(fake: FakePlaymentServer) -> None:
    url = hosted(fake, "results/deep.json", b"[" * 100_000)
    client = PlaymentClient(KEY, base_url=fake.url, retry=FAST)
    with (
        client,
        pytest.raises(PlaymentFormatError, match=r"job j7: the result at .*deep\.json is JSON nested too deeply"),
    ):
        client.get_result_json(Job(fake.project_id, "j7", "completed", result_url=url))


@pytest.mark.parametrize("name", ["a\x00b.pcd", "a%00b.pcd"])
def test_nul_in_a_mapped_url_is_a_download_error(tmp_path: Path, name: str) -> None:
    (tmp_path / "a.pcd").write_bytes(b"x")
    with PlaymentClient(KEY, base_url="http://127.0.0.1:1", local_roots={"s3://bucket/": tmp_path}) as client:
        with pytest.raises(DownloadError, match="NUL") as info:
            client.download(f"s3://bucket/{name}?signature=SECRET")
        assert client.download("s3://bucket/a.pcd") == b"x"
    assert "s3://bucket/" in str(info.value) and "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/x",
        "https://host:port/x",
        "http://ex\u2100ample.com/x",  # NFKC turns it into a different host: urllib.parse refuses it
        "http://xn--/x",
        "http://a..b/x",
        "http://" + "a" * 300 + ".com/x",
        "http://-/x",
        "https://\u2603.example/x",
        "http://127.0.0.1:99999/x",
        "http:///x",
        "http://[::1]:80:80/x",
        "https://user:p%zz@host/x",
    ],
)
def test_odd_urls_raise_library_errors(url: str) -> None:
    with PlaymentClient(KEY, base_url="http://127.0.0.1:1", retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(PlaymentError):
            client.download(url)
        with pytest.raises(PlaymentError):
            client.download(url, private=True)
        client.is_playment_hosted(url)  # never raises


@pytest.mark.parametrize("length", ["\u00b2", "12abc", "-5", "99999999999999999999999"])
def test_odd_content_lengths_are_handled(scripted: Scripted, length: str) -> None:
    # "²".isdigit() is true but int("²") fails: the length is unusable, so the body is read to the close.
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", length)
        handler.send_header("Connection", "close")
        handler.close_connection = True
        handler.end_headers()
        handler.wfile.write(b"0123456789AB")

    scripted.script["/direct/odd"] = answer
    with PlaymentClient(KEY, base_url=scripted.url, retry=FAST) as client:
        try:
            body = client.download(f"{scripted.url}/direct/odd")
        except PlaymentError:
            return  # refusing an unusable length is fine; crashing with a ValueError is not
    assert body == b"0123456789AB"


def test_a_pickle_from_version_0_1_still_loads(fake: FakePlaymentServer) -> None:
    # A 0.1 client's state has none of the newer options; unpickling gives them their defaults.
    state = PlaymentClient(KEY, base_url=fake.url, retry=FAST).__getstate__()
    for name in ("_key_from_env", "download_deadline", "min_download_rate", "rate_limit", "breaker_threshold"):
        del state[name]
    old = PlaymentClient.__new__(PlaymentClient)
    old.__setstate__(state)
    assert (old.download_deadline, old.breaker_threshold, old.rate_limit) == (60.0, 5, None)
    assert old.get_project(fake.project_id).project_id == fake.project_id
