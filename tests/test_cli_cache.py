"""``playment-torch verify`` on a damaged database, and ``cache info`` / ``cache clear`` per project.

Driven through ``main([...])`` and as a subprocess, the way a user runs them; each checks the exit code, the
exact summary line and what is on disk afterwards.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import playment_torch.cache as cache_module
from playment_torch.cache import ArrayCache, cache_key
from playment_torch.cli import main

WORKTREE = Path(cache_module.__file__).resolve().parents[1]


def run_cli(*argv: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "playment_torch.cli", *argv],
        capture_output=True,
        text=True,
        stdin=stdin,
        env={**os.environ, "PYTHONPATH": str(WORKTREE)},
        timeout=120,
    )


def filled_cache(directory: Path) -> ArrayCache:
    cache = ArrayCache(directory)
    for i in range(40):
        cache.put_array(f"small{i}", np.arange(100 + i))
    cache.put_array("big", np.arange(20_000, dtype=np.float64))
    cache.close()
    return cache


def damage_database(directory: Path) -> None:
    db = directory / "cache.db"
    db.write_bytes(np.random.default_rng(5).bytes(db.stat().st_size))


# --- verify on a damaged database ----------------------------------------------------------------------------


def test_verify_reports_a_damaged_database_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "cache"
    filled_cache(directory)
    damage_database(directory)

    assert main(["verify", "--cache-dir", str(directory)]) == 1
    captured = capsys.readouterr()
    (aside,) = tmp_path.glob("cache.corrupt-*")
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"cache {directory}: damaged database {directory / 'cache.db'} (")
    assert lines[0].endswith(f") moved to {aside}")
    assert lines[-1] == f"cache {directory}: 1 damaged database replaced by an empty one, 0 remaining entries checked"
    assert " 0 bad" not in captured.out
    assert captured.err.strip() == (
        "playment-torch: error: the cache database was damaged: its entries will be fetched again when needed; "
        f"the old contents are in {aside} (delete with: rm -r {aside})"
    )
    assert "Warning" not in captured.err and "warn(" not in captured.err
    # On disk: the old contents kept aside for a post-mortem, a fresh empty cache in place.
    assert (aside / "cache.db").is_file() and len(list(aside.rglob("*.val"))) == 1
    assert (directory / "cache.db").is_file() and list(directory.rglob("*.val")) == []
    # Verifying again finds a healthy, empty cache.
    assert main(["verify", "--cache-dir", str(directory)]) == 0
    assert capsys.readouterr().out.strip() == f"cache {directory}: 0 entries checked, 0 bad"


def test_verify_reports_a_damaged_database_as_a_command(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    filled_cache(directory)
    damage_database(directory)

    completed = run_cli("verify", "--cache-dir", str(directory), "--repair")
    assert completed.returncode == 1, "a damaged database is a failure, --repair or not: its entries are gone"
    (aside,) = tmp_path.glob("cache.corrupt-*")
    summary = completed.stdout.splitlines()[-1]
    assert summary == f"cache {directory}: 1 damaged database replaced by an empty one, 0 remaining entries checked"
    assert str(aside) in completed.stdout and f"rm -r {aside}" in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr  # no warnings machinery
    assert (aside / "cache.db").is_file() and list(directory.rglob("*.val")) == []


def test_verify_counts_entries_of_an_older_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "cache"
    cache = filled_cache(directory)
    (path,) = directory.rglob("*.val")
    data = bytearray(path.read_bytes())
    data[4] = 1  # a 0.1 entry
    path.write_bytes(bytes(data))
    assert main(["verify", "--cache-dir", str(directory)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"cache {directory}: 41 entries checked, 0 bad, 1 outdated (written by an older version; fetched again "
        "when needed)"
    )
    assert len(cache) == 41


# --- cache info / clear per project ----------------------------------------------------------------------------


def project_cache(directory: Path) -> ArrayCache:
    """Two projects: "alpha" (2 jobs x 3 frames, points and masks) and "beta" (1 frame), plus metadata."""
    cache = ArrayCache(directory)
    for job in ("j1", "j2"):
        cache.put_json(cache_key("job", project_id="alpha", job_id=job), {"job": job})
        for frame in ("f0", "f1", "f2"):
            for kind in ("points", "mask"):
                key = cache_key(kind, project_id="alpha", job_id=job, frame_id=frame, url=f"https://s/{job}/{frame}")
                cache.put_array(key, np.zeros(10_000, dtype=np.float32))
    cache.put_array(cache_key("points", project_id="beta", job_id="j9", frame_id="f0"), np.zeros(10, np.int64))
    cache.put_json(cache_key("project", project_id="beta"), {"name": "beta"})
    return cache


def test_cache_info_lists_projects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = project_cache(tmp_path / "c")
    assert cache.touch_project("beta")  # beta opened by a dataset just now: it is the most recently used
    cache.close()
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "c")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"cache {tmp_path / 'c'}: 17 entries, ")
    assert lines[1].split() == ["project", "frames", "entries", "MiB", "last", "used", "(UTC)"]
    beta, alpha = lines[2].split(), lines[3].split()
    assert beta[:4] == ["beta", "1", "3", "0.0"]
    assert alpha[:4] == ["alpha", "6", "14", "0.5"]  # 12 arrays of 40,064 bytes and 2 jobs
    usage = {item.project_id: item for item in ArrayCache(tmp_path / "c").projects()}
    assert usage["alpha"].bytes > 12 * 40_000 and usage["beta"].last_used >= usage["alpha"].last_used
    assert abs(usage["beta"].last_used - time.time()) < 60
    assert " ".join(beta[4:6]) == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(usage["beta"].last_used))


def test_cache_clear_one_project(tmp_path: Path) -> None:
    project_cache(tmp_path / "c").close()
    completed = run_cli("cache", "clear", "--project", "alpha", "--cache-dir", str(tmp_path / "c"))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"cache {tmp_path / 'c'}: removed 14 entries"
    left = ArrayCache(tmp_path / "c")
    assert sorted(left.keys()) == ["points|beta|j9|f0||", "project|beta||||"]
    assert len(list((tmp_path / "c").rglob("*.val"))) == 0  # alpha's value files are gone from the disk
    completed = run_cli("cache", "clear", "--project", "alpha", "--cache-dir", str(tmp_path / "c"))
    assert completed.returncode == 0
    assert completed.stdout.strip() == f"cache {tmp_path / 'c'}: nothing to remove (0 entries of project alpha)"


def test_cache_clear_older_than(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = project_cache(tmp_path / "c")
    cache.close()
    # Make alpha look unused for 10 days: rewrite its store times in diskcache's table.
    import sqlite3

    ten_days_ago = time.time() - 10 * 86400
    for db in (tmp_path / "c" / "cache.db", tmp_path / "c" / "meta" / "cache.db"):
        with sqlite3.connect(db) as connection:
            connection.execute("UPDATE Cache SET store_time = ? WHERE key LIKE '%|alpha|%'", (ten_days_ago,))
        connection.close()
    assert main(["cache", "clear", "--older-than", "7d", "--cache-dir", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.strip() == f"cache {tmp_path / 'c'}: removed 14 entries"
    assert all("|alpha|" not in key for key in list(ArrayCache(tmp_path / "c").keys()))
    assert main(["cache", "clear", "--older-than", "12h", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "nothing to remove (0 entries of projects unused for 0.5 days)" in capsys.readouterr().out
    assert len(ArrayCache(tmp_path / "c")) == 2
    assert main(["cache", "clear", "--older-than", "soon", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "not a duration" in capsys.readouterr().err


def _clear_at_a_terminal(directory: Path, *extra: str, answer: bytes) -> tuple[int, str]:
    """Run ``cache clear`` with stdin, stdout and stderr on a pseudo-terminal, typing ``answer``."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "playment_torch.cli", "cache", "clear", "--cache-dir", str(directory), *extra],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "PYTHONPATH": str(WORKTREE)},
    )
    os.close(follower)
    output = b""
    typed = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if not typed and b"[y/N]" in output:
            os.write(leader, answer)
            typed = True
    os.close(leader)
    return process.wait(timeout=60), output.decode().replace("\r\n", "\n")


