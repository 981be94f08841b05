"""``PlaymentClient``: the Playment API over HTTP, with retries that respect the server and safe downloads.

Security rules this module enforces (DESIGN.md, decision 7):

* the ``x-api-key`` header is attached per request, only to requests for the API's own origin; redirects are
  never followed automatically, so a signed URL on another host never sees the key;
* ``http://`` base URLs are refused unless the host is loopback;
* the key is attached only when two parsers agree the URL is the API's origin: ``urllib.parse`` and the one the
  HTTP stack connects with (``urllib3.util.parse_url``); URLs with a backslash or whitespace in their authority,
  or a control character anywhere, are refused before any request (``http://a:1\\@api-host/`` connects to
  ``a:1`` while ``urllib.parse`` reads ``api-host``);
* the key never appears in a ``repr``, an exception or a log record: URLs are logged without query strings,
  server-provided messages are scrubbed of the key and of ``x-api-key: ...`` values, and a logging filter on
  urllib3's loggers removes the query strings (signatures) of the URLs urllib3 logs at DEBUG;
* a key read from ``PLAYMENT_API_KEY`` is not pickled (each process reads its own environment);
* a result can never make the client read a local file: ``file://`` URLs are refused unless a ``local_roots``
  prefix maps them, and mapped paths cannot escape their root.

Reliability rules:

* a body is checked against its ``Content-Length`` as it came over the wire (compressed bytes for
  ``Content-Encoding: gzip``/``deflate``), and a compressed body must reach its end-of-stream marker; the size
  cap applies to the decoded size (gzip bombs);
* every download has an overall deadline besides the per-read timeout (a drip-fed body cannot hold a worker);
* a host that stops answering opens a circuit breaker shared by the client's threads: further requests to it
  fail at once with :class:`~playment_torch.errors.HostUnreachableError` for a cool-down;
* requests to the API host (attachments included) pass a token bucket shared by the client's threads.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import logging
import math
import os
import random
import re
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import requests
import requests.adapters
import urllib3
import urllib3.exceptions
import urllib3.util

from playment_torch.errors import (
    APIError,
    AuthenticationError,
    ConfigError,
    DownloadError,
    HostUnreachableError,
    JobNotCompletedError,
    NotFoundError,
    PlaymentError,
    PlaymentFormatError,
    RateLimitError,
    ServerError,
    redact_url,
)
from playment_torch.models import BatchPage, Job, JobResult, JobSummary, Project

__all__ = ["DEFAULT_BASE_URL", "DOCUMENTED_RATE", "PlaymentClient", "RetryPolicy"]

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
# Failures worth a retry: a GET that got no response (urllib3's own exceptions, as GETs go to its pool directly,
# see _send). Other request errors (an invalid URL or header) fail at once.
_TRANSIENT_ERRORS = (
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,  # NewConnectionError (refused, DNS) is one too
    urllib3.exceptions.SSLError,
    urllib3.exceptions.ProxyError,
    urllib3.exceptions.PoolError,
    urllib3.exceptions.MaxRetryError,
    OSError,
)
_RATE_CODES = frozenset({"rate_limit", "rate-limit", "too_many_requests", "rate_limit_exceeded"})
# Failures while reading a body we already have the headers of: the connection broke, so it is worth a retry.
_READ_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, requests.RequestException, ValueError)
# Only the codings we decode ourselves: advertising brotli or zstd would get bodies we do not check.
_ACCEPT_ENCODING = "gzip, deflate"
_READ_CHUNK = 1 << 20
# A redirect's body up to this long is read (under the usual deadline), so its connection serves the next request.
_SHORT_BODY = 64 * 1024
#: Requests per second Playment documents for its API (``rate_limit="auto"`` on a non-loopback host).
DOCUMENTED_RATE = 20.0
# Characters that make urllib.parse and urllib3 disagree about where a URL's host ends, or that no URL has.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AUTHORITY_BAD = re.compile(r"[\\\s]")
# Scheme and authority as urllib3's URI pattern reads them (the authority ends at \\, /, ? or #).
_URI_HEAD = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^\\/?#]*")
# ``?query`` in log lines and exception texts: up to whitespace, a quote or a closing bracket.
_QUERY = re.compile(r"\?[^\s\"'<>)]+")
# ``x-api-key: value`` / ``api_key=value`` in a server's message.
_KEYISH = re.compile(r"(?i)\b(x-api-key|api[-_]?key)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+")
_MESSAGE_MAX = 300
_URLLIB3_LOGGERS = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.response",
    "urllib3.poolmanager",
    "urllib3.util.retry",
)


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


class _Breaker:
    """A circuit breaker per host, shared by a client's threads.

    ``threshold`` requests in a row that got no response at all (refused, reset, timed out) open it for
    ``cooldown`` seconds: requests to the host then fail at once. After the cool-down one request goes through
    as a probe (the others keep failing fast); its success closes the breaker, its failure opens it again.
    Any response, whatever its status, is a success: the host is there.
    """

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._last: dict[str, str] = {}

    def check(self, host: str, origin: str) -> None:
        """Raise :class:`HostUnreachableError` while the breaker of ``host`` is open."""
        if self.threshold <= 0:
            return
        with self._lock:
            until = self._open_until.get(host)
            if until is None:
                return
            now = time.monotonic()
            if now >= until:
                # Half-open: this request probes the host; the others keep failing fast until it answers.
                self._open_until[host] = now + self.cooldown
                return
            failures, last, remaining = self._failures.get(host, 0), self._last.get(host, "?"), until - now
        raise HostUnreachableError(
            f"{host} is unreachable: {failures} requests in a row got no response (last: {last}); "
            f"failing requests to it at once for the next {remaining:.1f} s",
            host=host,
            url=origin,
        )

    def failure(self, host: str, error: str) -> None:
        """Count a request to ``host`` that got no response."""
        if self.threshold <= 0:
            return
        with self._lock:
            failures = self._failures.get(host, 0) + 1
            self._failures[host] = failures
            self._last[host] = error
            if failures < self.threshold:
                return
            opening = host not in self._open_until
            self._open_until[host] = time.monotonic() + self.cooldown
        if opening:
            logger.warning(
                "%s is unreachable (%d requests in a row got no response, last: %s): failing requests to it "
                "at once for %.0f s",
                host,
                failures,
                error,
                self.cooldown,
            )

    def success(self, host: str) -> None:
        """A response arrived from ``host``: close its breaker."""
        if self.threshold <= 0 or host not in self._failures:
            return
        with self._lock:
            self._failures.pop(host, None)
            self._open_until.pop(host, None)
            self._last.pop(host, None)


class _TokenBucket:
    """A token bucket shared by a client's threads: at most ``rate`` requests in any one-second window.

    The bucket holds ``burst = max(1, rate // 10)`` tokens and refills at ``0.95 * (rate - burst)`` per second
    (at least half the rate), so a full burst plus a second of refill stays under ``rate``. A request that finds
    no token reserves the next one and sleeps until it is due, so waiting threads are served in order.
    """

    def __init__(self, rate: float, *, burst: int | None = None, refill: float | None = None) -> None:
        # (Other pacers pass their own burst and refill: relabel's job POSTs use bursts of one at ``rate``.)
        self.burst = float(burst) if burst is not None else max(1.0, float(rate // 10))
        self.refill = refill if refill is not None else 0.95 * max(rate - self.burst, rate / 2)
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._stamp = time.monotonic()

    def acquire(self) -> float:
        """Take a token, sleeping until one is due; returns the seconds slept."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.refill)
            self._stamp = now
            self._tokens -= 1.0
            wait = -self._tokens / self.refill if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
        return wait


class _Decoder:
    """Incremental gzip/deflate decoding that knows whether the stream reached its end.

    urllib3's own decoding returns whatever a truncated stream decoded to; this one reports it.
    """

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._gzip = coding != "deflate"
        self._fresh = True
        self._obj = self._new()

    def _new(self) -> Any:
        return zlib.decompressobj(zlib.MAX_WBITS | 16 if self._gzip else zlib.MAX_WBITS)

    @staticmethod
    def for_encoding(value: str, url: str) -> _Decoder | None:
        """The decoder of a ``Content-Encoding`` value; ``None`` for identity.

        Raises:
            DownloadError: a coding this client does not decode (it never advertises one).
        """
        codings = [c.strip().lower() for c in value.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if not codings:
            return None
        if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
            return _Decoder(codings[0])
        raise DownloadError(f"unsupported Content-Encoding {value[:40]!r}", url=url)

    def feed(self, data: bytes, limit: int) -> bytes:
        """Decode ``data``, producing at most ``limit + 1`` bytes (one more tells the caller the cap is passed).

        Raises:
            _Transient: the stream is corrupt, or has data after its end.
        """
        out = []
        produced = 0
        while data and produced <= limit:
            if self._obj.eof:
                if not self._gzip:
                    raise _Transient(f"data after the end of the {self.coding} stream")
                self._obj = self._new()  # gzip allows several members, one after the other
            try:
                piece = self._obj.decompress(data, max(1, limit + 1 - produced))
            except zlib.error as exc:
                if self._fresh and not self._gzip:
                    # "deflate" is zlib-wrapped by the standard, raw by some servers: accept both.
                    self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
                    self._fresh = False
                    continue
                raise _Transient(f"corrupt {self.coding} stream ({exc})") from None
            self._fresh = False
            out.append(piece)
            produced += len(piece)
            data = self._obj.unused_data if self._obj.eof else self._obj.unconsumed_tail
        return b"".join(out)

    def finish(self) -> None:
        """Raise :class:`_Transient` unless the stream reached its end marker (else it was truncated)."""
        if not self._obj.eof:
            raise _Transient(f"truncated {self.coding} stream: the body ended before the end of the compressed data")


class _RedactQueries(logging.Filter):
    """Removes query strings (signatures of signed URLs) and key-looking values from urllib3's log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        redacted = _redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACT_FILTER = _RedactQueries()


def _install_log_redaction() -> None:
    """Attach the query-string redacting filter to urllib3's loggers (idempotent; once per process is enough).

    urllib3 logs every request line at DEBUG (``GET /signed/...?signature=...``); a signed URL is a credential
    for its lifetime. Every :class:`PlaymentClient` calls this when it is created or unpickled. The filter stays
    for the life of the process and redacts the query strings of every URL urllib3 logs, ours or not.
    """
    for name in _URLLIB3_LOGGERS:
        logging.getLogger(name).addFilter(_REDACT_FILTER)  # addFilter ignores a filter already there


_PICKLE_DEFAULTS: dict[str, Any] = {
    "_key_from_env": False,
    "download_deadline": 60.0,
    "min_download_rate": 256.0 * 1024,
    "rate_limit": None,
    "breaker_threshold": 5,
    "breaker_cooldown": 10.0,
}


class PlaymentClient:
    """A thread-safe client of the Playment API.

    Pickling: a client pickles without its session, sockets and locks. An explicit ``api_key=`` *is* pickled
    (DataLoader workers started with ``spawn`` need it), so a saved pickle of a client or dataset holds the key.
    With ``api_key=None`` the key comes from ``PLAYMENT_API_KEY`` and is left out of the pickle: the unpickled
    client reads ``PLAYMENT_API_KEY`` in its own process on its first request that needs the key, and raises
    :class:`~playment_torch.errors.ConfigError` there if it is unset (not when unpickling, so a worker that only
    reads a warm cache needs no key).

    Rate limit, circuit breaker and connection pool are per process, shared by the threads of that process.

    Args:
        api_key: The API key; ``None`` reads ``PLAYMENT_API_KEY`` (and keeps it out of pickles).
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
        max_download_bytes: Size cap of one download (of its decoded size when compressed); larger files fail
            with :class:`DownloadError`.
        pool_size: Connections kept per host, enough for concurrent downloads.
        download_deadline: Overall seconds one response body may take, at least (``None``: no deadline,
            only the per-read ``timeout``). The deadline grows with the size: ``max(download_deadline,
            bytes / min_download_rate)``, with bytes the ``Content-Length`` or, without one, the bytes received
            so far. Passing it is a retried :class:`DownloadError` (:class:`APIError` for API answers).
        min_download_rate: Bytes per second a body must average beyond ``download_deadline``.
        rate_limit: Most requests the API host (attachments included) sees from this process's copy of the
            client in any one-second window (for ``rate_limit >= 1``), shared by its threads; ``None`` disables
            it. ``"auto"`` (default) uses :data:`DOCUMENTED_RATE` (20/s) for a remote API and no limit for a
            loopback one (the fake server, whose tests must stay fast); pass a number to limit a loopback server
            too. Each process (DataLoader worker, rank) has its own bucket.
        breaker_threshold: Requests in a row to one host that got no response (refused, reset, timed out)
            after which requests to that host fail at once with :class:`HostUnreachableError`; 0 disables it.
        breaker_cooldown: Seconds the breaker stays open before one request probes the host again. Short, so
            a blip (a load balancer resetting every connection at once) costs seconds of failed requests, while
            a dead host keeps failing fast: each probe fails and opens the breaker again.

    Raises:
        ConfigError: no API key, an unsafe or malformed base URL, or an option out of range.
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
        download_deadline: float | None = 60.0,
        min_download_rate: float = 256 * 1024,
        rate_limit: float | Literal["auto"] | None = "auto",
        breaker_threshold: int = 5,
        breaker_cooldown: float = 10.0,
    ) -> None:
        self._key_from_env = api_key is None
        self._api_key: str | None = _clean_key(api_key if api_key is not None else os.environ.get(API_KEY_ENV))
        if _CONTROL.search(base_url) or _AUTHORITY_BAD.search(_authority(base_url)):
            raise ConfigError("base_url is not a valid URL (a backslash, whitespace or control character)")
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
        if download_deadline is not None and not download_deadline > 0:
            raise ConfigError(f"download_deadline must be positive or None, got {download_deadline!r}")
        if not min_download_rate > 0:
            raise ConfigError(f"min_download_rate must be positive, got {min_download_rate!r}")
        self.download_deadline = download_deadline
        self.min_download_rate = float(min_download_rate)
        if rate_limit == "auto":
            rate_limit = None if parts.hostname in _LOOPBACK else DOCUMENTED_RATE
        if rate_limit is not None and not (isinstance(rate_limit, (int, float)) and math.isfinite(rate_limit)):
            raise ConfigError(f"rate_limit must be a number of requests per second, 'auto' or None, got {rate_limit!r}")
        if rate_limit is not None and not rate_limit > 0:
            raise ConfigError(f"rate_limit must be positive or None, got {rate_limit!r}")
        self.rate_limit: float | None = None if rate_limit is None else float(rate_limit)
        if breaker_threshold < 0 or not breaker_cooldown >= 0:
            raise ConfigError("breaker_threshold and breaker_cooldown must not be negative")
        self.breaker_threshold = breaker_threshold
        self.breaker_cooldown = float(breaker_cooldown)
        self._local = threading.Lock()
        self._session: requests.Session | None = None
        self._session_pid = -1
        self._new_process_state()
        _install_log_redaction()

    # ------------------------------------------------------------------------------------------- plumbing

    def __repr__(self) -> str:
        return f"PlaymentClient(base_url={self.base_url!r}, api_key=<hidden>)"

    def __getstate__(self) -> dict[str, Any]:
        # Sessions, sockets and locks stay behind; each process opens its own on first use. A key that came
        # from the environment stays behind too: the other process reads its own environment.
        state = self.__dict__.copy()
        state["_session"] = None
        state["_session_pid"] = -1
        if state.get("_key_from_env"):
            state["_api_key"] = None
        for name in ("_local", "_breaker", "_bucket"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickles made by version 0.1 lack the newer options: give them their defaults.
        for name, default in _PICKLE_DEFAULTS.items():
            state.setdefault(name, default)
        self.__dict__.update(state)
        self._local = threading.Lock()
        self._new_process_state()
        _install_log_redaction()

    def _new_process_state(self) -> None:
        """Fresh breaker and rate limiter: they hold locks, and their state belongs to one process."""
        self._breaker = _Breaker(self.breaker_threshold, self.breaker_cooldown)
        self._bucket = _TokenBucket(self.rate_limit) if self.rate_limit is not None else None

    def _key(self) -> str:
        """The API key; read from ``PLAYMENT_API_KEY`` here if this client was unpickled without it.

        Raises:
            ConfigError: it came from the environment of the pickling process and this one has none.
        """
        key = self._api_key
        if key is None:
            with self._local:
                if self._api_key is None:
                    raw = os.environ.get(API_KEY_ENV)
                    if not raw or not raw.strip():
                        raise ConfigError(
                            f"no Playment API key in this process: the client was pickled without the key it read "
                            f"from {API_KEY_ENV}; set {API_KEY_ENV} here too"
                        )
                    self._api_key = _clean_key(raw)
                key = self._api_key
        return key

    def _scrub(self, text: object, limit: int = _MESSAGE_MAX) -> str:
        """A server-provided text made safe for an exception or log: no key, no key-looking value, bounded."""
        text = str(text)
        key = self._api_key
        if key:
            for form in {key, urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key)}:
                text = text.replace(form, "<redacted>")
        text = _KEYISH.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
        return text if len(text) <= limit else text[:limit] + "..."

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
                if self._session_pid != -1:
                    # A forked child: the parent's breaker and limiter locks may have been held at the fork.
                    self._new_process_state()
                session = requests.Session()
                # Never let the environment (.netrc) or a redirect add credentials behind our back.
                session.trust_env = False
                self._mount(session)
                self._session = session
                self._session_pid = pid
            return self._session

    def ensure_pool_size(self, connections: int) -> None:
        """Keep at least ``connections`` connections per host, for that many concurrent requests.

        With fewer, threads beyond the pool size open a connection per request and throw it away afterwards
        (urllib3's "Connection pool is full, discarding connection"). ``prefetch`` with more threads than
        :attr:`pool_size` calls this. Never shrinks the pool; idempotent.

        Args:
            connections: Concurrent requests the caller is about to make.
        """
        with self._local:
            if connections <= self.pool_size:
                return
            self.pool_size = connections
            if self._session is not None and self._session_pid == os.getpid():
                # Mount a larger adapter; requests in flight finish on the old one, whose pool is then dropped.
                self._mount(self._session)

    def _mount(self, session: requests.Session) -> None:
        adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=self.pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)

    def _is_api(self, url: str, stack: tuple[str, str, int | None] | None = None) -> bool:
        # Both views must agree: urllib.parse's, and urllib3's, which is where the connection really goes.
        if stack is None:
            stack = _stack_origin(url)
        return stack == self._api_origin and _origin(url) == self._api_origin

    def _send(self, url: str, *, params: Mapping[str, str] | None = None, api: bool = False) -> _Response:
        """One streamed GET, with the key only when the URL is the API's own origin, never following redirects.

        Refuses URLs the two parsers could read differently, fails at once while the host's breaker is open,
        and waits for the rate limiter before requests to the API host.

        Raises:
            _Transient: no response (connection refused, reset, timed out).
            DownloadError: the URL is refused before sending.
            HostUnreachableError: the host's breaker is open.
            ConfigError: the key is needed and this (unpickled) process has none.
        """
        _check_url_text(url)
        session = self._http()
        stack = _stack_origin(url)
        is_api = self._is_api(url, stack)
        host, origin = _host_label(stack)
        self._breaker.check(host, origin)
        headers = {"Accept-Encoding": _ACCEPT_ENCODING}
        if api:
            headers["Accept"] = "application/json"
        if is_api:
            headers["x-api-key"] = self._key()
            if self._bucket is not None:
                self._bucket.acquire()
        if logger.isEnabledFor(logging.DEBUG):  # redacting costs more than the check, on every request
            logger.debug("GET %s", redact_url(url))
        try:
            # requests' rules for the URL (IDNA host, requoting, params), so a signed URL goes out byte for byte
            # as requests would send it; then straight to the adapter's urllib3 pool. A requests.Session.get
            # costs ~0.5 ms of CPU more per request (settings merged, cookies, hooks, a Response built), four
            # times per cold frame.
            prepared = requests.PreparedRequest()
            prepared.prepare_url(url, params)
            # (The HTTPAdapter _mount put there, with requests' TLS settings: certifi's bundle, as session.get
            # would verify with.)
            adapter = cast(requests.adapters.HTTPAdapter, session.get_adapter(str(prepared.url)))
            pool = cast(urllib3.HTTPConnectionPool, adapter.get_connection_with_tls_context(prepared, verify=True))
            raw = pool.urlopen(
                "GET",
                prepared.path_url,
                headers=headers,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                retries=False,
                timeout=urllib3.util.Timeout(connect=self.timeout, read=self.timeout),
            )
        except _TRANSIENT_ERRORS as exc:
            _redact_exception(exc)
            name = _failure_name(exc)
            self._breaker.failure(host, name)
            raise _Transient(f"{name} while requesting", cause=exc, from_api=is_api) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError) as exc:
            # An invalid URL or header: retrying cannot help. The message names the type, never a header value.
            # (urllib3's LocationParseError for a host IDNA cannot encode escapes requests unwrapped.)
            raise DownloadError(f"request refused before sending ({type(exc).__name__})", url=url) from None
        self._breaker.success(host)
        return _Response(raw)

    def _read_body(
        self, response: _Response | requests.Response, url: str, *, from_api: bool = False, in_place: bool = False
    ) -> bytes:
        """Read a streamed body whole: under the size cap and the deadline, checked against its framing.

        The raw (still encoded) bytes are counted against ``Content-Length``; a gzip/deflate body is decoded
        here, not by urllib3, so a stream that stops before its end marker is a truncation, not a short body.
        With ``in_place`` and a plain body of known length, the chunks are copied into one ``bytearray`` of
        that length as they arrive (peak memory about the body, where joining them costs a second copy).

        Raises:
            _Transient: the body broke off, is truncated or corrupt, or passed the deadline.
            DownloadError: the body is over the size cap, or in an unsupported encoding.
        """
        headers = response.headers
        cap = self.max_download_bytes
        declared = (headers.get("Content-Length") or "").strip()
        expected = int(declared) if declared.isascii() and declared.isdigit() else None
        if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
            expected = None  # the chunk framing delimits the body, not Content-Length (RFC 9112, 6.3)
        decoder = _Decoder.for_encoding(headers.get("Content-Encoding") or "", url)
        if expected is not None and decoder is None and expected > cap:
            raise DownloadError(f"file is {expected} bytes, over the {cap}-byte cap", url=url)
        started = time.monotonic()
        parts: list[bytes] = []
        whole = bytearray(expected) if in_place and decoder is None and expected is not None else None
        received = size = 0
        if whole is not None:
            direct = getattr(response.raw, "_fp", None)
            if isinstance(direct, http.client.HTTPResponse):
                # A bytearray where bytes are promised (see the return below).
                return self._read_into(direct, whole, url, started, from_api=from_api)  # type: ignore[return-value]
        try:
            while True:
                chunk = response.raw.read1(_READ_CHUNK, decode_content=False)
                if not chunk:
                    break
                received += len(chunk)
                if decoder is not None:
                    chunk = decoder.feed(chunk, cap - size)
                if whole is not None:
                    if size + len(chunk) > len(whole):
                        raise _Transient(f"body longer than its Content-Length of {expected} bytes")
                    whole[size : size + len(chunk)] = chunk
                else:
                    parts.append(chunk)
                size += len(chunk)
                if size > cap:
                    raise DownloadError(f"file exceeds the {cap}-byte cap", url=url)
                self._check_deadline(started, max(received, expected or 0), received)
            if decoder is not None and received:
                # (An empty body with a Content-Encoding, as S3 serves an empty object stored with one, is empty.)
                decoder.finish()
        except _Transient as failure:
            failure.from_api = from_api
            raise
        except _READ_ERRORS as exc:
            _redact_exception(exc)
            raise _Transient(
                f"body interrupted after {received} bytes ({type(exc).__name__})", cause=exc, from_api=from_api
            ) from None
        if expected is not None and received != expected:
            raise _Transient(f"truncated body: {received} of {expected} bytes", from_api=from_api)
        # (A bytearray where bytes are promised: it is bytes-like for every reader, and copying it would undo the
        # point of filling it in place.)
        return whole if whole is not None else b"".join(parts)  # type: ignore[return-value]

    def _read_into(
        self, source: http.client.HTTPResponse, whole: bytearray, url: str, started: float, *, from_api: bool
    ) -> bytearray:
        """Read a plain body of known length straight from the socket into ``whole``.

        Below urllib3, through the standard library's response it wraps: each read lands in place, where
        urllib3's own reads return a new ``bytes`` per chunk to copy again (~40% of the CPU of a 2 MB body
        here). Only for bodies without content coding or chunking, whose length :meth:`_read_body` checked.
        """
        view = memoryview(whole)
        expected, received = len(whole), 0
        try:
            while received < expected:
                count = source.readinto(view[received : received + _READ_CHUNK])
                if not count:
                    break
                received += count
                self._check_deadline(started, expected, received)
        except _Transient as failure:
            failure.from_api = from_api
            raise
        except http.client.IncompleteRead as exc:
            received += len(exc.partial)
            raise _Transient(f"truncated body: {received} of {expected} bytes", from_api=from_api) from None
        except _READ_ERRORS as exc:
            _redact_exception(exc)
            raise _Transient(
                f"body interrupted after {received} bytes ({type(exc).__name__})", cause=exc, from_api=from_api
            ) from None
        finally:
            view.release()
        if received != expected:
            raise _Transient(f"truncated body: {received} of {expected} bytes", from_api=from_api)
        return whole

    def _check_deadline(self, started: float, volume: int, received: int) -> None:
        if self.download_deadline is None:
            return
        elapsed = time.monotonic() - started
        limit = max(self.download_deadline, volume / self.min_download_rate)
        if elapsed > limit:
            raise _Transient(
                f"body too slow: {received} bytes in {elapsed:.1f} s, over the {limit:.1f} s deadline "
                f"(download_deadline={self.download_deadline:g} s, min_download_rate={self.min_download_rate:g} B/s)"
            )

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
            response = self._send(url, params=params, api=True)
            with response:
                body = self._read_body(response, url, from_api=True)
                payload = _json_or_none(body, what, url)
                code, message = self._error_fields(payload)
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
                raise _api_error(what, url, status, code, message or self._scrub(response.reason or "request failed"))

        return self._with_retries(what, url, attempt)

    def _error_fields(self, payload: Any) -> tuple[str | None, str | None]:
        """Playment's ``{"error": {"code", "message"}}``, scrubbed of the key: they enter exceptions and logs."""
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            return None, None
        code, message = error.get("code"), error.get("message")
        return (
            self._scrub(code, 64) if code is not None else None,
            self._scrub(message) if message is not None else None,
        )

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
        except RecursionError:
            # Raised from deep inside the decoder; chaining it would keep a traceback thousands of frames long.
            raise PlaymentFormatError(
                f"job {job.job_id}: the result at {redact_url(job.result_url)} is JSON nested too deeply to decode"
            ) from None

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
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError:  # malformed: the attachments endpoint decides, and the key stays on the API host
            return True
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

    def download(self, url: str, *, private: bool = False, in_place: bool = False) -> bytes:
        """Fetch a file's bytes: attachments-aware, retried, verified against Content-Length, size-capped.

        Playment-hosted URLs (and ``s3://``/``gs://`` ones) are exchanged for a signed URL at
        ``/v1/attachments``; the signed URL is fetched without the API key, and asked for again when it has
        expired (403). A user's own http(s) URLs are fetched directly. URLs under a ``local_roots`` prefix are
        read from disk.

        Args:
            url: The file's URL.
            private: The URL names a file Playment keeps private (a job's result, a mask): always go through
                ``/v1/attachments``, whatever its host.
            in_place: The result may be a ``bytearray`` filled as the body arrives: peak memory about the
                file's size instead of twice it (``bytes`` are built by joining the received chunks).

        Raises:
            DownloadError: the file could not be fetched intact after the retries, is larger than the cap, or
                its URL is refused (``file://`` without a mapping, an unknown scheme).
            APIError: the attachments endpoint refused the URL (unknown, unauthorised).
        """
        if not isinstance(url, str) or not url.strip():
            raise DownloadError("empty URL")
        url = url.strip()
        local = self._local_path(url)
        _check_url_text(url)
        if local is not None:
            return self._read_local(url, local)
        scheme = _split(url, DownloadError("malformed URL", url=url)).scheme.lower()
        if scheme == "file" or not scheme:
            raise DownloadError(
                "refusing to read a local file named by a result; map its prefix with local_roots= if it is yours",
                url=url,
            )
        if scheme in ("http", "https") and not private and not self.is_playment_hosted(url):
            return self._with_retries(f"download {redact_url(url)}", url, lambda: self._fetch(url, in_place=in_place))
        return self._download_attachment(url, in_place=in_place)

    def _download_attachment(self, url: str, *, in_place: bool = False) -> bytes:
        what = f"attachment {redact_url(url)}"

        def attempt() -> bytes:
            # Every attempt asks for a fresh signature, so an expired one costs one round trip, not a backoff.
            try:
                return self._fetch(self._sign(url), signed=True, in_place=in_place)
            except _Transient as failure:
                if failure.status != 403:
                    raise
                logger.info("%s: signed URL refused (HTTP 403), asking for a new one", what)
                return self._fetch(self._sign(url), signed=True, in_place=in_place)

        return self._with_retries(what, url, attempt)

    def _sign(self, url: str) -> str:
        """Exchange a Playment-hosted URL for a signed one via ``/v1/attachments`` (one attempt)."""
        endpoint = self.base_url + "/v1/attachments"
        response = self._send(endpoint, params={"url": url}, api=True)
        with response:
            status = response.status_code
            location = response.headers.get("Location")
            if 300 <= status < 400 and location:
                # Resolved against the endpoint, so a relative Location stays on the API host.
                try:
                    redirected = urllib.parse.urljoin(endpoint, location)
                except ValueError:
                    raise DownloadError("the attachments endpoint redirected to a malformed URL", url=url) from None
                declared = (response.headers.get("Content-Length") or "").strip()
                if declared.isascii() and declared.isdigit() and int(declared) <= _SHORT_BODY:
                    # Read the short page out, so this connection serves the next request (one per file).
                    with contextlib.suppress(_Transient, DownloadError):
                        self._read_body(response, endpoint, from_api=True)
                return redirected
            payload = _json_or_none(self._read_body(response, endpoint, from_api=True), "attachments", endpoint)
            code, message = self._error_fields(payload)
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

    def _fetch(self, url: str, *, signed: bool = False, in_place: bool = False) -> bytes:
        """GET one file (one attempt): stream it under the size cap and check it arrived whole.

        Args:
            url: The file's URL.
            signed: Whether it is a signed URL, where a 403 means "expired, ask again" rather than
                "forbidden".
            in_place: See :meth:`download`.
        """
        scheme = _split(url, DownloadError("malformed URL", url=url)).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadError(f"refusing to fetch a {scheme or 'scheme-less'} URL", url=url)
        response = self._send(url)
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
            return self._read_body(response, url, in_place=in_place)

    def _local_path(self, url: str) -> Path | None:
        for prefix, root in sorted(self.local_roots.items(), key=lambda kv: -len(kv[0])):
            if url.startswith(prefix):
                rest = urllib.parse.unquote(url[len(prefix) :].split("?", 1)[0])
                if "\x00" in rest:
                    # The OS cannot name such a file; pathlib would raise a bare ValueError.
                    raise DownloadError("mapped URL names a path with a NUL byte", url=url)
                try:
                    base = Path(root).resolve()
                    path = (base / rest.lstrip("/")).resolve()
                except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: a symlink loop
                    raise DownloadError(f"cannot resolve the mapped path ({type(exc).__name__})", url=url) from None
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
        except ValueError as exc:
            raise DownloadError(f"cannot read local file ({exc})", url=url) from None

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
        _check_url_text(url)
        data = json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        is_api = self._is_api(url)
        if is_api:
            headers["x-api-key"] = self._key()
        attempts = 0
        while True:
            attempts += 1
            retry_after: str | None = None
            status: int | None = None
            code: str | None = None
            message: str | None = None
            if is_api and self._bucket is not None:
                self._bucket.acquire()  # POSTs count against Playment's rate like every other API request
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
                    payload = _json_or_none(response.content, what, url)
                    error = payload.get("error") if isinstance(payload, dict) else None
                    raw_code = error.get("code") if isinstance(error, dict) else None
                    raw_message = error.get("message") if isinstance(error, dict) else None
                    # The server's words enter our errors and logs only scrubbed of the key.
                    code = self._scrub(raw_code, 64) if raw_code is not None else None
                    message = self._scrub(raw_message) if raw_message is not None else None
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
                        reason = message or self._scrub(response.reason or "failed")
                        raise _api_error(what, url, status, code, reason, attempts)
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
    """``(scheme, host, port)`` as ``urllib.parse`` reads them; a malformed URL has no origin."""
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return "", "", None
    return scheme, (parts.hostname or "").lower(), port


