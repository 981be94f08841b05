"""Every code block of the README runs, against the fake server instead of api.playment.io."""

from __future__ import annotations

import re
import shlex
import socket
from pathlib import Path

import pytest

from playment_torch.cli import main
from playment_torch.client import PlaymentClient
from playment_torch.testing.synthetic import add_synthetic_project

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README.read_text(), flags=re.S)
PYTHON = [code for kind, code in BLOCKS if kind == "python"]
COMMANDS = [
    line.split("  #")[0].strip()
    for kind, code in BLOCKS
    if kind == "bash"
    for line in code.splitlines()
    if line.startswith("playment-torch ")
]
# Lines of bash blocks that are not `playment-torch` commands are the install and test commands CI itself runs
# (.ci/run), linters and benchmarks: running them from inside the test suite would recurse or take minutes.


@pytest.fixture
def api(server, tmp_path, monkeypatch):
    """The README's placeholders, filled from a synthetic project on the fake server."""
    jobs = add_synthetic_project(server, n_jobs=4, frames_per_job=2, points_per_frame=10_000, batches=2, seed=31)
    monkeypatch.setenv("PLAYMENT_API_KEY", server.api_key)
    monkeypatch.setenv("PLAYMENT_TORCH_CACHE", str(tmp_path / "cache"))
    # The README's code talks to the default base URL; here that is the fake server.
    monkeypatch.setitem(PlaymentClient.__init__.__kwdefaults__, "base_url", server.url)
    return {
        "YOUR_PROJECT_ID": server.project_id,
        "YOUR_BATCH_ID": jobs[0].batch_id,
        "YOUR_JOB_ID": jobs[1].job_id,
    }


def fill(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(PYTHON) >= 7 and len(COMMANDS) >= 6
    assert 'pip install -e ".[test]" && playment-torch demo' in README.read_text()


@pytest.mark.parametrize("number", range(len(PYTHON)))
def test_python_block_runs(number, api, monkeypatch):
    code = fill(PYTHON[number], api)
    if "init_process_group" in code:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        for name, value in {
            "RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }.items():
            monkeypatch.setenv(name, value)
    exec(compile(code, f"README.md python block {number}", "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("command", [c for c in COMMANDS if " demo" not in c])
def test_cli_command_runs(command, api, server, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # commands that write files (show -o frame.png) write them here
    argv = shlex.split(fill(command, api))[1:]
    if "--offline" in argv or argv[0] in ("verify", "cache"):
        # These read a cache that an earlier command filled.
        assert main(["prefetch", "--project", api["YOUR_PROJECT_ID"], "--base-url", server.url, "--quiet"]) == 0
    if argv[0] in ("prefetch", "inspect", "show", "evaluate", "export"):
        argv += ["--base-url", server.url]
    if argv[0] == "serve":
        argv += ["--duration", "0", "--jobs", "1", "--frames", "1", "--points", "10000"]
    assert main(argv) == 0, capsys.readouterr().err