def test_clear_asks_at_a_terminal(tmp_path: Path) -> None:
    project_cache(tmp_path / "c").close()
    code, output = _clear_at_a_terminal(tmp_path / "c", "--project", "beta", answer=b"n\n")
    assert code == 1
    assert f"remove 2 entries of project beta from {tmp_path / 'c'}? [y/N]" in output
    assert "cancelled; nothing removed" in output
    assert len(ArrayCache(tmp_path / "c")) == 16

    code, output = _clear_at_a_terminal(tmp_path / "c", "--project", "beta", answer=b"y\n")
    assert code == 0 and output.strip().endswith(f"cache {tmp_path / 'c'}: removed 2 entries")
    assert len(ArrayCache(tmp_path / "c")) == 14

    code, output = _clear_at_a_terminal(tmp_path / "c", "--yes", answer=b"n\n")
    assert code == 0 and "[y/N]" not in output
    assert output.strip() == f"cache {tmp_path / 'c'}: removed 14 entries"
    assert len(ArrayCache(tmp_path / "c")) == 0


def test_clear_does_not_ask_without_a_terminal(tmp_path: Path) -> None:
    project_cache(tmp_path / "c").close()
    completed = run_cli("cache", "clear", "--cache-dir", str(tmp_path / "c"))  # stdin: /dev/null, as in CI
    assert completed.returncode == 0 and "[y/N]" not in completed.stdout
    assert completed.stdout.strip() == f"cache {tmp_path / 'c'}: removed 16 entries"
    assert list((tmp_path / "c").rglob("*.val")) == []


def test_cache_info_on_a_damaged_database_says_so_in_one_line(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    filled_cache(directory)
    damage_database(directory)
    completed = run_cli("cache", "info", "--cache-dir", str(directory))
    assert completed.returncode == 0, completed.stderr
    (aside,) = tmp_path.glob("cache.corrupt-*")
    assert completed.stdout.splitlines()[0].startswith(f"cache {directory}: 0 entries, ")
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith(f"playment-torch: warning: damaged cache database {directory / 'cache.db'} (")
    assert line.endswith(f") moved to {aside}")
