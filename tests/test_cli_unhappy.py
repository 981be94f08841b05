"""The command line on a user's bad day, driven as a user drives it: exit codes, summary lines, what is on disk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from playment_torch.cli import main
from playment_torch.testing.synthetic import add_synthetic_project

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``playment-torch ARGV`` in a child process, importing this checkout."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "playment_torch.cli", *argv], capture_output=True, text=True, timeout=timeout, env=full
    )


@pytest.fixture
def project(server, monkeypatch):
    jobs = add_synthetic_project(server, n_jobs=2, frames_per_job=2, points_per_frame=10_000, pending_jobs=1, seed=71)
    monkeypatch.setenv("PLAYMENT_API_KEY", server.api_key)
    return jobs


def selection(server, tmp_path, *extra: str) -> list[str]:
    return ["--project", server.project_id, "--base-url", server.url, "--cache-dir", str(tmp_path), *extra]


def test_prefetch_of_a_job_that_does_not_exist_exits_1_naming_it_once(server, project, tmp_path):
    good = project[0].job_id
    completed = run("prefetch", *selection(server, tmp_path, "--job", good, "--job", "no-such-job", "--quiet"))
    assert completed.returncode == 1, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith(f"project {server.project_id}: 1 jobs, 2 frames (2 downloaded")
    (failed,) = [line for line in lines if "failed:" in line]
    assert failed.startswith("  failed: job no-such-job: ") and "not found" in failed
    # Our prefix names the job once (the server's own message may name it again, in its words).
    assert "job no-such-job: job no-such-job:" not in completed.stdout
    assert "Warning" not in completed.stderr and ".py:" not in completed.stderr, "no Python warning lines"
    assert completed.stderr.strip() == (
        "playment-torch: error: 1 of the jobs asked for could not be prefetched completely (listed above)"
    )
    # What was asked for and exists is in the cache now: a second run downloads nothing.
    again = run("prefetch", *selection(server, tmp_path, "--job", good, "--quiet"))
    assert again.returncode == 0 and "(0 downloaded" in again.stdout


def test_prefetch_of_a_named_pending_job_exits_1(server, project, tmp_path, capsys):
    pending = project[-1].job_id
    assert main(["prefetch", *selection(server, tmp_path, "--job", pending, "--quiet")]) == 1
    out = capsys.readouterr().out
    assert f"  failed: job {pending}: it is 'pending', not completed, so it has no result yet" in out


def test_prefetch_of_a_batch_with_pending_jobs_succeeds(server, project, tmp_path, capsys):
    assert main(["prefetch", *selection(server, tmp_path, "--quiet")]) == 0
    assert "2 jobs, 4 frames (4 downloaded" in capsys.readouterr().out


def test_failing_frames_give_one_line_per_job_without_repeating_ids(server, project, tmp_path, capsys):
    bad = project[1]
    for frame in ("0", "1"):
        server.add_fault("storage", status=404, times=None, match=f"{bad.job_id}/{frame}.pcd")
    assert main(["prefetch", *selection(server, tmp_path, "--quiet")]) == 1
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if "failed:" in line]
    assert line.startswith(f"  failed: job {bad.job_id}: 2 of 2 frames (frame 0, 1): ")
    assert line.count(bad.job_id) == 1 and "frame 0:" not in line


def test_no_key_says_how_to_set_it_on_a_command_line(server, project, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PLAYMENT_API_KEY")
    assert main(["prefetch", *selection(server, tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "export PLAYMENT_API_KEY=" in err and "api_key=" not in err


def test_inspect_prints_integer_medians(server, project, tmp_path, capsys):
    assert main(["inspect", *selection(server, tmp_path, "--quiet")]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("points per frame:")]
    assert re.fullmatch(r"points per frame: min \d+, median \d+(\.5)?, max \d+", line), line


def test_serve_is_usable_from_another_process_with_fixed_ids(tmp_path):
    argv = ["serve", "--jobs", "2", "--frames", "1", "--points", "10000", "--seed", "5", "--json"]
    first = run(*argv, "--duration", "0")
    second = run(*argv, "--duration", "0", "--api-key", "my-key")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert (a["project_id"], a["jobs"], a["batches"]) == (b["project_id"], b["jobs"], b["batches"])
    assert a["api_key"] == "fake-key-5" and b["api_key"] == "my-key"

    # Another terminal: a long-running server on a chosen port, then the CLI against it, then Ctrl-C.
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "playment_torch.cli", *argv, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert server.stdout is not None
        details = json.loads(server.stdout.readline())
        assert details["url"] == f"http://127.0.0.1:{port}"
        fetched = run(
            "prefetch",
            "--project",
            details["project_id"],
            "--base-url",
            details["url"],
            "--cache-dir",
            str(tmp_path),
            "--quiet",
            env={"PLAYMENT_API_KEY": details["api_key"]},
        )
        assert fetched.returncode == 0, fetched.stderr
        assert f"project {details['project_id']}: 2 jobs, 2 frames (2 downloaded" in fetched.stdout
    finally:
        server.send_signal(2)  # Ctrl-C
        started = time.monotonic()
        assert server.wait(timeout=30) == 130
        assert time.monotonic() - started < 30


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_inspect_lists_frames_with_non_finite_points(server, project, tmp_path, capsys):
    from playment_torch.formats.pcd import encode_pcd

    job = project[0]
    lidar = next(s for s in job.result["sensor_data"]["frames"][1]["sensors"] if s["data_url"].endswith(".pcd"))
    data = job.frames[1].points.copy()
    data["y"][10:13] = np.nan
    server.put_file(lidar["data_url"], encode_pcd(data, encoding="binary"))
    assert main(["inspect", *selection(server, tmp_path, "--quiet")]) == 0
    captured = capsys.readouterr()
    expected = f"non-finite points (NaN/inf coordinates, kept): 3 in 1 frames: job {job.job_id}, frame 1 (3)"
    assert expected in captured.out
    assert "playment-torch: warning: " in captured.err and "3 of" in captured.err


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_server_that_dies_mid_prefetch_ends_it_quickly_with_one_line(tmp_path, processes):
    argv = ["serve", "--jobs", "4", "--frames", "6", "--points", "10000", "--seed", "9", "--json", "--latency", "0.1"]
    server = subprocess.Popen(
        [sys.executable, "-m", "playment_torch.cli", *argv],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert server.stdout is not None
    details = json.loads(server.stdout.readline())
    command = ["prefetch", "--project", details["project_id"], "--base-url", details["url"], "--threads", "4"]
    command += ["--processes", processes]  # with 2, the failures cross from the worker processes
    prefetch = subprocess.Popen(
        [sys.executable, "-m", "playment_torch.cli", *command, "--cache-dir", str(tmp_path), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PLAYMENT_API_KEY": details["api_key"]},
    )
    try:
        # Let resolution finish and downloads start, then the server dies.
        deadline = time.monotonic() + 60
        # (Frames' value files are in the array store at the top; meta/ fills during resolution already.)
        while not list(tmp_path.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*.val")) and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()
        died = time.monotonic()
        out, err = prefetch.communicate(timeout=120)
        gave_up = time.monotonic() - died
    finally:
        server.kill()
        prefetch.kill()
    assert prefetch.returncode == 1, out + err
    print(f"gave up {gave_up:.1f}s after the server died")
    assert gave_up < 30, f"took {gave_up:.1f}s after the server died"
    host = details["url"].removeprefix("http://")
    failed = [line for line in out.splitlines() if "failed:" in line]
    assert len(failed) == 1 and f"{host} stopped answering" in failed[0], out


def test_inspect_offline_reports_cached_and_missing_per_job(server, project, tmp_path, capsys):
    first, second = project[0], project[1]
    assert main(["prefetch", *selection(server, tmp_path, "--job", first.job_id, "--quiet")]) == 0
    capsys.readouterr()
    argv = ["inspect", "--project", server.project_id, "--cache-dir", str(tmp_path), "--offline", "--quiet"]
    # Both jobs are known to the cache (resolved), only the first one's frames are cached.
    assert main(["inspect", *selection(server, tmp_path, "--quiet")]) == 0  # online: fills the second job too
    capsys.readouterr()
    for frame_key in [k for k in _array_keys(tmp_path) if f"|{second.job_id}|" in k and k.startswith("points")]:
        _delete(tmp_path, frame_key)
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "cache: 2 of 4 frames cached:" in captured.out
    assert f"  job {second.job_id}: 2 of 2 frames not cached" in captured.out
    assert f"project {server.project_id}: 1 jobs, 2 frames" in captured.out, "the cached frames are inspected"
    assert "1 jobs have frames that are not cached" in captured.err


def test_prefetch_snapshot_pins_what_was_prefetched(server, project, tmp_path, capsys):
    from playment_torch.dataset import PlaymentSegmentationDataset

    snapshot = tmp_path / "pinned.json"
    assert main(["prefetch", *selection(server, tmp_path / "cache", "--quiet", "--snapshot", str(snapshot))]) == 0
    out = capsys.readouterr().out
    assert f"wrote {snapshot}: snapshot of 4 frames of 2 jobs" in out
    pinned = json.loads(snapshot.read_text())
    assert {job["job_id"] for job in pinned["jobs"]} == {project[0].job_id, project[1].job_id}
    offline = PlaymentSegmentationDataset.from_snapshot(snapshot, cache_dir=str(tmp_path / "cache"), refresh="never")
    assert len(offline) == 4 and {f.job_id for f in offline.frames} == {project[0].job_id, project[1].job_id}


def _array_keys(directory):
    from playment_torch.cache import ArrayCache

    return list(ArrayCache(directory).keys())


def _delete(directory, key):
    from playment_torch.cache import ArrayCache

    assert ArrayCache(directory).delete(key)
