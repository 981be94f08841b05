"""Shared fixtures: a fake Playment server with a small synthetic project, and fast clients for it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Every cache reserves its file table on disk up front (32 MiB by default): the suite's few hundred caches would
# take ~9 GB of the temporary folder per run. 64 KiB (2,048 slots) is plenty for a test's frames; subprocesses
# inherit it. Tests of the table itself give their sizes explicitly.
os.environ.setdefault("PLAYMENT_TORCH_FILE_TABLE_BYTES", str(64 << 10))

from playment_torch.client import PlaymentClient, RetryPolicy
from playment_torch.testing.server import FakePlaymentServer

#: Retries that keep fault tests fast.
FAST_RETRY = RetryPolicy(max_retries=3, backoff=0.01, backoff_max=0.05, retry_after_max=2.0)


def fast_client(server: FakePlaymentServer, **options: object) -> PlaymentClient:
    """A client of ``server`` with short backoffs."""
    return PlaymentClient(server.api_key, base_url=server.url, retry=FAST_RETRY, **options)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[FakePlaymentServer]:
    with FakePlaymentServer() as fake:
        yield fake


def pytest_sessionstart(session: pytest.Session) -> None:
    """CI promises to run the tests on real files: a missing ``../shared/data`` fails there instead of skipping."""
    from shared_data import HAVE_SHARED_DATA, PCD_FILES, REQUIRED

    if REQUIRED and not HAVE_SHARED_DATA:
        raise pytest.UsageError(f"PLAYMENT_TORCH_REQUIRE_SHARED_DATA is set but {PCD_FILES} does not exist")
