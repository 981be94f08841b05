"""Offline test tools, shipped so users can test their pipelines without Playment.

* :class:`FakePlaymentServer`: the Playment API (project, batch, job, attachments) plus signed-URL storage, on
  loopback, with a request log and fault injection.
* :func:`make_job`, :func:`add_synthetic_project`, :func:`generate_frames`: synthetic lidar jobs (a spinning
  multi-beam lidar ray-cast in a procedural street) with exact ground truth, in Playment's result format.
* :func:`index_results`: parsed results with no files behind them, for index-scale tests.

    from playment_torch.testing import FakePlaymentServer, add_synthetic_project

    with FakePlaymentServer() as server:
        jobs = add_synthetic_project(server, n_jobs=2)
        ...  # PlaymentClient(api_key=server.api_key, base_url=server.url)
"""

from __future__ import annotations

from playment_torch.testing.server import FakePlaymentServer, Fault, RequestRecord
from playment_torch.testing.synthetic import (
    CLASSES,
    POINT_DTYPE,
    SyntheticFrame,
    SyntheticJob,
    add_synthetic_project,
    generate_frames,
    index_results,
    make_job,
)

__all__ = [
    "CLASSES",
    "POINT_DTYPE",
    "FakePlaymentServer",
    "Fault",
    "RequestRecord",
    "SyntheticFrame",
    "SyntheticJob",
    "add_synthetic_project",
    "generate_frames",
    "index_results",
    "make_job",
]
