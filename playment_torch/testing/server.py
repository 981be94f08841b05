"""An in-process fake of the Playment API and its signed-URL storage, for offline tests.

:class:`FakePlaymentServer` runs two HTTP/1.1 listeners on loopback, each on its own daemon threads:

* the **API listener** (``server.url``, ``http://127.0.0.1:<port>``) answers the documented endpoints with
  Playment's envelopes and error bodies:

  ===========================================  ===============  ==========================================
  request                                      route name       answer
  ===========================================  ===============  ==========================================
  ``GET /v1/projects/:pid/details``            ``project``      name and batches
  ``GET /v1/projects/:pid/batch/:bid``         ``batch``        one page of jobs (``page_token``)
  ``GET /v1/projects/:pid/jobs/:jid``          ``job``          status, result URL when completed
  ``GET /v1/attachments?url=``                 ``attachments``  302 to a signed storage URL
  ``POST /v1/projects/:pid/batch``             ``create_batch`` ``{batch_id}``
  ``POST /v1/projects/:pid/jobs``              ``create_job``   ``{job_id, reference_id, work_flow_id}``
  ===========================================  ===============  ==========================================

* the **storage listener** (``server.storage_url``, ``http://localhost:<port>``: a *different host name*, like
  S3 behind Playment's attachments redirect) serves short-lived HMAC-signed URLs and never needs the API key.
  It also serves ``/direct/<name>``: a stand-in for a customer's own web server (no key, no signature), on a
  host other than the API's, so a test can check that the key never travels there.

Every request is logged as a :class:`RequestRecord` (without the key), and faults can be injected per route:
error statuses with or without Playment's error body, ``Retry-After``, latency, truncated bodies, dropped
connections and slow bodies.

Choices where Playment's documentation is silent:

* Auth is checked after routing: an unknown path is a 404 and a wrong method a 405 (``Allow`` names the right
  one), whatever the key. The two POST routes check the key exactly as the GET routes do.
* Creating work: a body that is not a JSON object, or lacks ``name`` (batch) or ``reference_id`` /
  ``work_flow_id`` (job), or whose ``data.sensor_data`` is malformed (no ``frames`` list of objects with a
  ``frame_id`` and a non-empty ``sensors`` list of ``{sensor_id, data_url}``; ``sensor_meta`` not a list of
  objects with ``id`` and a ``modality`` of ``lidar``/``camera``; a sensor that no ``sensor_meta`` entry
  names by id or name), or that names an unknown ``batch_id``, is an HTTP 400 ``GE_0001`` whose message names
  the field. A job without ``batch_id`` goes to the default batch. New jobs have status ``"created"`` and no
  result; :meth:`FakePlaymentServer.job_data` returns the ``data`` they were posted with.
* Duplicates are accepted: a second batch with the same name, or a second job with the same ``reference_id``,
  is created like any other (Playment documents neither way), so a client's idempotency is its own work and
  tests can see a double creation.
* A fault fires *before* anything else (like a proxy in front of the service). For each request the first
  fault, in the order added, whose route and ``match`` fit and that has firings left fires; only one fires.
* ``match`` is a substring of the decoded request target (path and query, so an attachments request can be
  matched by the file name in its ``url`` parameter); for the storage listener the blob's original URL is
  searched too.
* ``expires`` in signed URLs is a Unix time in seconds with millisecond precision, so short TTLs are exact.
* Each :meth:`FakePlaymentServer.put_file` makes a new blob; a URL put again points to the new bytes, while
  signed URLs already handed out keep serving the old ones (as a versioned bucket would).
* Storage responses carry an S3-style ``ETag`` (the MD5 of the bytes, quoted).
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hashlib
import hmac
import json
import math
import re
import secrets
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from playment_torch.errors import ConfigError, PlaymentError

__all__ = ["PLAYMENT_STORAGE", "ROUTES", "FakePlaymentServer", "Fault", "RequestRecord"]

#: Where Playment hosts results, masks and uploaded sensor files (private: reach them through attachments).
PLAYMENT_STORAGE = "https://playment-data-uploads.s3.ap-south-1.amazonaws.com"

#: Route names a fault can target (``"*"`` targets all of them, and unknown paths too).
ROUTES = ("*", "project", "batch", "job", "attachments", "storage", "direct", "create_batch", "create_job")

_API_ROUTES = (
    # Creating work: the collection paths, without an id (``/batch/`` with an empty id stays a bad GET).
    ("create_batch", re.compile(r"^/v1/projects/([^/]*)/batch$")),
    ("create_job", re.compile(r"^/v1/projects/([^/]*)/jobs$")),
    ("project", re.compile(r"^/v1/projects/([^/]*)/details/?$")),
    ("batch", re.compile(r"^/v1/projects/([^/]*)/batch/([^/]*)/?$")),
    ("job", re.compile(r"^/v1/projects/([^/]*)/jobs/([^/]*)/?$")),
    ("attachments", re.compile(r"^/v1/attachments/?$")),
)
# A customer's own web server is another host than the API: it is served by the storage listener.
_DIRECT_ROUTE = re.compile(r"^/direct/(.+)$")
_STORAGE_ROUTE = re.compile(r"^/signed/([^/]+)$")
_TOKEN_PREFIX = "offset:"
_MAX_DRAINED_BODY = 1 << 20
_POST_ROUTES = frozenset({"create_batch", "create_job"})
_MODALITIES = ("lidar", "camera")
_SLOW_BODY_CHUNKS = 20
_NOT_STARTED = "FakePlaymentServer is not started: call start() or use it as a context manager"


@dataclass(frozen=True)
class RequestRecord:
    """One request the fake server answered (or dropped).

    Attributes:
        method: The HTTP method.
        path: The request path, without its query string.
        query: The query parameters (first value of each).
        host: The ``Host`` header as sent.
        route: ``project``, ``batch``, ``job``, ``attachments``, ``create_batch``, ``create_job``, ``direct``,
            ``storage`` or ``unknown``.
        status: The status code answered, or ``None`` when the connection was dropped without a response.
        sent_key: Whether an ``x-api-key`` header was present (the key itself is never recorded).
        time: ``time.monotonic()`` when the request arrived.
        body: The decoded JSON body of a POST to the API (``None`` for other requests, or a body that is not
            JSON), so a test can see what was sent; it never holds the key, which travels in a header.
    """

    method: str
    path: str
    query: dict[str, str]
    host: str
    route: str
    status: int | None
    sent_key: bool
    time: float
    body: Any = None


@dataclass(eq=False)
class Fault:
    """An injected failure; see :meth:`FakePlaymentServer.add_fault` for the meaning of each field.

    Attributes:
        fired: How many times the fault has fired so far.
    """

    route: str = "*"
    status: int | None = None
    error_code: str | None = None
    retry_after: str | float | None = None
    latency: float = 0.0
    truncate: bool = False
    drop: bool = False
    slow_body: float = 0.0
    times: int | None = 1
    match: str | None = None
    fired: int = 0

    @property
    def remaining(self) -> int | None:
        """Firings left (``None``: unlimited)."""
        return None if self.times is None else max(0, self.times - self.fired)

    def _applies(self, route: str, haystack: str) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.route != "*" and self.route != route:
            return False
        return self.match is None or self.match in haystack


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Batch:
    id: str
    name: str
    is_default: bool
    created_at: str
    job_ids: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class _Job:
    job_id: str
    batch_id: str
    reference_id: str
    status: str
    work_flow_id: str
    result_url: str = ""
    frames: int = 0
    annotations: int = 0
    data: Any = None  # the ``data`` a created job was posted with


@dataclass(frozen=True)
class _Blob:
    blob_id: str
    url: str
    content: bytes
    content_type: str
    etag: str


def _error(status: int, code: str, message: str) -> _Response:
    body = json.dumps({"success": False, "error": {"code": code, "message": message}}).encode()
    return _Response(status, body)


def _ok(data: Any) -> _Response:
    return _Response(200, json.dumps({"data": data, "success": True}).encode())


def _s3_error(status: int, code: str, message: str) -> _Response:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    ).encode()
    return _Response(status, body, "application/xml")


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _count_frames(result: Mapping[str, Any] | None) -> tuple[int, int]:
    """(frames, annotations) of a result object of either format, for the batch listing and project counts."""
    if not isinstance(result, Mapping):
        return 0, 0
    if "legend" in result:
        return 1, len(result.get("legend") or ())
    sensor_data = result.get("sensor_data") or {}
    annotation_data = result.get("annotation_data") or {}
    frames = len(sensor_data.get("frames") or ()) or len(annotation_data.get("frames") or ()) or 1
    return frames, len(annotation_data.get("annotations") or ())


def _guess_content_type(url: str) -> str:
    is_json = urllib.parse.urlsplit(url).path.lower().endswith(".json")
    return "application/json" if is_json else "application/octet-stream"


class _Listener(ThreadingHTTPServer):
    """A threading HTTP server that remembers its connections, so ``stop()`` can close them and join threads.

    Keep-alive connections would otherwise keep their handler threads blocked in ``readline`` forever.
    """

    daemon_threads = True
    # The default backlog of 5 makes bursts of parallel downloads hit SYN retries (a 1 s stall each).
    request_queue_size = 128

    def __init__(self, fake: FakePlaymentServer, kind: str, port: int = 0) -> None:
        self.fake = fake
        self.kind = kind
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connection_threads: set[threading.Thread] = set()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"fake-playment-{self.kind}-connection",
            daemon=True,
        )
        with self._lock:
            self._connections.add(request)
            self._connection_threads.add(thread)
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            pass  # a client that hangs up mid-request is not the test's failure
        finally:
            self.shutdown_request(request)
            with self._lock:
                self._connections.discard(request)
                self._connection_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay silent: the default prints a traceback to stderr."""

    def close_connections(self, timeout: float) -> None:
        with self._lock:
            connections = list(self._connections)
            threads = list(self._connection_threads)
        for connection in connections:
            # Shutting the socket down wakes a handler blocked reading the next keep-alive request.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle + delayed ACK add ~40 ms per response.
    disable_nagle_algorithm = True
    server: _Listener
    request_body: bytes | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: the default logs every request to stderr."""

    responded = False

    def _dispatch(self) -> None:
        self.responded = False
        try:
            self.server.fake._handle(self)
        except Exception:
            # A bug outside the response builder (routing, faults, logging): still a 500 with an error body,
            # unless part of a response went out already, in which case only hanging up is honest.
            self.close_connection = True
            if not self.responded:
                with contextlib.suppress(OSError):
                    self.server.fake._send(self, _error(500, "api_error", "internal error in the fake server"), None)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch


class FakePlaymentServer:
    """A fake Playment API plus signed-URL storage, on two loopback listeners.

    Use it as a context manager (``with FakePlaymentServer() as server:``) or call :meth:`start` and
    :meth:`stop`. Jobs, batches and files can be added before or after starting.

    Attributes:
        api_key: The key the API expects in ``x-api-key``.
        project_id: The one project this server knows.
        project_name: Its name.
        page_size: Jobs per page of the batch listing.
        signed_url_ttl: Seconds a signed URL stays valid (settable; 0 or negative hands out expired URLs).
        latency: Seconds added before answering every request (settable).
        rate_limit: Most API requests answered in any one-second window (settable; ``None``, the default, is
            no limit). Beyond it the API answers 429 with ``Retry-After: 1`` and code ``rate_limit``, as a
            rate-limited service would; refused requests do not count.
        echo_key_in_errors: When true (settable), every API error message repeats the ``x-api-key`` the request
            carried, as a careless service might: for tests that the key never reaches an exception.
        storage_host: The host name of :attr:`storage_url`.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        project_id: str | None = None,
        project_name: str = "Synthetic LiDAR",
        page_size: int = 100,
        signed_url_ttl: float = 300.0,
        storage_host: str = "localhost",
        port: int = 0,
    ) -> None:
        """Configure the server; nothing listens until :meth:`start`.

        Args:
            api_key: The API key to expect; a random token by default.
            project_id: The project's id; a random UUID by default.
            project_name: The project's name.
            page_size: Jobs per batch listing page (at least 1).
            signed_url_ttl: Lifetime of signed URLs, in seconds.
            storage_host: Host name used in :attr:`storage_url` (must resolve to loopback).
            port: The API listener's port on 127.0.0.1 (0: any free port; the storage listener always takes a
                free one).

        Raises:
            ConfigError: ``page_size`` is smaller than 1.
        """
        if page_size < 1:
            raise ConfigError(f"page_size must be at least 1, got {page_size}")
        self.api_key = api_key if api_key is not None else secrets.token_urlsafe(24)
        self.project_id = project_id if project_id is not None else str(uuid.uuid4())
        self.project_name = project_name
        self.page_size = page_size
        self.signed_url_ttl = float(signed_url_ttl)
        self.storage_host = storage_host
        self.port = port
        self.latency = 0.0
        self.rate_limit: float | None = None
        self.echo_key_in_errors = False
        self._admitted: collections.deque[float] = collections.deque()
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        self._jobs: dict[str, _Job] = {}
        self._blobs: dict[str, _Blob] = {}
        self._url_to_blob: dict[str, str] = {}
        self._faults: list[Fault] = []
        self._requests: list[RequestRecord] = []
        self._listeners: list[_Listener] = []
        self._serve_threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._state = "new"
        self._url = ""
        self._storage_url = ""

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> FakePlaymentServer:
        """Bind both listeners on free loopback ports and serve them on daemon threads.

        Returns:
            The server itself (``server = FakePlaymentServer().start()``). Calling it again is a no-op.

        Raises:
            PlaymentError: the server was stopped already (a stopped server cannot be restarted).
        """
        with self._lock:
            if self._state == "running":
                return self
            if self._state == "stopped":
                raise PlaymentError("a stopped FakePlaymentServer cannot be restarted; create a new one")
            api = _Listener(self, "api", self.port)
            try:
                storage = _Listener(self, "storage")
            except BaseException:
                api.server_close()
                raise
            self._listeners = [api, storage]
            self._url = f"http://127.0.0.1:{api.server_address[1]}"
            self._storage_url = f"http://{self.storage_host}:{storage.server_address[1]}"
            for listener in self._listeners:
                thread = threading.Thread(
                    target=listener.serve_forever,
                    kwargs={"poll_interval": 0.02},
                    name=f"fake-playment-{listener.kind}",
                    daemon=True,
                )
                thread.start()
                self._serve_threads.append(thread)
            self._state = "running"
        return self

    def stop(self) -> None:
        """Stop both listeners, close every connection and join every thread. Calling it again is a no-op."""
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
            listeners, threads = self._listeners, self._serve_threads
            self._listeners, self._serve_threads = [], []
        # Wake handlers sleeping on injected latency or slow bodies so they finish promptly.
        self._stopping.set()
        for listener in listeners:
            listener.shutdown()
            listener.server_close()
        for thread in threads:
            thread.join(5.0)
        for listener in listeners:
            listener.close_connections(timeout=5.0)

    def __enter__(self) -> FakePlaymentServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        # Never the API key: a repr ends up in logs and assertion messages.
        url = self._url or "<not started>"
        return f"FakePlaymentServer(url={url!r}, project_id={self.project_id!r}, state={self._state!r})"

    @property
    def url(self) -> str:
        """The API listener's base URL, ``http://127.0.0.1:<port>``.

        Raises:
            PlaymentError: the server has not been started.
        """
        if not self._url:
            raise PlaymentError(_NOT_STARTED)
        return self._url

    @property
    def storage_url(self) -> str:
        """The storage listener's base URL, ``http://<storage_host>:<port>``.

        Raises:
            PlaymentError: the server has not been started.
        """
        if not self._storage_url:
            raise PlaymentError(_NOT_STARTED)
        return self._storage_url

    @property
    def default_batch_id(self) -> str:
        """The id of the project's default batch (where jobs added without a batch go), "" before the first."""
        with self._lock:
            return next((b.id for b in self._batches.values() if b.is_default), "")

    # ------------------------------------------------------------------------------------------- content

    def add_batch(self, name: str, *, batch_id: str | None = None) -> str:
        """Add a (non-default) batch to the project.

        Args:
            name: The batch's name.
            batch_id: Its id; a random UUID by default.

        Returns:
            The batch id.

        Raises:
            ConfigError: a batch with that id exists already.
        """
        if batch_id is None:
            # Derived from the project and the batch's place, so a seeded server has the same ids every run.
            with self._lock:
                batch_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.project_id}/batch/{len(self._batches)}/{name}"))
        with self._lock:
            if batch_id in self._batches:
                raise ConfigError(f"batch {batch_id} exists already")
            self._batches[batch_id] = _Batch(batch_id, name, False, _now_iso())
        return batch_id

    def add_job(
        self,
        result: Mapping[str, Any] | None,
        *,
        job_id: str | None = None,
        batch_id: str | None = None,
        status: str = "completed",
        reference_id: str | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> str:
        """Add a job, hosting its result object as JSON at a Playment-hosted URL.

        Args:
            result: The result object (either format), or ``None`` for a job with no result at all.
            job_id: The job's id; a random UUID by default.
            batch_id: An existing batch; jobs without one go to the project's default batch.
            status: The job's status; the API shows the result URL only while it is ``"completed"``.
            reference_id: The customer's reference; ``"ref-<n>"`` by default.
            files: URL -> bytes for every file the result references (see :meth:`put_file`).

        Returns:
            The job id.

        Raises:
            ConfigError: the job id exists already or the batch is unknown.
        """
        job_id = job_id if job_id is not None else str(uuid.uuid4())
        for url, content in (files or {}).items():
            self.put_file(url, content)
        result_url = self._put_result(job_id, result)
        frames, annotations = _count_frames(result)
        with self._lock:
            if job_id in self._jobs:
                raise ConfigError(f"job {job_id} exists already")
            if batch_id is None:
                batch = next((b for b in self._batches.values() if b.is_default), None)
                if batch is None:
                    default_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.project_id}/batch/default"))
                    batch = _Batch(default_id, "Default batch", True, _now_iso())
                    self._batches[batch.id] = batch
            elif batch_id in self._batches:
                batch = self._batches[batch_id]
            else:
                raise ConfigError(f"unknown batch {batch_id}: add it with add_batch() first")
            self._jobs[job_id] = _Job(
                job_id=job_id,
                batch_id=batch.id,
                reference_id=reference_id if reference_id is not None else f"ref-{len(self._jobs):04d}",
                status=status,
                work_flow_id=str(uuid.uuid4()),
                result_url=result_url,
                frames=frames,
                annotations=annotations,
            )
            batch.job_ids.append(job_id)
        return job_id

    def job_data(self, job_id: str) -> Any:
        """The ``data`` object a job was created with through ``POST /v1/projects/:pid/jobs`` (a copy).

        Returns:
            The posted ``data`` (``{"sensor_data": {...}}``), or ``None`` for a job added with :meth:`add_job`.

        Raises:
            ConfigError: the job is unknown.
        """
        with self._lock:
            data = self._job(job_id).data
        return None if data is None else json.loads(json.dumps(data))

    def add_job_with_result_url(
        self,
        result_url: str,
        *,
        job_id: str | None = None,
        batch_id: str | None = None,
        status: str = "completed",
        reference_id: str | None = None,
    ) -> str:
        """Add a job whose result lives at a URL this server does not host (e.g. a ``local_roots`` folder).

        Args:
            result_url: The result URL the job API shows (a client must be able to read it on its own).
            job_id: The job's id; a random UUID by default.
            batch_id: An existing batch; by default the project's default batch.
            status: The job's status.
            reference_id: The customer's reference.

        Returns:
            The job id.

        Raises:
            ConfigError: the job id exists already or the batch is unknown.
        """
        job_id = self.add_job(None, job_id=job_id, batch_id=batch_id, status=status, reference_id=reference_id)
        with self._lock:
            self._job(job_id).result_url = result_url
        return job_id

    def set_job_status(self, job_id: str, status: str) -> None:
        """Change a job's status (a result stored earlier reappears when it becomes ``"completed"``).

        Raises:
            ConfigError: the job is unknown.
        """
        with self._lock:
            self._job(job_id).status = status

    def replace_result(
        self, job_id: str, result: Mapping[str, Any] | None, files: Mapping[str, bytes] | None = None
    ) -> str:
        """Relabel a job: host a new result object at a *new* URL and point the job at it.

        Args:
            job_id: The job.
            result: The new result object.
            files: URL -> bytes for files the new result references.

        Returns:
            The new result URL ("" when ``result`` is ``None``).

        Raises:
            ConfigError: the job is unknown.
        """
        with self._lock:
            self._job(job_id)
        for url, content in (files or {}).items():
            self.put_file(url, content)
        result_url = self._put_result(job_id, result)
        frames, annotations = _count_frames(result)
        with self._lock:
            job = self._job(job_id)
            job.result_url, job.frames, job.annotations = result_url, frames, annotations
        return result_url

    def put_file(self, url: str, content: bytes, *, content_type: str | None = None) -> str:
        """Host ``content`` under any URL string, reachable through ``/v1/attachments?url=<url>``.

        The URL may be Playment-hosted (:data:`PLAYMENT_STORAGE`), ``s3://bucket/key``, anything else, or a
        :meth:`direct_url`, which is then also served directly without auth.

        Args:
            url: The URL results will name.
            content: The bytes.
            content_type: The storage listener's ``Content-Type``; by default ``application/json`` for
                ``.json`` paths, ``application/octet-stream`` otherwise.

        Returns:
            ``url``.
        """
        content = bytes(content)
        basename = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
        # The file name in the blob id makes signed URLs readable and lets faults match them by file name.
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", urllib.parse.unquote(basename))[:64]
        blob_id = f"{secrets.token_hex(8)}-{safe}" if safe else secrets.token_hex(8)
        blob = _Blob(
            blob_id=blob_id,
            url=url,
            content=content,
            content_type=content_type or _guess_content_type(url),
            etag='"' + hashlib.md5(content, usedforsecurity=False).hexdigest() + '"',
        )
        with self._lock:
            self._blobs[blob_id] = blob
            self._url_to_blob[url] = blob_id
        return url

    def direct_url(self, name: str) -> str:
        """A "user's own" URL on the storage listener's host, served without auth; fill it with :meth:`put_file`.

        Args:
            name: A path below ``/direct/`` (may contain ``/``).

        Returns:
            ``http://localhost:<storage port>/direct/<name>``.

        Raises:
            PlaymentError: the server has not been started (the port is not known yet).
        """
        return f"{self.storage_url}/direct/{urllib.parse.quote(name.lstrip('/'))}"

    def signed_url(self, url: str, *, ttl: float | None = None) -> str:
        """The signed storage URL the attachments endpoint would redirect to for ``url`` right now.

        Args:
            url: A URL hosted with :meth:`put_file`.
            ttl: Seconds of validity; :attr:`signed_url_ttl` by default.

        Returns:
            ``<storage_url>/signed/<blob id>?expires=<unix>&signature=<hmac>``.

        Raises:
            PlaymentError: the URL is not hosted or the server has not been started.
        """
        with self._lock:
            blob_id = self._url_to_blob.get(url)
        if blob_id is None:
            raise PlaymentError(f"no file is hosted at {url}")
        return self._sign(blob_id, self.signed_url_ttl if ttl is None else ttl)

    # ------------------------------------------------------------------------------------------- log & faults

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request answered so far, in the order their responses were decided."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self._lock:
            self._requests.clear()

    def add_fault(
        self,
        route: str = "*",
        *,
        status: int | None = None,
        error_code: str | None = None,
        retry_after: str | float | None = None,
        latency: float = 0.0,
        truncate: bool = False,
        drop: bool = False,
        slow_body: float = 0.0,
        times: int | None = 1,
        match: str | None = None,
    ) -> Fault:
        """Inject a failure into the next matching request(s).

        Args:
            route: ``"*"`` or one of ``project``, ``batch``, ``job``, ``attachments``, ``storage``,
                ``direct``.
            status: Answer with this status instead of the real response. With ``error_code`` the body is
                Playment's error body; without, a small HTML page (like a load balancer's).
            error_code: The ``error.code`` of the error body.
            retry_after: Sent as ``Retry-After`` (seconds or an HTTP date) with the response.
            latency: Seconds to wait before answering (on top of :attr:`latency`).
            truncate: Declare a ``Content-Length`` larger than the bytes sent (half the body), then close.
            drop: Close the connection without any response.
            slow_body: Spread the body over this many seconds, in chunks.
            times: How many requests it fires for; ``None`` for every matching request.
            match: Only requests whose path or query (or, on storage, the blob's URL) contains this string.

        Returns:
            The fault; its ``fired`` attribute counts its firings.

        Raises:
            ConfigError: an unknown route or an impossible combination of options.
        """
        if route not in ROUTES:
            raise ConfigError(f"unknown fault route {route!r}; expected one of {', '.join(ROUTES)}")
        if status is not None and not 100 <= status <= 599:
            raise ConfigError(f"fault status must be an HTTP status code, got {status}")
        if error_code is not None and status is None:
            raise ConfigError("a fault with an error_code needs a status")
        if drop and (truncate or slow_body or status is not None):
            raise ConfigError("a dropped connection sends nothing: drop excludes status, truncate, slow_body")
        if times is not None and times < 0:
            raise ConfigError(f"times must be None or at least 0, got {times}")
        if latency < 0 or slow_body < 0:
            raise ConfigError("latency and slow_body must not be negative")
        fault = Fault(
            route=route,
            status=status,
            error_code=error_code,
            retry_after=retry_after,
            latency=latency,
            truncate=truncate,
            drop=drop,
            slow_body=slow_body,
            times=times,
            match=match,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    # ------------------------------------------------------------------------------------------- internals

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise ConfigError(f"unknown job {job_id}")
        return job

    def _put_result(self, job_id: str, result: Mapping[str, Any] | None) -> str:
        if result is None:
            return ""
        # A fresh URL per revision: a relabelled job's result must not share a cache identity with the old.
        url = f"{PLAYMENT_STORAGE}/{self.project_id}/results/{job_id}/{uuid.uuid4().hex[:12]}.json"
        return self.put_file(url, json.dumps(result).encode(), content_type="application/json")

    def _signature(self, blob_id: str, expires: str) -> str:
        return hmac.new(self._secret, f"{blob_id}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def _sign(self, blob_id: str, ttl: float) -> str:
        expires = f"{time.time() + ttl:.3f}"
        query = urllib.parse.urlencode({"expires": expires, "signature": self._signature(blob_id, expires)})
        return f"{self.storage_url}/signed/{urllib.parse.quote(blob_id)}?{query}"

    def _take_fault(self, route: str, haystack: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault._applies(route, haystack):
                    fault.fired += 1
                    return fault
        return None

    def _handle(self, handler: _Handler) -> None:
        """Answer one request: route, faults, latency, the real response, the log, then the bytes."""
        arrived = time.monotonic()
        target = urllib.parse.urlsplit(handler.path)
        path = target.path
        query: dict[str, str] = {}
        for key, value in urllib.parse.parse_qsl(target.query, keep_blank_values=True):
            query.setdefault(key, value)
        kind = handler.server.kind
        route, params = self._route(kind, path)
        handler.request_body = None
        if not self._drain_request_body(handler):
            handler.close_connection = True
        posted = _json_or_none(handler.request_body) if route in _POST_ROUTES and handler.command == "POST" else None

        haystack = urllib.parse.unquote(handler.path)
        if route == "storage" and params:
            with self._lock:
                blob = self._blobs.get(params[0])
            if blob is not None:
                haystack += "\n" + blob.url
        fault = self._take_fault(route, haystack)

        delay = self.latency + (fault.latency if fault else 0.0)
        stopped = delay > 0 and self._stopping.wait(delay)

        def log(status: int | None) -> None:
            record = RequestRecord(
                method=handler.command,
                path=path,
                query=query,
                host=handler.headers.get("Host", ""),
                route=route,
                status=status,
                sent_key=handler.headers.get("x-api-key") is not None,
                time=arrived,
                body=posted,
            )
            with self._lock:
                self._requests.append(record)

        if stopped or (fault is not None and fault.drop):
            # A server stopped during the delay hangs up rather than answer late.
            log(None)
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            if fault is not None and fault.status is not None:
                response = self._fault_response(fault)
            elif kind == "api" and self._over_rate(arrived):
                response = _error(429, "rate_limit", f"rate limit of {self.rate_limit:g} requests per second exceeded")
                response.headers.append(("Retry-After", "1"))
            elif route == "direct":
                response = self._direct(handler.command, params[0])
            elif kind == "storage":
                response = self._storage(handler.command, params, query)
            else:
                response = self._api(handler, route, params, query)
        except Exception as exc:
            # Any bug must become a 500 with an error body, never a traceback or a dead server thread.
            response = _error(500, "api_error", f"internal error in the fake server: {type(exc).__name__}")
        if self.echo_key_in_errors and kind == "api" and response.status >= 400:
            response = self._echo_key(response, handler.headers.get("x-api-key"))
        if fault is not None and fault.retry_after is not None:
            retry_after = fault.retry_after
            if isinstance(retry_after, float) and retry_after.is_integer():
                retry_after = int(retry_after)
            response.headers.append(("Retry-After", str(retry_after)))
        # Log before sending: once the client has the response, the test may inspect the log.
        log(response.status)
        try:
            self._send(handler, response, fault)
        except OSError:
            handler.close_connection = True

    def _over_rate(self, arrived: float) -> bool:
        """Whether an API request arriving at ``arrived`` passes :attr:`rate_limit` (else it is admitted)."""
        limit = self.rate_limit
        if limit is None:
            return False
        with self._lock:
            while self._admitted and self._admitted[0] <= arrived - 1.0:
                self._admitted.popleft()
            if len(self._admitted) >= limit:
                return True
            self._admitted.append(arrived)
            return False

    @staticmethod
    def _echo_key(response: _Response, key: str | None) -> _Response:
        """The error response with the request's key in its message (see ``echo_key_in_errors``)."""
        try:
            error = json.loads(response.body)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "error", f"HTTP {response.status}"
        echoed = _error(response.status, code, f"{message} (request had x-api-key: {key}; key {key!r})")
        echoed.headers = response.headers
        return echoed

    @staticmethod
    def _drain_request_body(handler: _Handler) -> bool:
        """Read a request body (kept in ``handler.request_body``) so the keep-alive connection stays in sync.

        Returns:
            False when the connection must be closed (a chunked, unsized or oversized body is not read).
        """
        length = handler.headers.get("Content-Length")
        if handler.headers.get("Transfer-Encoding"):
            return False
        if not length:
            return True
        try:
            size = int(length)
        except ValueError:
            return False
        if size < 0 or size > _MAX_DRAINED_BODY:
            return False
        handler.request_body = handler.rfile.read(size)
        return True

    @staticmethod
    def _route(kind: str, path: str) -> tuple[str, tuple[str, ...]]:
        if kind == "storage":
            direct = _DIRECT_ROUTE.match(path)
            if direct:
                return "direct", (urllib.parse.unquote(direct.group(1)),)
            match = _STORAGE_ROUTE.match(path)
            return "storage", (urllib.parse.unquote(match.group(1)),) if match else ()
        for name, pattern in _API_ROUTES:
            match = pattern.match(path)
            if match:
                return name, tuple(urllib.parse.unquote(g) for g in match.groups())
        return "unknown", ()

    @staticmethod
    def _fault_response(fault: Fault) -> _Response:
        assert fault.status is not None
        if fault.error_code is not None:
            return _error(fault.status, fault.error_code, f"injected fault: HTTP {fault.status}")
        body = f"<html><body><h1>{fault.status}</h1><p>injected fault</p></body></html>".encode()
        return _Response(fault.status, body, "text/html")

    def _api(self, handler: _Handler, route: str, params: tuple[str, ...], query: dict[str, str]) -> _Response:
        if route == "unknown":
            path = urllib.parse.urlsplit(handler.path).path
            return _error(404, "not_found", f"no such endpoint: {handler.command} {path}")
        allowed = "POST" if route in _POST_ROUTES else "GET"
        if handler.command != allowed:
            response = _error(405, "method_not_allowed", f"{handler.command} is not allowed; use {allowed}")
            response.headers.append(("Allow", allowed))
            return response
        key = handler.headers.get("x-api-key")
        if key is None:
            return _error(401, "unauthorized", "missing x-api-key header")
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return _error(400, "auth-failure", "invalid API key")
        if route == "attachments":
            return self._attachments(query)
        project_id = params[0]
        if not project_id or any(not p for p in params):
            return _error(400, "GE_0001", "invalid parameter: empty id in the path")
        if project_id != self.project_id:
            return _error(400, "FS_0006", f"project {project_id} not found")
        if route == "create_batch":
            return self._create_batch(handler.request_body)
        if route == "create_job":
            return self._create_job(handler.request_body)
        if route == "project":
            return self._project_details()
        if route == "batch":
            return self._batch_page(params[1], query.get("page_token", ""))
        return self._job_details(params[1])

    def _project_details(self) -> _Response:
        with self._lock:
            batches = []
            for batch in self._batches.values():
                jobs = [self._jobs[j] for j in batch.job_ids]
                done = [j for j in jobs if j.status == "completed"]
                batches.append(
                    {
                        "id": batch.id,
                        "name": batch.name,
                        "description": batch.description,
                        "is_default": batch.is_default,
                        "total_jobs": len(jobs),
                        "completed_jobs": len(done),
                        "total_frames": sum(j.frames for j in jobs),
                        "completed_frames": sum(j.frames for j in done),
                        "annotations": sum(j.annotations for j in done),
                        "created_at": batch.created_at,
                        "status": "completed" if jobs and len(done) == len(jobs) else "in_progress",
                    }
                )
        return _ok({"name": self.project_name, "base": "pointcloud_segmentation", "batches": batches})

    def _create_batch(self, raw: bytes | None) -> _Response:
        body = _json_or_none(raw)
        if not isinstance(body, dict):
            return _error(400, "GE_0001", "invalid parameter: the request body must be a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            return _error(400, "GE_0001", "invalid parameter: 'name' is required and must be a non-empty string")
        description = body.get("description", "")
        if description is None:
            description = ""
        if not isinstance(description, str):
            return _error(400, "GE_0001", "invalid parameter: 'description' must be a string")
        batch_id = str(uuid.uuid4())
        with self._lock:
            self._batches[batch_id] = _Batch(batch_id, name, False, _now_iso(), description=description)
        return _ok({"batch_id": batch_id})

    def _create_job(self, raw: bytes | None) -> _Response:
        body = _json_or_none(raw)
        if not isinstance(body, dict):
            return _error(400, "GE_0001", "invalid parameter: the request body must be a JSON object")
        for name in ("reference_id", "work_flow_id"):
            value = body.get(name)
            if not isinstance(value, str) or not value.strip():
                return _error(400, "GE_0001", f"invalid parameter: {name!r} is required and must be a non-empty string")
        batch_id = body.get("batch_id")
        if batch_id is not None and (not isinstance(batch_id, str) or not batch_id):
            return _error(400, "GE_0001", "invalid parameter: 'batch_id' must be a non-empty string")
        data = body.get("data")
        sensor_data = data.get("sensor_data") if isinstance(data, dict) else None
        problem = _sensor_data_problem(sensor_data)
        if problem:
            return _error(400, "GE_0001", f"invalid parameter: data.sensor_data: {problem}")
        assert isinstance(sensor_data, dict)
        job_id = str(uuid.uuid4())
        with self._lock:
            if batch_id is None:
                batch = next((b for b in self._batches.values() if b.is_default), None)
                if batch is None:
                    batch = _Batch(str(uuid.uuid4()), "Default batch", True, _now_iso())
                    self._batches[batch.id] = batch
            else:
                found = self._batches.get(batch_id)
                if found is None:
                    return _error(400, "GE_0001", f"invalid parameter: batch_id {batch_id} does not exist")
                batch = found
            self._jobs[job_id] = _Job(
                job_id=job_id,
                batch_id=batch.id,
                reference_id=body["reference_id"],
                status="created",
                work_flow_id=body["work_flow_id"],
                frames=len(sensor_data["frames"]),
                data=json.loads(json.dumps(data)),
            )
            batch.job_ids.append(job_id)
        return _ok({"job_id": job_id, "reference_id": body["reference_id"], "work_flow_id": body["work_flow_id"]})

    def _batch_page(self, batch_id: str, token: str) -> _Response:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return _error(400, "FS_0006", f"batch {batch_id} not found")
            offset = 0
            if token:
                offset = _decode_token(token)
                if offset < 0 or offset > len(batch.job_ids):
                    return _error(400, "invalid_request_error", "invalid page_token")
            ids = batch.job_ids[offset : offset + self.page_size]
            jobs = [
                {
                    "id": job.job_id,
                    "reference_id": job.reference_id,
                    "status": job.status,
                    "frames": job.frames,
                    "annotations": job.annotations,
                }
                for job in (self._jobs[i] for i in ids)
            ]
            end = offset + self.page_size
            next_token = _encode_token(end) if end < len(batch.job_ids) else ""
            data = {
                "id": batch.id,
                "project_id": self.project_id,
                "name": batch.name,
                "jobs": jobs,
                "next_page_token": next_token,
            }
        return _ok(data)

    def _job_details(self, job_id: str) -> _Response:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return _error(400, "FS_0006", f"job {job_id} not found")
            data = {
                "project_id": self.project_id,
                "reference_id": job.reference_id,
                "job_id": job.job_id,
                "batch_id": job.batch_id,
                "status": job.status,
                "work_flow_id": job.work_flow_id,
                "priority_weight": 5,
                "tag": job.work_flow_id,
                "result": job.result_url if job.status == "completed" else "",
            }
        return _ok(data)

    def _attachments(self, query: dict[str, str]) -> _Response:
        url = query.get("url", "")
        if not url:
            return _error(400, "GE_0001", "invalid parameter: 'url' is required")
        with self._lock:
            blob_id = self._url_to_blob.get(url)
        if blob_id is None:
            return _error(400, "FS_0006", "attachment not found")
        response = _Response(302, b"", "text/plain")
        response.headers.append(("Location", self._sign(blob_id, self.signed_url_ttl)))
        return response

    def _direct(self, method: str, name: str) -> _Response:
        if method not in ("GET", "HEAD"):
            return _Response(405, b"405 Method Not Allowed", "text/plain")
        with self._lock:
            blob_id = self._url_to_blob.get(f"{self.storage_url}/direct/{urllib.parse.quote(name)}")
            blob = self._blobs.get(blob_id) if blob_id else None
        if blob is None:
            return _Response(404, b"404 Not Found", "text/plain")
        return _Response(200, blob.content, blob.content_type, [("ETag", blob.etag)])

    def _storage(self, method: str, params: tuple[str, ...], query: dict[str, str]) -> _Response:
        if method not in ("GET", "HEAD"):
            return _s3_error(405, "MethodNotAllowed", "The method is not allowed against this resource.")
        if not params:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        blob_id = params[0]
        expires, signature = query.get("expires", ""), query.get("signature", "")
        if not expires or not signature:
            return _s3_error(403, "AccessDenied", "Query-string authentication needs a signature and expiry.")
        expected = self._signature(blob_id, expires)
        if not hmac.compare_digest(expected, signature):
            return _s3_error(403, "SignatureDoesNotMatch", "The signature we calculated does not match.")
        try:
            deadline = float(expires)
        except ValueError:  # pragma: no cover - a signed expiry always parses
            return _s3_error(403, "AccessDenied", "Invalid expiry.")
        if not math.isfinite(deadline) or time.time() > deadline:
            return _s3_error(403, "AccessDenied", "Request has expired")
        with self._lock:
            blob = self._blobs.get(blob_id)
        if blob is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return _Response(200, blob.content, blob.content_type, [("ETag", blob.etag)])

    def _send(self, handler: _Handler, response: _Response, fault: Fault | None) -> None:
        body = response.body
        declared = len(body)
        if fault is not None and fault.truncate:
            # Promise the whole body, send half of it, then hang up: the client must notice it is short.
            body = body[: len(body) // 2]
            declared = max(declared, len(body) + 1)
            handler.close_connection = True
        handler.responded = True
        handler.send_response(response.status)
        for name, value in response.headers:
            handler.send_header(name, value)
        handler.send_header("Content-Type", response.content_type)
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        if handler.command == "HEAD" or not body:
            return
        if fault is not None and fault.slow_body > 0:
            chunks = max(1, min(_SLOW_BODY_CHUNKS, len(body)))
            step = math.ceil(len(body) / chunks)
            pause = fault.slow_body / chunks
            for start in range(0, len(body), step):
                handler.wfile.write(body[start : start + step])
                if self._stopping.wait(pause):
                    handler.close_connection = True
                    return
        else:
            handler.wfile.write(body)


def _json_or_none(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _nonempty_string(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _sensor_data_problem(sensor_data: Any) -> str:
    """What is wrong with a posted ``sensor_data`` ("" when nothing), in the words of an error message."""
    if not isinstance(sensor_data, dict):
        return "required, and must be an object"
    metas = sensor_data.get("sensor_meta")
    if not isinstance(metas, list) or not metas:
        return "'sensor_meta' must be a non-empty array"
    names: set[str] = set()
    for i, meta in enumerate(metas):
        if not isinstance(meta, dict) or not _nonempty_string(meta.get("id")):
            return f"sensor_meta[{i}] must be an object with an 'id'"
        if meta.get("modality") not in _MODALITIES:
            return f"sensor_meta[{i}].modality must be one of {', '.join(_MODALITIES)}"
        names.add(meta["id"])
        if _nonempty_string(meta.get("name")):
            names.add(meta["name"])
    frames = sensor_data.get("frames")
    if not isinstance(frames, list) or not frames:
        return "'frames' must be a non-empty array"
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            return f"frames[{i}] must be an object"
        if not isinstance(frame.get("frame_id"), (str, int)) or isinstance(frame.get("frame_id"), bool):
            return f"frames[{i}].frame_id is required"
        ego_pose = frame.get("ego_pose")
        if ego_pose is not None and not isinstance(ego_pose, dict):
            return f"frames[{i}].ego_pose must be an object"
        sensors = frame.get("sensors")
        if not isinstance(sensors, list) or not sensors:
            return f"frames[{i}].sensors must be a non-empty array"
        for j, sensor in enumerate(sensors):
            where = f"frames[{i}].sensors[{j}]"
            if not isinstance(sensor, dict) or not _nonempty_string(sensor.get("sensor_id")):
                return f"{where} must be an object with a 'sensor_id'"
            if not _nonempty_string(sensor.get("data_url")):
                return f"{where}.data_url is required"
            if sensor["sensor_id"] not in names:
                return f"{where}.sensor_id {sensor['sensor_id']!r} is not in sensor_meta"
            if sensor.get("sensor_pose") is not None and not isinstance(sensor["sensor_pose"], dict):
                return f"{where}.sensor_pose must be an object"
    return ""


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{offset}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    """The offset a page token encodes, or -1 when the token is not one this server issued."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError):
        return -1
    if not raw.startswith(_TOKEN_PREFIX) or not raw[len(_TOKEN_PREFIX) :].isdigit():
        return -1
    return int(raw[len(_TOKEN_PREFIX) :])
