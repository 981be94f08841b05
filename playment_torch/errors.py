"""Every failure ``playment_torch`` raises.

The hierarchy::

    PlaymentError                      root: catch this to catch everything the library raises
    ├── ConfigError                    missing API key, bad base URL, bad option value
    ├── APIError                       an HTTP or Playment-level failure (.status_code, .code, .url, .attempts)
    │   ├── AuthenticationError        401/403 from the API, or Playment's auth-failure / unauthorized codes
    │   ├── NotFoundError              404, or Playment's FS_0006
    │   ├── RateLimitError             429 after the last retry
    │   ├── ServerError                5xx, or Playment's "try later" codes, after the last retry
    │   └── HostUnreachableError       a host keeps refusing connections: failing fast for a while (.host)
    ├── JobNotCompletedError           a job has no result yet (.job_id, .status)
    ├── DownloadError                  a file could not be fetched intact (.url, .attempts)
    ├── CacheError                     the disk cache is unusable, or ``refresh="never"`` lacks entries
    ├── FrameError                     a frame could not be loaded (.job_id, .frame_id; the cause is chained)
    └── PlaymentFormatError            bytes or JSON that do not decode (also a ``ValueError``)

Every message names what it concerns (job, frame, URL without its query string, byte offset) and never the
API key. URLs are stripped of their query strings by :func:`redact_url` before they enter an exception;
:func:`url_identity` is the other view of a URL, for cache keys: it keeps the query parameters that name content
(``versionId``) and drops only those that sign the request.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

__all__ = [
    "APIError",
    "AuthenticationError",
    "CacheError",
    "ConfigError",
    "DownloadError",
    "FrameError",
    "HostUnreachableError",
    "JobNotCompletedError",
    "NotFoundError",
    "PlaymentError",
    "PlaymentFormatError",
    "RateLimitError",
    "ServerError",
    "redact_url",
    "url_identity",
]

# Query parameters that sign or authorise a URL rather than name its content, lower-cased. They change on every
# signing, so a cache key that kept them would never match twice.
_SIGNATURE_PARAMS = frozenset(
    {
        # S3 query-string auth, SigV2 (SigV4's are the X-Amz-* prefix below)
        "awsaccesskeyid",
        "signature",
        "expires",
        # Google Cloud Storage V2 (V4's are the X-Goog-* prefix below)
        "googleaccessid",
        # CloudFront signed URLs
        "policy",
        "key-pair-id",
        # Playment's signed URLs and FakePlaymentServer's: expires + signature, covered above
    }
)
_SIGNATURE_PREFIXES = ("x-amz-", "x-goog-")
# Azure SAS parameters. Their names are short and common words (``sp``, ``st``, ``se``), so they are dropped only
# from URLs that carry a SAS signature (``sig``), never from a user's own URL that happens to use ``st=``.
_AZURE_SAS_PARAMS = frozenset(
    {
        "sv", "ss", "srt", "sp", "se", "st", "spr", "sig", "si", "sr", "sip", "sdd", "ses",
        "skoid", "sktid", "skt", "ske", "sks", "skv", "skdutid", "saoid", "suoid", "scid", "sduoid",
        "rscc", "rscd", "rsce", "rscl", "rsct",
    }
)  # fmt: skip


def redact_url(url: str) -> str:
    """Return ``url`` without its query string, fragment and user info.

    Signed URLs carry their signature (and sometimes a key) in the query string; nothing of it may reach an
    error message, a log line or a cache key.

    Args:
        url: Any URL or plain string.

    Returns:
        ``scheme://host[:port]/path`` for URLs; the input up to the first ``?`` otherwise.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]
    netloc = parts.hostname or ""
    if port is not None:
        netloc = f"{netloc}:{port}"
    if not parts.scheme:
        return url.split("?", 1)[0].split("#", 1)[0]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# scheme://host[:port][/path] with nothing url_identity would change beyond lower-casing scheme and host.
_SIMPLE_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>[A-Za-z0-9._-]+)(?::(?P<port>[1-9][0-9]{0,4}))?"
    r"(?P<path>/[A-Za-z0-9._~!$&'()*+,;=:/-]*)?"
)


def url_identity(url: str) -> str:
    """Return the identity of the content ``url`` names: the URL without its *signature* parameters.

    A signed URL changes on every request while its content does not, and a user's own
    ``scan.pcd?versionId=2`` names different content than ``?versionId=1``: so only the parameters of known
    signing schemes are dropped, compared case-insensitively, and every other parameter is kept, sorted into a
    canonical order. Dropped: S3 presigning (SigV4 ``X-Amz-*`` including ``X-Amz-Security-Token``; SigV2
    ``AWSAccessKeyId``, ``Signature``, ``Expires``), Google Cloud Storage (``X-Goog-*``, ``GoogleAccessId``,
    ``Signature``, ``Expires``), CloudFront (``Policy``, ``Signature``, ``Key-Pair-Id``), Playment's own
    (``expires``, ``signature``) and, in URLs that carry a SAS signature ``sig``, Azure's SAS parameters
    (``sv``, ``se``, ``sp``, ``sig``, ...). User info (credentials) and the fragment are dropped too; scheme
    and host are lower-cased.

    Args:
        url: Any URL or plain string.

    Returns:
        ``scheme://host[:port]/path[?kept=params]``; a string that does not parse as a URL is returned as
        :func:`redact_url` returns it.
    """
    simple = _SIMPLE_URL.fullmatch(url)
    if simple is not None and (not simple["port"] or int(simple["port"]) <= 65535):
        # Most URLs in results: no query, user info, fragment, odd characters or IPv6 host. Their identity is
        # the URL with scheme and host lower-cased, as below, without parsing (~20 us a URL: a 100k-frame
        # offline check builds 200k keys). A test holds both paths to the same answers.
        suffix = f":{simple['port']}" if simple["port"] else ""
        return f"{simple['scheme'].lower()}://{simple['host'].lower()}{suffix}{simple['path'] or ''}"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return redact_url(url)
    if not parts.scheme:
        return redact_url(url)
    netloc = (parts.hostname or "").lower()
    if ":" in netloc:  # an IPv6 literal keeps its brackets
        netloc = f"[{netloc}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    azure = any(name.lower() == "sig" for name, _ in pairs)
    kept = sorted(
        (name, value)
        for name, value in pairs
        if not (
            name.lower() in _SIGNATURE_PARAMS
            or name.lower().startswith(_SIGNATURE_PREFIXES)
            or (azure and name.lower() in _AZURE_SAS_PARAMS)
        )
    )
    query = urllib.parse.urlencode(kept, quote_via=urllib.parse.quote)
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, parts.path, query, ""))


