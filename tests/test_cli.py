"""The playment-torch command, driven through main([...]) against the fake server."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from playment_torch.cli import main
from playment_torch.testing.synthetic import CLASSES, add_synthetic_project


@pytest.fixture
def project(server, monkeypatch):
    jobs = add_synthetic_project(server, n_jobs=2, frames_per_job=2, points_per_frame=10_000, seed=21)
    monkeypatch.setenv("PLAYMENT_API_KEY", server.api_key)
    return jobs


def selection(server, tmp_path, *extra: str) -> list[str]:
    return ["--project", server.project_id, "--base-url", server.url, "--cache-dir", str(tmp_path), *extra]


def test_prefetch_then_inspect_offline(server, project, tmp_path, capsys):
    assert main(["prefetch", *selection(server, tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 jobs, 4 frames (4 downloaded" in out and "0 failed" in out

    server.clear_requests()
    assert main(["inspect", *selection(server, tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # After prefetch only the listings are asked again (batches gain jobs); jobs, results and frames are cached.
    assert {r.route for r in server.requests} == {"project", "batch"}
    assert report["frames"] == 4 and report["jobs"] == 2
    total_points = sum(len(f.points) for job in project for f in job.frames)
    assert report["points"] == total_points
    labelled = sum(int((f.class_index >= 0).sum()) for job in project for f in job.frames)
    assert report["unlabeled_share"] == pytest.approx(1 - labelled / total_points)
    expected = {
        name: sum(int((f.class_index == CLASSES.index(name)).sum()) for j in project for f in j.frames)
        for name in CLASSES
    }
    assert {c["name"]: c["points"] for c in report["classes"]} == {k: v for k, v in expected.items() if v}
    assert sorted(report["frames_per_job"].values()) == [2, 2]
    sizes = sorted(len(f.points) for job in project for f in job.frames)
    assert report["points_per_frame"]["min"] == sizes[0] and report["points_per_frame"]["max"] == sizes[-1]

    server.clear_requests()
    assert main(["inspect", *selection(server, tmp_path), "--offline"]) == 0
    table = capsys.readouterr().out
    assert server.requests == [], "--offline never touches the network"
    assert "unlabeled points:" in table and "road" in table


def test_bad_key_exits_1_with_one_line(server, project, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLAYMENT_API_KEY", "not-the-key")
    assert main(["prefetch", *selection(server, tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("playment-torch: error:")
    assert "auth" in err.lower() and "not-the-key" not in err and "Traceback" not in err


def test_missing_key_exits_1(server, project, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PLAYMENT_API_KEY")
    assert main(["inspect", *selection(server, tmp_path)]) == 1
    assert "PLAYMENT_API_KEY" in capsys.readouterr().err


def test_debug_shows_the_traceback(server, project, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLAYMENT_API_KEY", "not-the-key")
    assert main(["--debug", "prefetch", *selection(server, tmp_path)]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--frobnicate"], ["prefetch"], ["inspect", "--project"], ["cache", "shred"], [], ["demo", "--epochs", "x"]],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_the_key_is_never_an_argument(capsys):
    assert main(["prefetch", "--project", "p", "--api-key", "secret"]) == 2


def test_verify_repair_and_cache_commands(server, project, tmp_path, capsys):
    assert main(["prefetch", *selection(server, tmp_path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["verify", "--cache-dir", str(tmp_path)]) == 0
    assert ", 0 bad" in capsys.readouterr().out
    damaged = sorted(tmp_path.rglob("*.val"))[0]
    damaged.write_bytes(damaged.read_bytes()[:-10])
    assert main(["verify", "--cache-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert ", 1 bad" in captured.out and "--repair" in captured.err
    assert main(["verify", "--cache-dir", str(tmp_path), "--repair"]) == 0
    assert "dropped 1 bad entries" in capsys.readouterr().out
    assert main(["verify", "--cache-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    info = capsys.readouterr().out
    entries = int(info.split(": ")[1].split(" entries")[0])
    assert entries >= 7
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert f"removed {entries} entries" in capsys.readouterr().out
    assert main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    assert ": 0 entries" in capsys.readouterr().out


def test_serve_prints_how_to_connect(capsys):
    assert main(["serve", "--jobs", "1", "--frames", "1", "--points", "10000", "--duration", "0"]) == 0
    out = capsys.readouterr().out
    assert "fake Playment server at http://127.0.0.1:" in out and "project id:" in out
    assert "export PLAYMENT_API_KEY=fake-key-0" in out


def test_demo_learns_small(tmp_path, capsys):
    from playment_torch.demo import run_demo

    lines: list[str] = []
    result = run_demo(
        epochs=4,
        frames=12,
        points_per_frame=10_000,
        cache_dir=tmp_path,
        progress=False,
        echo=lines.append,
        pictures=tmp_path / "pictures",
    )
    from PIL import Image

    assert [p.name for p in result.pictures] == ["demo-frame.png", "demo-confusion.png"]
    for path in result.pictures:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 300
    assert any(line.startswith("pictures: ") and "demo-frame.png" in line for line in lines)
    assert len(result.losses) == 4 and result.losses[-1] < 0.7 * result.losses[0]
    assert result.accuracy > 0.5 and result.miou > 1.5 / 8, "well above chance (1/8 classes) on held-out jobs"
    assert any(line.startswith("mIoU") for line in lines)


def test_console_script_is_installed():
    script = shutil.which("playment-torch")
    assert script is not None, "pip install -e . puts the playment-torch command on PATH"
    completed = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0 and "demo" in completed.stdout and "prefetch" in completed.stdout


def test_prefetch_with_failures_exits_1(server, project, tmp_path, capsys):
    server.add_fault("storage", status=404, times=None, match=".pcd")
    assert main(["prefetch", *selection(server, tmp_path), "--quiet"]) == 1
    captured = capsys.readouterr()
    # One line per job, naming its failing frames once, never one line per frame.
    assert "4 failed" in captured.out and captured.out.count("  failed: job ") == 2
    for job in project:
        assert f"  failed: job {job.job_id}: 2 of 2 frames (frame 0, 1): " in captured.out
    assert "2 of the jobs asked for could not be prefetched completely" in captured.err


def test_cache_commands_do_not_create_a_missing_cache(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["cache", "info", "--cache-dir", str(missing)]) == 1
    assert main(["verify", "--cache-dir", str(missing)]) == 1
    assert "no cache at" in capsys.readouterr().err and not missing.exists()
