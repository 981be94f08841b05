"""``PlaymentClient``: the Playment API over HTTP, with retries that respect the server and safe downloads.

Security rules this module enforces (DESIGN.md, decision 7):

* the ``x-api-key`` header is attached per request, only to requests for the API's own origin; redirects are
  never followed automatically, so a signed URL on another host never sees the key;
* ``http://`` base URLs are refused unless the host is loopback;
* the key never appears in a ``repr``, an exception or a log record (URLs are logged without query strings);
* a result can never make the client read a local file: ``file://`` URLs are refused unless a ``local_roots``
  prefix maps them, and mapped paths cannot escape their root.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import requests.adapters

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
    redact_url,
)
from playment_torch.models import BatchPage, Job, JobResult, JobSummary, Project

__all__ = ["DEFAULT_BASE_URL", "PlaymentClient", "RetryPolicy"]

logger = logging.getLogger("playment_torch")

DEFAULT_BASE_URL = "https://api.playment.io"
API_KEY_ENV = "PLAYMENT_API_KEY"
#: Host names whose files are private to Playment and must be fetched through ``/v1/attachments``.
DEFAULT_ATTACHMENT_HOSTS = ("playment-data-uploads.s3.ap-south-1.amazonaws.com", ".playment.io", "playment-")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Playment's codes for "something failed on our side, try later".
_RETRY_CODES = frozenset({"FS_0000", "FS_0008", "api_error"})
_AUTH_CODES = frozenset({"auth-failure", "unauthorized", "authentication_error", "forbidden"})
_NOT_FOUND_CODES = frozenset({"FS_0006", "not_found", "not-found"})
# Failures worth a retry; other request errors (an invalid URL or header) fail at once.
_TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
_RATE_CODES = frozenset({"rate_limit", "rate-limit", "too_many_requests", "rate_limit_exceeded"})


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before retrying an idempotent GET.

    Attributes:
        max_retries: Retries after the first attempt (so ``max_retries + 1`` attempts in all).
        backoff: Base delay in seconds; attempt ``n`` waits ``backoff * 2**n`` plus jitter.
        backoff_max: Cap of the exponential delay.
        jitter: Random extra delay as a fraction of the delay (0.5 means up to +50%).
        retry_after_max: Cap of a server's ``Retry-After`` (a server asking for an hour does not stall
            training).
        statuses: HTTP statuses worth retrying (every 5xx is retried too).
        codes: Playment error codes worth retrying.
    """

    max_retries: int = 5
    backoff: float = 0.25
    backoff_max: float = 8.0
    jitter: float = 0.5
    retry_after_max: float = 60.0
    statuses: frozenset[int] = frozenset({408, 429})
    codes: frozenset[str] = _RETRY_CODES

    def should_retry(self, status: int | None, code: str | None = None) -> bool:
        """Whether a failure is transient: no response at all, a listed status, any 5xx, or a listed code."""
        if status is None:
            return True
        return status in self.statuses or status >= 500 or (code is not None and code in self.codes)

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based), honouring ``Retry-After`` (capped)."""
        hinted = parse_retry_after(retry_after)
        if hinted is not None:
            return min(hinted, self.retry_after_max)
        base = min(self.backoff * (2**attempt), self.backoff_max)
        return base * (1.0 + self.jitter * random.random())


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header: delta-seconds or an HTTP date; ``None`` when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class _Transient(Exception):
    """A retryable failure inside one attempt (never escapes this module)."""

    message: str
    status: int | None = None
    code: str | None = None
    retry_after: str | None = None
    cause: BaseException | None = field(default=None, repr=False)
    from_api: bool = False  # the API itself failed (else a file host): decides the final exception type


class PlaymentClient:
    """A thread-safe client of the Playment API.

    Args:
        api_key: The API key; ``None`` reads ``PLAYMENT_API_KEY``.
        base_url: The API's base URL. ``http://`` is only accepted for loopback hosts (tests, the fake
            server).
        timeout: Seconds for connecting and for each read, on every request.
        max_retries: Retries of a transient failure (connection error, timeout, 408, 429, 5xx, "try later").
        retry: A full :class:`RetryPolicy`; overrides ``max_retries``.
        local_roots: URL prefix -> local folder, for users who have the point clouds on disk already, e.g.
            ``{"s3://bucket/scans/": "/data/scans/"}``. Without a mapping no URL can make the client read a
            file.
        attachment_hosts: Host names (exact, ``.suffix`` or ``prefix-``) whose files are Playment-hosted and
            go through ``/v1/attachments``. Non-http schemes (``s3://``, ``gs://``) always do.
        max_download_bytes: Size cap of one download; larger files fail with :class:`DownloadError`.
        pool_size: Connections kept per host, enough for concurrent downloads.

    Raises:
        ConfigError: no API key, or an unsafe or malformed base URL.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        max_retries: int = 5,
        retry: RetryPolicy | None = None,
        local_roots: Mapping[str, str | os.PathLike[str]] | None = None,
        attachment_hosts: tuple[str, ...] = DEFAULT_ATTACHMENT_HOSTS,
        max_download_bytes: int = 1 << 30,
        pool_size: int = 64,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not key or not key.strip():
            raise ConfigError(f"no Playment API key: pass api_key= or set {API_KEY_ENV}")
        key = key.strip()
        if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
            # An HTTP header cannot carry it, and the error requests would raise quotes the header value.
            raise ConfigError("the Playment API key has characters an API key cannot have (whitespace, non-ASCII)")
        self._api_key = key
        parts = _split(base_url.rstrip("/"), ConfigError("base_url is not a valid URL"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"base_url must be an http(s) URL, got {redact_url(base_url)!r}")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            raise ConfigError(
                f"refusing plain http:// for {parts.hostname}: the API key would travel unencrypted; use https://"
            )
        self.base_url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self._api_origin = _origin(self.base_url)
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy(max_retries=max_retries)
        self.local_roots = {str(k): str(v) for k, v in (local_roots or {}).items()}
        self.attachment_hosts = tuple(attachment_hosts)
        self.max_download_bytes = max_download_bytes
        self.pool_size = pool_size
        self._local = threading.Lock()
        self._session: requests.Session | None = None
        self._session_pid = -1

    # ------------------------------------------------------------------------------------------- plumbing

    def __repr__(self) -> str:
        return f"PlaymentClient(base_url={self.base_url!r}, api_key=<hidden>)"

    def __getstate__(self) -> dict[str, Any]:
        # Sessions, sockets and locks stay behind; each process opens its own on first use.
        state = self.__dict__.copy()
        state["_session"] = None
        state["_session_pid"] = -1
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.Lock()

    def close(self) -> None:
        """Close the connection pool of this process."""
        with self._local:
            if self._session is not None:
                self._session.close()
            self._session = None

    def __enter__(self) -> PlaymentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _http(self) -> requests.Session:
        """The process's session, created on first use and again after a fork."""
        pid = os.getpid()
        session = self._session
        if session is not None and self._session_pid == pid:
            return session
        with self._local:
            if self._session is None or self._session_pid != pid:
                session = requests.Session()
                # Never let the environment (.netrc) or a redirect add credentials behind our back.
                session.trust_env = False
                adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=self.pool_size, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                self._session = session
                self._session_pid = pid
            return self._session

    def _is_api(self, url: str) -> bool:
        return _origin(url) == self._api_origin

    def _send(self, url: str, *, params: Mapping[str, str] | None = None, stream: bool = False) -> requests.Response:
        """One GET, with the key only when the URL is the API's own origin, and never following redirects."""
        headers = {"Accept": "application/json"} if not stream else {}
        if self._is_api(url):
            headers["x-api-key"] = self._api_key
        logger.debug("GET %s", redact_url(url))
        try:
            return self._http().get(
                url,
                params=params,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
                stream=stream,
            )
        except _TRANSIENT_ERRORS as exc:
            raise _Transient(f"{type(exc).__name__} while requesting", cause=exc, from_api=self._is_api(url)) from None
        except requests.RequestException as exc:
            # An invalid URL or header: retrying cannot help. The message names the type, never a header value.
            raise DownloadError(f"request refused before sending ({type(exc).__name__})", url=url) from None

    def _with_retries(self, what: str, url: str, attempt_once: Any) -> Any:
        """Run ``attempt_once()`` until it succeeds, retrying :class:`_Transient` failures by the policy."""
        attempts = 0
        while True:
            attempts += 1
            try:
                return attempt_once()
            except _Transient as failure:
                if attempts > self.retry.max_retries:
                    raise _final_error(what, url, failure, attempts) from failure.cause
                pause = self.retry.delay(attempts - 1, failure.retry_after)
                logger.info(
                    "%s: %s (HTTP %s); retry %d/%d in %.2fs",
                    what,
                    failure.message,
                    failure.status,
                    attempts,
                    self.retry.max_retries,
                    pause,
                )
                time.sleep(pause)

    # ------------------------------------------------------------------------------------------- the API

    def _get_json(self, path: str, *, params: Mapping[str, str] | None = None, what: str) -> Any:
        url = self.base_url + path

        def attempt() -> Any:
            response = self._send(url, params=params)
            with response:
                body = response.content
                payload = _json_or_none(body)
                error = payload.get("error") if isinstance(payload, dict) else None
                code = error.get("code") if isinstance(error, dict) else None
                message = error.get("message") if isinstance(error, dict) else None
                status = response.status_code
                failed = status >= 400 or (isinstance(payload, dict) and payload.get("success") is False)
                if not failed and 200 <= status < 300:
                    if payload is None:
                        raise PlaymentFormatError(
                            f"{what}: the API answered HTTP {status} with a body that is not JSON"
                        )
                    return payload
                # The real status, even a 2xx with "success": false: only a listed code makes that transient
                # (passing None here would read as "no response at all" and retry any failure).
                if self.retry.should_retry(status, code) and not _is_permanent(code):
                    raise _Transient(
                        message or f"HTTP {status}",
                        status=status,
                        code=code,
                        retry_after=response.headers.get("Retry-After"),
                        from_api=True,
                    )
                raise _api_error(what, url, status, code, message or response.reason or "request failed")

        return self._with_retries(what, url, attempt)

    def get_project(self, project_id: str) -> Project:
        """Fetch a project's name and batches.

        Raises:
            APIError: the request failed (a subclass says why).
            PlaymentFormatError: the answer does not have the documented shape.
        """
        _check_id("project_id", project_id)
        payload = self._get_json(f"/v1/projects/{_quote(project_id)}/details", what=f"project {project_id}")
        return Project.from_api(payload, project_id=project_id)

    def iter_batch_jobs(self, project_id: str, batch_id: str) -> Iterator[JobSummary]:
        """Yield every job of a batch, following ``next_page_token`` page by page.

        Stops when the token is empty or absent, or a page has no jobs; a token seen twice is an error rather
        than an endless loop.

        Raises:
            APIError: a page request failed.
            PlaymentFormatError: a page does not have the documented shape, or the server repeats a token.
        """
        _check_id("project_id", project_id)
        _check_id("batch_id", batch_id)
        token = ""
        seen: set[str] = set()
        path = f"/v1/projects/{_quote(project_id)}/batch/{_quote(batch_id)}"
        while True:
            payload = self._get_json(path, params={"page_token": token}, what=f"project {project_id}, batch {batch_id}")
            page = BatchPage.from_api(payload, project_id=project_id, batch_id=batch_id)
            yield from page.jobs
            token = page.next_page_token
            if not token or not page.jobs:
                return
            if token in seen:
                raise PlaymentFormatError(
                    f"project {project_id}, batch {batch_id}: the server repeated page token {token[:32]!r}"
                )
            seen.add(token)

    def get_job(self, project_id: str, job_id: str) -> Job:
        """Fetch one job (status and result URL).

        Raises:
            APIError: the request failed (:class:`NotFoundError` for an unknown job).
            PlaymentFormatError: the answer does not have the documented shape.
        """
        _check_id("project_id", project_id)
        _check_id("job_id", job_id)
        payload = self._get_json(f"/v1/projects/{_quote(project_id)}/jobs/{_quote(job_id)}", what=f"job {job_id}")
        return Job.from_api(payload, project_id=project_id, job_id=job_id)

    def get_result_json(self, job: Job) -> Any:
        """Download a completed job's result object and decode its JSON (unparsed).

        Raises:
            JobNotCompletedError: the job is not completed (it has no result).
            DownloadError, APIError: the result could not be fetched.
            PlaymentFormatError: the result is not JSON.
        """
        if not job.is_completed or not job.result_url:
            raise JobNotCompletedError(job.job_id, job.status if not job.is_completed else "completed without result")
        body = self.download(job.result_url, private=True)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PlaymentFormatError(
                f"job {job.job_id}: the result at {redact_url(job.result_url)} is not JSON: {exc}"
            ) from exc

    def get_result(self, job: Job) -> JobResult:
        """Download and parse a completed job's result object.

        Args:
            job: The job, as :meth:`get_job` returns it.

        Returns:
            The typed result, with one :class:`~playment_torch.models.FrameRef` per usable frame.

        Raises:
            JobNotCompletedError: the job is not completed.
            DownloadError, APIError: the result could not be fetched.
            PlaymentFormatError: the result is malformed (the message names the job, frame and JSON path).
        """
        return JobResult.from_api(self.get_result_json(job), project_id=job.project_id, job_id=job.job_id)

    # ------------------------------------------------------------------------------------------- downloads

    def is_playment_hosted(self, url: str) -> bool:
        """Whether ``url`` is private to Playment (or not http): it goes through ``/v1/attachments``."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return True
        host = (parts.hostname or "").lower()
        for pattern in self.attachment_hosts:
            pattern = pattern.lower()
            if pattern.startswith(".") and (host.endswith(pattern) or host == pattern[1:]):
                return True
            if pattern.endswith("-") and host.startswith(pattern):
                return True
            if host == pattern:
                return True
        # Path-style S3 URLs name the bucket in the path: s3.<region>.amazonaws.com/playment-data-uploads/...
        bucket = parts.path.lstrip("/").split("/", 1)[0].lower()
        return host.endswith("amazonaws.com") and bucket.startswith("playment-")

    def download(self, url: str, *, private: bool = False) -> bytes:
        """Fetch a file's bytes: attachments-aware, retried, verified against Content-Length, size-capped.

        Playment-hosted URLs (and ``s3://``/``gs://`` ones) are exchanged for a signed URL at
        ``/v1/attachments``; the signed URL is fetched without the API key, and asked for again when it has
        expired (403). A user's own http(s) URLs are fetched directly. URLs under a ``local_roots`` prefix are
        read from disk.

        Args:
            url: The file's URL.
            private: The URL names a file Playment keeps private (a job's result, a mask): always go through
                ``/v1/attachments``, whatever its host.

        Raises:
            DownloadError: the file could not be fetched intact after the retries, is larger than the cap, or
                its URL is refused (``file://`` without a mapping, an unknown scheme).
            APIError: the attachments endpoint refused the URL (unknown, unauthorised).
        """
        if not isinstance(url, str) or not url.strip():
            raise DownloadError("empty URL")
        url = url.strip()
        local = self._local_path(url)
        if local is not None:
            return self._read_local(url, local)
        scheme = _split(url, DownloadError("malformed URL", url=url)).scheme.lower()
        if scheme == "file" or not scheme:
            raise DownloadError(
                "refusing to read a local file named by a result; map its prefix with local_roots= if it is yours",
                url=url,
            )
        if scheme in ("http", "https") and not private and not self.is_playment_hosted(url):
            return self._with_retries(f"download {redact_url(url)}", url, lambda: self._fetch(url))
        return self._download_attachment(url)

    def _download_attachment(self, url: str) -> bytes:
        what = f"attachment {redact_url(url)}"

        def attempt() -> bytes:
            # Every attempt asks for a fresh signature, so an expired one costs one round trip, not a backoff.
            try:
                return self._fetch(self._sign(url), signed=True)
            except _Transient as failure:
                if failure.status != 403:
                    raise
                logger.info("%s: signed URL refused (HTTP 403), asking for a new one", what)
                return self._fetch(self._sign(url), signed=True)

        return self._with_retries(what, url, attempt)

    def _sign(self, url: str) -> str:
        """Exchange a Playment-hosted URL for a signed one via ``/v1/attachments`` (one attempt)."""
        endpoint = self.base_url + "/v1/attachments"
        response = self._send(endpoint, params={"url": url})
        with response:
            status = response.status_code
            location = response.headers.get("Location")
            if 300 <= status < 400 and location:
                # Resolved against the endpoint, so a relative Location stays on the API host.
                return urllib.parse.urljoin(endpoint, location)
            payload = _json_or_none(response.content)
            error = payload.get("error") if isinstance(payload, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            if 200 <= status < 300:
                # Some deployments answer with the signed URL in the body instead of a redirect.
                data = payload.get("data") if isinstance(payload, dict) else None
                signed = data.get("url") if isinstance(data, dict) else data
                if isinstance(signed, str) and signed:
                    return signed
                raise DownloadError("the attachments endpoint answered without a redirect", url=url)
            if self.retry.should_retry(status, code) and not _is_permanent(code):
                raise _Transient(
                    message or f"HTTP {status}",
                    status=status,
                    code=code,
                    retry_after=response.headers.get("Retry-After"),
                    from_api=True,
                )
            raise _api_error(f"attachment {redact_url(url)}", endpoint, status, code, message or "refused")

    def _fetch(self, url: str, *, signed: bool = False) -> bytes:
        """GET one file (one attempt): stream it under the size cap and check it arrived whole.

        Args:
            url: The file's URL.
            signed: Whether it is a signed URL, where a 403 means "expired, ask again" rather than
                "forbidden".
        """
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadError(f"refusing to fetch a {scheme or 'scheme-less'} URL", url=url)
        response = self._send(url, stream=True)
        with response:
            status = response.status_code
            if status != 200:
                if 300 <= status < 400:
                    raise DownloadError(f"unexpected redirect (HTTP {status}) from a file URL", url=url)
                if (signed and status == 403) or self.retry.should_retry(status):
                    raise _Transient(f"HTTP {status}", status=status, retry_after=response.headers.get("Retry-After"))
                if status == 404:
                    raise NotFoundError("file not found", status_code=404, url=url)
                raise DownloadError(f"HTTP {status} while downloading", url=url)
            declared = response.headers.get("Content-Length")
            expected = int(declared) if declared and declared.isdigit() else None
            if expected is not None and expected > self.max_download_bytes:
                raise DownloadError(f"file is {expected} bytes, over the {self.max_download_bytes}-byte cap", url=url)
            chunks = []
            size = 0
            try:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    size += len(chunk)
                    if size > self.max_download_bytes:
                        raise DownloadError(f"file exceeds the {self.max_download_bytes}-byte cap", url=url)
                    chunks.append(chunk)
            except requests.RequestException as exc:
                raise _Transient(f"body interrupted after {size} bytes ({type(exc).__name__})", cause=exc) from None
            body = b"".join(chunks)
            encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
            if expected is not None and not encoded and len(body) != expected:
                raise _Transient(f"truncated body: {len(body)} of {expected} bytes")
            return body

    def _local_path(self, url: str) -> Path | None:
        for prefix, root in sorted(self.local_roots.items(), key=lambda kv: -len(kv[0])):
            if url.startswith(prefix):
                rest = urllib.parse.unquote(url[len(prefix) :].split("?", 1)[0])
                base = Path(root).resolve()
                path = (base / rest.lstrip("/")).resolve()
                if base != path and base not in path.parents:
                    raise DownloadError("mapped path escapes its local root", url=url)
                return path
        return None

    def _read_local(self, url: str, path: Path) -> bytes:
        try:
            size = path.stat().st_size
            if size > self.max_download_bytes:
                raise DownloadError(f"file is {size} bytes, over the {self.max_download_bytes}-byte cap", url=url)
            return path.read_bytes()
        except OSError as exc:
            raise DownloadError(f"cannot read local file {path} ({exc.strerror})", url=url) from exc

    # ------------------------------------------------------------------------------------------- creating work
    # Used by ``playment_torch.relabel``. A POST is not idempotent: it is retried only when the request was
    # certainly not applied (see ``_post_json``); idempotency across runs comes from the caller's reference_id.

    def create_batch(self, project_id: str, name: str, description: str = "") -> str:
        """Create a batch in a project (``POST /v1/projects/:project_id/batch``).

        Playment documents nothing about duplicate names: a second call with the same name may create a second
        batch. Look the name up in :meth:`get_project` first when that matters.

        Args:
            project_id: The project.
            name: The batch's name.
            description: Its description.

        Returns:
            The new batch's id.

        Raises:
            APIError: the request failed; the server's validation message (code ``GE_0001``) is in the text.
                A failure without an answer says the batch may exist anyway.
            PlaymentFormatError: the answer has no ``batch_id``.
        """
        _check_id("project_id", project_id)
        what = f"project {project_id}: create batch {name!r}"
        payload = self._post_json(
            f"/v1/projects/{_quote(project_id)}/batch", {"name": name, "description": description}, what
        )
        return self._created_id(payload, "batch_id", what)

    def create_job(
        self,
        project_id: str,
        *,
        reference_id: str,
        work_flow_id: str,
        batch_id: str | None = None,
        sensor_data: Mapping[str, Any],
    ) -> Job:
        """Create a job (``POST /v1/projects/:project_id/jobs``) with ``{"data": {"sensor_data": ...}}``.

        Args:
            project_id: The project.
            reference_id: The caller's identifier of the job (Playment does not document whether it rejects
                duplicates: keep it unique yourself, as :func:`playment_torch.relabel.create_jobs` does).
            work_flow_id: The workflow the job goes through.
            batch_id: The batch; ``None`` for the project's default batch.
            sensor_data: ``{"frames": [...], "sensor_meta": [...]}``, the shape a result's ``sensor_data`` has.

        Returns:
            The new job, with ``job_id``, ``reference_id``, ``work_flow_id`` and ``batch_id``; its ``status`` is
            empty because the answer does not tell it (ask :meth:`get_job`).

        Raises:
            APIError: the request failed; the server's validation message (code ``GE_0001``) is in the text.
                A failure without an answer (timeout, dropped connection, most 5xx) says the job may exist
                anyway: list the batch before trying again.
            PlaymentFormatError: the answer has no ``job_id``.
        """
        _check_id("project_id", project_id)
        body: dict[str, Any] = {"reference_id": reference_id, "work_flow_id": work_flow_id}
        if batch_id is not None:
            body["batch_id"] = batch_id
        body["data"] = {"sensor_data": sensor_data}
        what = f"project {project_id}: create job {reference_id!r}"
        payload = self._post_json(f"/v1/projects/{_quote(project_id)}/jobs", body, what)
        job_id = self._created_id(payload, "job_id", what)
        data = payload.get("data") if isinstance(payload, dict) else None
        answered = data if isinstance(data, dict) else {}
        return Job(
            project_id=project_id,
            job_id=job_id,
            status="",
            batch_id=batch_id or "",
            reference_id=str(answered.get("reference_id") or reference_id),
            work_flow_id=str(answered.get("work_flow_id") or work_flow_id),
        )

    def _post_json(self, path: str, body: Mapping[str, Any], what: str) -> Any:
        """POST a JSON body to the API and return the decoded answer; retried only where nothing was applied.

        Retried (by :attr:`retry`'s attempts and backoff, honouring ``Retry-After``): a connection that was
        never established (refused, DNS failure, connect timeout: no byte of the request left), and HTTP 408,
        429 (or a rate-limit error code) and 503, which say the request was not processed. Never retried, because
        the server may have acted on the request: a read timeout or a connection lost after sending, any other
        5xx, and Playment's "try later" codes. Those fail with an :class:`APIError` saying the outcome is
        unknown; a caller that keys its work by ``reference_id`` lists first and then tries again.

        The key goes only to the API's origin, redirects are never followed, and every attempt has the
        client's timeout.

        Args:
            path: The path below the base URL.
            body: The JSON body.
            what: What the request does, for error messages.

        Returns:
            The decoded JSON answer (the ``{"data": ..., "success": true}`` envelope).

        Raises:
            APIError: the request failed (a subclass says why).
            PlaymentFormatError: a 2xx answer that is not JSON (the request may have been applied).
        """
        url = self.base_url + path
        data = json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self._is_api(url):
            headers["x-api-key"] = self._api_key
        attempts = 0
        while True:
            attempts += 1
            retry_after: str | None = None
            status: int | None = None
            code: str | None = None
            message: str | None = None
            logger.debug("POST %s", redact_url(url))
            try:
                response = self._http().post(
                    url, data=data, headers=headers, timeout=self.timeout, allow_redirects=False
                )
            except requests.RequestException as exc:
                if not self._never_sent(exc):
                    raise APIError(
                        f"{what}: no answer ({type(exc).__name__}); the server may have applied the request, "
                        "so it is not retried: list what exists before trying again",
                        url=url,
                        attempts=attempts,
                    ) from exc
                if attempts > self.retry.max_retries:
                    raise APIError(
                        f"{what}: could not connect ({type(exc).__name__}); nothing was sent",
                        url=url,
                        attempts=attempts,
                    ) from exc
                message = type(exc).__name__
            else:
                with response:
                    status = response.status_code
                    payload = _json_or_none(response.content)
                    error = payload.get("error") if isinstance(payload, dict) else None
                    code = error.get("code") if isinstance(error, dict) else None
                    message = error.get("message") if isinstance(error, dict) else None
                    failed = status >= 400 or (isinstance(payload, dict) and payload.get("success") is False)
                    if 200 <= status < 300 and not failed:
                        if payload is None:
                            raise PlaymentFormatError(
                                f"{what}: the API answered HTTP {status} with a body that is not JSON "
                                "(the request may have been applied)"
                            )
                        return payload
                    if 300 <= status < 400:
                        raise APIError(f"{what}: unexpected redirect", status_code=status, url=url)
                    not_applied = status in (408, 429, 503) or code in _RATE_CODES
                    if not not_applied or attempts > self.retry.max_retries:
                        raise _api_error(what, url, status, code, message or response.reason or "failed", attempts)
                    retry_after = response.headers.get("Retry-After")
            pause = self.retry.delay(attempts - 1, retry_after)
            logger.info(
                "%s: %s (HTTP %s); retry %d/%d in %.2fs", what, message, status, attempts, self.retry.max_retries, pause
            )
            time.sleep(pause)

    @staticmethod
    def _never_sent(exc: requests.RequestException) -> bool:
        """Whether a request failed before any byte left: no connection was made (refused, DNS, timeout)."""
        import urllib3.exceptions  # requests' own transport; imported here to keep this block self-contained

        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return True
        reason = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", reason)  # requests wraps urllib3's MaxRetryError around the cause
        return isinstance(reason, urllib3.exceptions.NewConnectionError)

    @staticmethod
    def _created_id(payload: Any, name: str, what: str) -> str:
        """The id a create endpoint answered with (``data.<name>``), validated."""
        data = payload.get("data") if isinstance(payload, dict) else None
        value = data.get(name) if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value):
            raise PlaymentFormatError(f"{what}: the answer has no {name!r} (the request may have been applied)")
        return str(value)


# ------------------------------------------------------------------------------------------- helpers


def _split(url: str, error: PlaymentError) -> urllib.parse.SplitResult:
    """``urlsplit`` that raises ``error`` (a library error) on a malformed URL, e.g. an unclosed ``[``."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what raises on "host:notaport"
    except ValueError:
        raise error from None
    return parts


def _origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)``; a malformed URL has no origin, so it can never match the API's."""
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return "", "", None
    return scheme, (parts.hostname or "").lower(), port


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None


def _is_permanent(code: str | None) -> bool:
    return code is not None and (code in _AUTH_CODES or code in _NOT_FOUND_CODES)


def _api_error(what: str, url: str, status: int | None, code: str | None, message: str, attempts: int = 1) -> APIError:
    """Map an HTTP status and Playment error code to the right :class:`APIError` subclass."""
    kind: type[APIError] = APIError
    if code in _AUTH_CODES or status in (401, 403):
        kind = AuthenticationError
    elif code in _NOT_FOUND_CODES or status == 404:
        kind = NotFoundError
    elif code in _RATE_CODES or status == 429:
        kind = RateLimitError
    elif code in _RETRY_CODES or (status is not None and status >= 500):
        kind = ServerError
    return kind(f"{what}: {message}", status_code=status, code=code, url=url, attempts=attempts)


def _final_error(what: str, url: str, failure: _Transient, attempts: int) -> PlaymentError:
    """The exception for a transient failure that outlived every retry."""
    if failure.from_api:
        return _api_error(what, url, failure.status, failure.code, failure.message, attempts)
    if failure.status == 403:
        return DownloadError(f"{what}: signed URL kept being refused (HTTP 403)", url=url, attempts=attempts)
    return DownloadError(f"{what}: {failure.message}", url=url, attempts=attempts)