class PlaymentError(Exception):
    """Root of every exception raised by ``playment_torch``."""


class ConfigError(PlaymentError):
    """The library was configured wrongly: no API key, an unsafe base URL, an unknown option value."""


class APIError(PlaymentError):
    """A request to the Playment API (or a signed URL) failed.

    Attributes:
        status_code: The HTTP status, or ``None`` when no response arrived (connection error, timeout).
        code: Playment's error code from ``{"error": {"code": ...}}``, if any.
        url: The request URL without its query string.
        attempts: How many attempts were made before giving up.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        url: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.url = redact_url(url) if url else None
        self.attempts = attempts
        details = []
        if status_code is not None:
            details.append(f"HTTP {status_code}")
        if code:
            details.append(f"code {code}")
        if self.url:
            details.append(f"url {self.url}")
        if attempts > 1:
            details.append(f"after {attempts} attempts")
        super().__init__(f"{message} ({', '.join(details)})" if details else message)


class AuthenticationError(APIError):
    """The API key was missing, wrong or not allowed to see the resource."""


class NotFoundError(APIError):
    """The project, batch, job or attachment does not exist."""


class RateLimitError(APIError):
    """The API kept answering 429 (too many requests) through every retry."""


class ServerError(APIError):
    """The API kept failing on its side (5xx or a "try later" code) through every retry."""


class HostUnreachableError(APIError):
    """A host kept failing without answering (connections refused, reset or timing out), so the client stops
    sending it requests for a cool-down and fails them at once with this error.

    It is raised for the host that failed: for a Playment-hosted file that is the API host (its attachments
    endpoint), not the storage URL behind it. ``status_code`` is ``None`` (no response arrived).

    Attributes:
        host: ``host:port`` of the unreachable host.
    """

    def __init__(self, message: str, *, host: str = "", url: str | None = None, attempts: int = 1) -> None:
        # Constructible from a message alone, so pickling and DataLoader's re-raise keep the type.
        self.host = host
        super().__init__(message, url=url, attempts=attempts)


class JobNotCompletedError(PlaymentError):
    """A job's result was asked for while the job is not ``completed``.

    Attributes:
        job_id: The job.
        status: Its current status.
    """

    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id} is {status!r}, not 'completed': it has no result yet")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.job_id, self.status)


class DownloadError(PlaymentError):
    """A file could not be downloaded intact (truncated, too large, refused scheme, repeated failures).

    Attributes:
        url: The URL without its query string.
        attempts: How many attempts were made.
    """

    def __init__(self, message: str, *, url: str | None = None, attempts: int = 1) -> None:
        self.url = redact_url(url) if url else None
        self.attempts = attempts
        details = []
        if self.url:
            details.append(f"url {self.url}")
        if attempts > 1:
            details.append(f"after {attempts} attempts")
        super().__init__(f"{message} ({', '.join(details)})" if details else message)


class CacheError(PlaymentError):
    """The disk cache cannot serve a request (for instance ``refresh="never"`` and entries are missing)."""


class FrameError(PlaymentError):
    """A dataset item could not be loaded: its download or its cache failed.

    The underlying :class:`PlaymentError` is chained as ``__cause__``; the message repeats it after the job and
    frame it concerns.

    Attributes:
        job_id: The job.
        frame_id: The frame.
    """

    def __init__(self, message: str, *, job_id: str = "", frame_id: str = "") -> None:
        # Constructible from a message alone: DataLoader re-raises a worker's exception as ``type(exc)(text)``.
        self.job_id = job_id
        self.frame_id = frame_id
        self.reason = message
        super().__init__(f"job {job_id}, frame {frame_id}: {message}" if job_id else message)

    def __reduce__(self) -> tuple[type, tuple[str], dict[str, str]]:
        return type(self), (self.reason,), {"job_id": self.job_id, "frame_id": self.frame_id}

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        self.__dict__.update(state or {})
        text = f"job {self.job_id}, frame {self.frame_id}: {self.reason}" if self.job_id else self.reason
        Exception.__init__(self, text)


class PlaymentFormatError(PlaymentError, ValueError):
    """Bytes or JSON that do not decode: a malformed result, PCD file or mask.

    The message says what is wrong and where: job, frame and JSON path for results; byte offset or line for
    files.
    """
