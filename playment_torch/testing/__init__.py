"""Offline test tools: a fake Playment server and synthetic LiDAR jobs to put on it."""

from __future__ import annotations

from playment_torch.testing.server import FakePlaymentServer, Fault, RequestRecord

__all__ = ["FakePlaymentServer", "Fault", "RequestRecord"]
