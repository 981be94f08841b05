"""NodeAwareSampler: frames stay on one node, so with a cache per node each file leaves Playment once."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import fast_client
from torch.utils.data import DistributedSampler

from playment_torch import PlaymentSegmentationDataset
from playment_torch.errors import ConfigError
from playment_torch.sampler import NodeAwareSampler, NodeLayout
from playment_torch.testing.synthetic import add_synthetic_project

NODES, RANKS, EPOCHS = 2, 2, 3


def frame_downloads(server) -> Counter[str]:
    """Downloads per file (point clouds and masks), from the server's request log."""
    return Counter(r.path for r in server.requests if r.route in ("storage", "direct") and r.method == "GET")


def run_nodes(server, tmp_path, make_sampler) -> tuple[Counter[str], list[list[list[int]]]]:
    """2 nodes × 2 ranks × 3 epochs, ranks run one after the other; each node has its own cache folder."""
    datasets = {
        (node, rank): PlaymentSegmentationDataset(
            server.project_id, client=fast_client(server), cache_dir=tmp_path / f"node{node}", progress=False
        )
        for node in range(NODES)
        for rank in range(RANKS)
    }
    server.clear_requests()  # count frame files only, not the listings and results of construction
    seen: list[list[list[int]]] = []
    for epoch in range(EPOCHS):
        per_rank = []
        for (node, rank), ds in datasets.items():
            sampler = make_sampler(ds, node, rank)
            sampler.set_epoch(epoch)
            indices = list(sampler)
            for i in indices:
                ds[i]
            per_rank.append(indices)
        seen.append(per_rank)
    return frame_downloads(server), seen


@pytest.fixture
def project(server):
    return add_synthetic_project(server, n_jobs=4, frames_per_job=5, points_per_frame=10_000, seed=8, cameras=0)


def test_node_aware_sampler_downloads_each_file_once_where_distributed_sampler_does_not(server, project, tmp_path):
    n_frames = sum(len(job.frames) for job in project)

    def node_aware(ds, node, rank):
        return NodeAwareSampler(ds, num_nodes=NODES, node_rank=node, local_world_size=RANKS, local_rank=rank, seed=4)

    downloads, seen = run_nodes(server, tmp_path / "aware", node_aware)
    assert len(downloads) == 2 * n_frames  # a point cloud and a mask per frame, every one read
    assert set(downloads.values()) == {1}, downloads  # once per node, and only one node reads a file
    for per_rank in seen:  # every frame exactly once per epoch across the 4 ranks (20 frames: no padding)
        assert sorted(i for indices in per_rank for i in indices) == list(range(n_frames))
        assert len({len(indices) for indices in per_rank}) == 1
    assert seen[0] != seen[1]  # shuffled every epoch

    server.clear_requests()

    def distributed(ds, node, rank):
        return DistributedSampler(ds, num_replicas=NODES * RANKS, rank=node * RANKS + rank, shuffle=True, seed=4)

    downloads, _ = run_nodes(server, tmp_path / "distributed", distributed)
    assert len(downloads) == 2 * n_frames
    # The same frames, the same caches: DistributedSampler moves frames between nodes, which download again.
    assert max(downloads.values()) == 2
    assert sum(downloads.values()) > 1.3 * 2 * n_frames  # expected 2·(1 − 1/2³) = 1.75 per file


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("total", "nodes", "ranks"), [(23, 2, 2), (10, 3, 1), (7, 1, 4), (100, 4, 3)])
def test_every_frame_once_per_epoch_up_to_padding(total, nodes, ranks, drop_last):
    for epoch in range(3):
        per_rank = []
        for node in range(nodes):
            for rank in range(ranks):
                sampler = NodeAwareSampler(
                    total, num_nodes=nodes, node_rank=node, local_world_size=ranks, local_rank=rank,
                    seed=1, drop_last=drop_last,
                )  # fmt: skip
                sampler.set_epoch(epoch)
                indices = list(sampler)
                assert len(indices) == len(sampler)
                # A rank reads only its node's frames, the same set in every epoch.
                assert set(indices) <= set(sampler.node_frames(node).tolist())
                per_rank.append(indices)
        world = nodes * ranks
        expected = total // world if drop_last else -(-total // world)
        assert {len(indices) for indices in per_rank} == {expected}  # equal counts on every rank
        counts = Counter(i for indices in per_rank for i in indices)
        assert set(counts) <= set(range(total))
        if drop_last:
            assert max(counts.values()) == 1 and sum(counts.values()) == expected * world
        else:
            assert set(counts) == set(range(total))  # every frame visited
            assert sum(counts.values()) - total == expected * world - total  # padding only
            assert max(counts.values()) <= 2


