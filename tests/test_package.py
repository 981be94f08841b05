"""The package's front door: what it exports, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys


def test_the_front_door_exports_exactly_its_table():
    import playment_torch as pt

    assert sorted(pt.__all__) == pt.__all__ == sorted([*pt._EXPORTS, "__version__"])
    for name in pt.__all__:
        assert getattr(pt, name) is not None


def test_importing_the_numpy_layers_does_not_import_torch_or_the_fake_server():
    code = (
        "import sys, playment_torch, playment_torch.formats, playment_torch.geometry, playment_torch.models, "
        "playment_torch.client, playment_torch.cache;"
        "print('torch' in sys.modules, 'playment_torch.testing.server' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False"]