def _stack_origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` as urllib3 reads them, which is where requests connects; ``("", "", None)`` if
    it cannot parse the URL."""
    # Only "scheme://authority" is parsed: urllib3 ends the authority where this pattern does (its own URI
    # pattern), and parsing the rest (percent-encoding a long signed query) costs ~100 us per request.
    head = _URI_HEAD.match(url)
    try:
        parts = urllib3.util.parse_url(head.group(0) if head else url)
    except (urllib3.exceptions.HTTPError, ValueError):
        return "", "", None
    scheme = (parts.scheme or "").lower()
    host = (parts.host or "").lower().strip("[]")
    return scheme, host, parts.port or {"http": 80, "https": 443}.get(scheme)


def _host_label(stack: tuple[str, str, int | None]) -> tuple[str, str]:
    """``("host:port", "scheme://host:port")`` of a :func:`_stack_origin` (the breaker's key and message)."""
    scheme, host, port = stack
    label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return label, f"{scheme}://{label}"


def _authority(url: str) -> str:
    """The text between ``//`` and the first ``/``, ``?`` or ``#`` (``urllib.parse``'s netloc), unparsed."""
    _, sep, rest = url.partition("//")
    if not sep:
        return ""
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


def _check_url_text(url: str) -> None:
    """Refuse a URL whose host two parsers could read differently, or that no valid URL looks like.

    A backslash or whitespace in the authority (``http://a:1\\@api/``) ends the host for urllib3 but not for
    ``urllib.parse``; control characters (a NUL, CR/LF) have no place anywhere in a URL.

    Raises:
        DownloadError: such a URL (named without its query).
    """
    if _CONTROL.search(url):
        raise DownloadError("refusing a URL with a control character", url=_CONTROL.sub("?", url))
    if _AUTHORITY_BAD.search(_authority(url)):
        raise DownloadError("refusing a URL with a backslash or whitespace in its host part", url=url)


def _clean_key(key: str | None) -> str:
    """Validate an API key.

    Raises:
        ConfigError: none, or characters an HTTP header cannot carry (the message never quotes the key).
    """
    if not key or not key.strip():
        raise ConfigError(f"no Playment API key: pass api_key= or set {API_KEY_ENV}")
    key = key.strip()
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        # An HTTP header cannot carry it, and the error requests would raise quotes the header value.
        raise ConfigError("the Playment API key has characters an API key cannot have (whitespace, non-ASCII)")
    return key


def _redact_text(text: str) -> str:
    """``text`` with every ``?query`` and ``x-api-key: value`` replaced by ``<redacted>``."""
    text = _QUERY.sub("?<redacted>", text)
    return _KEYISH.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)


class _Response:
    """A streamed GET's response as the callers read it: status, headers, reason and the raw urllib3 stream.

    Closing it returns the connection to the pool when its body was read to the end (``_read_into`` reads
    below urllib3, which then does not see the end itself); a body left unread closes it, so no unread bytes
    are ever taken for the next response. (Closing a streamed ``requests.Response`` closed every connection
    whose body was read that way.)
    """

    __slots__ = ("raw",)

    def __init__(self, raw: urllib3.BaseHTTPResponse) -> None:
        self.raw = raw

    @property
    def status_code(self) -> int:
        return self.raw.status

    @property
    def headers(self) -> urllib3.HTTPHeaderDict:
        return self.raw.headers

    @property
    def reason(self) -> str | None:
        return self.raw.reason

    def close(self) -> None:
        raw = self.raw
        original = getattr(raw, "_original_response", None)
        if original is None or not original.isclosed():
            raw.close()  # unread bytes would be taken for the next response: this connection is done
        raw.release_conn()

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _failure_name(exc: BaseException) -> str:
    """What a failed request is called in messages and the breaker: the names requests gives them."""
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "ReadTimeout"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError) and not isinstance(
        exc, urllib3.exceptions.NewConnectionError
    ):
        return "ConnectTimeout"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return "SSLError"
    return "ConnectionError"


def _redact_exception(exc: BaseException) -> None:
    """Strip query strings from the texts of a requests/urllib3 exception and its chain, in place.

    They quote the request URL (``Max retries exceeded with url: /signed/x?signature=...``), and they end up
    chained under our errors.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        with contextlib.suppress(Exception):  # an exception type with read-only args: leave it
            current.args = tuple(_redact_text(str(a)) if not isinstance(a, (int, float)) else a for a in current.args)
        url = getattr(current, "url", None)  # urllib3's request errors keep the path and query they were sent
        if isinstance(url, str):
            with contextlib.suppress(Exception):
                current.url = _redact_text(url)  # type: ignore[attr-defined]
        current = current.__cause__ or current.__context__


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")


def _json_or_none(body: bytes, what: str, url: str) -> Any:
    """Decoded JSON, or ``None`` when ``body`` is empty or not JSON.

    Raises:
        PlaymentFormatError: JSON nested too deeply for Python's decoder (a ``RecursionError`` otherwise).
    """
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None
    except RecursionError:
        raise PlaymentFormatError(
            f"{what}: the API answered with JSON nested too deeply to decode (url {redact_url(url)})"
        ) from None


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