def test_split_between_nodes_depends_on_the_seed_not_the_epoch():
    def parts(seed):
        sampler = NodeAwareSampler(40, num_nodes=2, node_rank=0, local_world_size=1, local_rank=0, seed=seed)
        return [sampler.node_frames(n).tolist() for n in range(2)]

    assert parts(0) == parts(0)
    assert parts(0) != parts(1)
    assert sorted(parts(0)[0] + parts(0)[1]) == list(range(40))
    assert abs(len(parts(0)[0]) - len(parts(0)[1])) <= 1

    sampler = NodeAwareSampler(40, num_nodes=2, node_rank=1, local_world_size=2, local_rank=0, seed=0)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] == orders[2] != orders[1]  # deterministic by (seed, epoch)
    assert set(orders[0]) | set(orders[1]) <= set(sampler.node_frames(1).tolist())

    sampler = NodeAwareSampler(40, num_nodes=2, node_rank=1, local_world_size=2, local_rank=0, shuffle=False)
    assert list(sampler) == sampler.node_frames(1).tolist()[::2]


@pytest.mark.parametrize("drop_last", [False, True])
def test_groups_keep_each_job_on_one_node(drop_last):
    sizes = [10, 3, 7, 7, 5, 1, 9]  # frames per job
    jobs = np.repeat(np.arange(len(sizes)), sizes)
    total, nodes, ranks = len(jobs), 2, 2
    samplers = [
        NodeAwareSampler(
            total, num_nodes=nodes, node_rank=node, local_world_size=ranks, local_rank=rank,
            seed=3, groups=jobs, drop_last=drop_last,
        )
        for node in range(nodes)
        for rank in range(ranks)
    ]  # fmt: skip
    parts = [samplers[0].node_frames(node) for node in range(nodes)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(total))
    for job in range(len(sizes)):  # a job's frames all on one node
        assert sum(bool(np.isin(np.flatnonzero(jobs == job), part).any()) for part in parts) == 1
    assert abs(len(parts[0]) - len(parts[1])) <= max(sizes)
    for epoch in range(2):
        per_rank = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
            node = sampler.layout.node_rank
            assert set(per_rank[-1]) <= set(parts[node].tolist())
        assert len({len(indices) for indices in per_rank}) == 1  # equal counts on every rank
        counts = Counter(i for indices in per_rank for i in indices)
        if drop_last:
            assert max(counts.values()) == 1
        else:
            assert set(counts) == set(range(total))


def test_groups_must_cover_every_node_and_frame():
    with pytest.raises(ConfigError, match="one id per frame"):
        NodeAwareSampler(4, num_nodes=1, node_rank=0, local_world_size=1, local_rank=0, groups=[0, 1])
    with pytest.raises(ConfigError, match=r"frames per node: \[4, 0\]|frames per node: \[0, 4\]"):
        NodeAwareSampler(4, num_nodes=2, node_rank=0, local_world_size=1, local_rank=0, groups=[7, 7, 7, 7])


def test_layout_from_torchrun_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert NodeLayout.detect() == NodeLayout(1, 0, 1, 0)

    env = {"WORLD_SIZE": "8", "RANK": "6", "LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "2", "GROUP_RANK": "1"}
    layout = NodeLayout.detect(environ=env)
    assert layout == NodeLayout(num_nodes=2, node_rank=1, local_world_size=4, local_rank=2)
    assert (layout.rank, layout.world_size) == (6, 8)
    # Without GROUP_RANK / LOCAL_RANK the global rank decides.
    assert NodeLayout.detect(environ={"WORLD_SIZE": "8", "RANK": "5", "LOCAL_WORLD_SIZE": "4"}) == NodeLayout(
        2, 1, 4, 1
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sampler = NodeAwareSampler(64)
    assert sampler.layout == layout and len(sampler) == 8
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    ("environ", "options", "message"),
    [
        ({"WORLD_SIZE": "8", "RANK": "3"}, {}, "LOCAL_WORLD_SIZE"),
        ({"WORLD_SIZE": "8", "RANK": "3", "LOCAL_WORLD_SIZE": "3"}, {}, "not a multiple"),
        ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "2"}, {}, "node_rank=2"),
        ({"WORLD_SIZE": "x"}, {}, "WORLD_SIZE='x'"),
        ({}, {"local_rank": 1}, "local_rank=1"),
    ],
)
def test_inconsistent_layouts_are_refused(environ, options, message):
    with pytest.raises(ConfigError, match=message):
        NodeLayout.detect(environ=environ, **options)


def test_too_few_frames_for_the_ranks_is_refused():
    with pytest.raises(ConfigError, match="3 frames cannot give every one of 4 ranks"):
        NodeAwareSampler(3, num_nodes=2, node_rank=0, local_world_size=2, local_rank=0, drop_last=True)
    assert np.array_equal(
        list(NodeAwareSampler(3, num_nodes=2, node_rank=0, local_world_size=2, local_rank=1)),
        list(NodeAwareSampler(3, num_nodes=2, node_rank=0, local_world_size=2, local_rank=1)),
    )
