"""``NodeAwareSampler``: each frame is read on one node only, so each file leaves Playment once per node.

``torch.utils.data.DistributedSampler(shuffle=True)`` deals every frame to a different rank each epoch. With one
disk cache per node, a frame then lands on a new node most epochs and its point cloud and mask are downloaded
again: over ``E`` epochs on ``N`` nodes each file is downloaded ``N·(1 − (1 − 1/N)^E)`` times (8 nodes × 10
epochs: 5.9 times). This sampler keeps the randomness where it costs nothing:

1. **Between nodes, once.** The frames are permuted by ``seed`` alone (never by the epoch) and cut into
   ``num_nodes`` parts whose sizes differ by at most one. A node reads only its part, in every epoch, so its cache
   holds exactly that part and no file is needed by two nodes.
2. **Within a node, every epoch.** The node's part is shuffled by ``(seed, epoch, node)``.
3. **Between the node's ranks, every epoch.** The shuffled part is dealt round-robin to the node's ranks with the
   same number of frames for **every rank of the job** (ranks of different nodes too: a rank that runs out of
   batches first would hang the others in DDP). Like ``DistributedSampler``: with ``drop_last=False`` a node
   pads its part by repeating its own frames from the start of its shuffled order (so padding downloads nothing
   new); with ``drop_last=True`` it drops the tail of its shuffled order (other frames each epoch).

Where the issue is silent, chosen: by default the unit of the split between nodes is the frame (nodes balanced
to one frame). With ``sweeps > 1`` pass ``groups=ds.index.frame_job`` (or any group id per frame) to keep each
job's frames on one node, so that the earlier frames of a sweep are cached where the key frame is: groups are
dealt, in a seeded order, to the node with the fewest frames so far, and nodes then differ by up to a group's
size (padding or dropping evens the ranks out, as above). The node's rank layout follows torchrun
(``rank = node_rank * local_world_size + local_rank``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

from playment_torch.errors import ConfigError

__all__ = ["NodeAwareSampler", "NodeLayout"]


@dataclass(frozen=True)
class NodeLayout:
    """Where this process sits: which node, which rank of that node.

    Attributes:
        num_nodes: Nodes of the job.
        node_rank: This process's node, ``0 <= node_rank < num_nodes``.
        local_world_size: Ranks per node.
        local_rank: This process's rank within its node.
    """

    num_nodes: int
    node_rank: int
    local_world_size: int
    local_rank: int

    @property
    def world_size(self) -> int:
        """Ranks of the job."""
        return self.num_nodes * self.local_world_size

    @property
    def rank(self) -> int:
        """This process's global rank, torchrun's layout."""
        return self.node_rank * self.local_world_size + self.local_rank

    @classmethod
    def detect(
        cls,
        *,
        num_nodes: int | None = None,
        node_rank: int | None = None,
        local_world_size: int | None = None,
        local_rank: int | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> NodeLayout:
        """The layout from the arguments given, then ``torch.distributed``, then torchrun's environment.

        World size and rank come from ``torch.distributed`` when it is initialised, else from ``WORLD_SIZE`` and
        ``RANK``, else 1 and 0. Ranks per node come from ``LOCAL_WORLD_SIZE``, the rank within the node from
        ``LOCAL_RANK``, the node from ``GROUP_RANK`` (or ``NODE_RANK``), each defaulting to what the global rank
        implies.

        Args:
            num_nodes: Nodes, if known.
            node_rank: This node, if known.
            local_world_size: Ranks per node, if known.
            local_rank: This rank within its node, if known.
            environ: The environment to read (default ``os.environ``).

        Returns:
            The layout.

        Raises:
            ConfigError: the values contradict each other, or there are several ranks and nothing tells how many
                run per node.
        """
        env = os.environ if environ is None else environ
        if num_nodes is not None and node_rank is not None and local_world_size is not None and local_rank is not None:
            layout = cls(num_nodes, node_rank, local_world_size, local_rank)
            layout.check()
            return layout
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world_size, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        else:
            world_size, rank = _env_int(env, "WORLD_SIZE", 1), _env_int(env, "RANK", 0)
        if local_world_size is None:
            if num_nodes is not None:
                if num_nodes < 1 or world_size % num_nodes:
                    raise ConfigError(f"world size {world_size} is not a multiple of num_nodes={num_nodes}")
                local_world_size = world_size // num_nodes
            elif "LOCAL_WORLD_SIZE" in env:
                local_world_size = _env_int(env, "LOCAL_WORLD_SIZE", 1)
            elif world_size == 1:
                local_world_size = 1
            else:
                raise ConfigError(
                    f"{world_size} ranks but no LOCAL_WORLD_SIZE: pass local_world_size= (ranks per node) or "
                    "launch with torchrun"
                )
        if local_world_size < 1 or (num_nodes is None and world_size % local_world_size):
            raise ConfigError(f"world size {world_size} is not a multiple of local_world_size={local_world_size}")
        if num_nodes is None:
            num_nodes = world_size // local_world_size
        if local_rank is None:
            local_rank = _env_int(env, "LOCAL_RANK", rank % local_world_size)
        if node_rank is None:
            node_rank = _env_int(env, "GROUP_RANK", _env_int(env, "NODE_RANK", rank // local_world_size))
        layout = cls(num_nodes, node_rank, local_world_size, local_rank)
        layout.check()
        return layout

    def check(self) -> None:
        """Raise :class:`ConfigError` unless every field is in range."""
        if self.num_nodes < 1 or self.local_world_size < 1:
            raise ConfigError(f"num_nodes and local_world_size must be at least 1: {self}")
        if not 0 <= self.node_rank < self.num_nodes:
            raise ConfigError(f"node_rank={self.node_rank} is not in [0, {self.num_nodes})")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ConfigError(f"local_rank={self.local_rank} is not in [0, {self.local_world_size})")


class NodeAwareSampler(Sampler[int]):
    """Frames split between nodes once, shuffled within the node every epoch, equal counts for every rank.

    Use it in place of ``DistributedSampler``, with one cache folder per node (``cache_dir`` on a node-local
    disk, shared by the node's ranks and workers), and call :meth:`set_epoch` before each epoch::

        sampler = pt.NodeAwareSampler(ds, seed=0)      # node and rank from torchrun's environment
        loader = DataLoader(ds, batch_size=8, sampler=sampler, collate_fn=pt.collate_points, num_workers=4)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for batch in loader: ...

    Every frame belongs to exactly one node for the whole run, so each file is downloaded once per run (once
    per node that reads it, and only one node does). See the module docstring for padding and dropping.

    Args:
        dataset: The dataset (only its length is used), or the number of frames.
        num_nodes: Nodes; by default detected (see :meth:`NodeLayout.detect`).
        node_rank: This process's node; by default detected.
        local_world_size: Ranks per node; by default detected.
        local_rank: This process's rank within its node; by default detected.
        shuffle: Shuffle the node's frames every epoch (the split between nodes is random either way).
        seed: The seed of the split between nodes and of every epoch's order; the same on every rank.
        drop_last: Drop the tail of each node's order instead of padding it (see the module docstring).
        groups: A group id per frame (e.g. ``ds.index.frame_job``): frames of a group stay on one node.

    Raises:
        ConfigError: the layout is inconsistent, ``groups`` does not have one id per frame, or some rank would
            get no frame.
    """

    def __init__(
        self,
        dataset: Sized | int,
        *,
        num_nodes: int | None = None,
        node_rank: int | None = None,
        local_world_size: int | None = None,
        local_rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        groups: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.total = int(dataset) if isinstance(dataset, int) else len(dataset)
        self.layout = NodeLayout.detect(
            num_nodes=num_nodes, node_rank=node_rank, local_world_size=local_world_size, local_rank=local_rank
        )
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self._owner = self._node_of_frames(groups)
        sizes = np.bincount(self._owner, minlength=self.layout.num_nodes)
        ranks = self.layout.local_world_size
        # The same count for every rank of the job, whichever node: DDP steps in lockstep. (With the frame split
        # this is ceil or floor of frames / world size, as DistributedSampler's.)
        self.num_samples = int(sizes.min()) // ranks if drop_last else -(-int(sizes.max()) // ranks)
        if self.num_samples == 0 or sizes.min() == 0:
            raise ConfigError(
                f"{self.total} frames cannot give every one of {self.layout.world_size} ranks a frame "
                f"(frames per node: {sizes.tolist()})"
            )
        self._node_frames = self.node_frames(self.layout.node_rank)

    def _node_of_frames(self, groups: Sequence[int] | np.ndarray | None) -> np.ndarray:
        """Each frame's node, decided by the seed alone (never by the epoch)."""
        nodes = self.layout.num_nodes
        rng = np.random.default_rng([self.seed, 0x6E6F6465])  # 'node': a stream of its own, not an epoch's
        owner = np.empty(self.total, dtype=np.int64)
        if groups is None:
            for node, part in enumerate(np.array_split(rng.permutation(self.total), nodes)):
                owner[part] = node
            return owner
        group_ids = np.asarray(groups)
        if group_ids.shape != (self.total,):
            raise ConfigError(f"groups must have one id per frame ({self.total}), got shape {group_ids.shape}")
        _, inverse = np.unique(group_ids, return_inverse=True)
        sizes = np.bincount(inverse)
        load = np.zeros(nodes, dtype=np.int64)
        group_node = np.empty(len(sizes), dtype=np.int64)
        for group in rng.permutation(len(sizes)):  # seeded order; each group to the least loaded node
            node = int(np.argmin(load))
            group_node[group] = node
            load[node] += sizes[group]
        return group_node[inverse]

    def node_frames(self, node_rank: int) -> np.ndarray:
        """The frames node ``node_rank`` reads in every epoch (the same on every rank, for the whole run).

        Args:
            node_rank: A node.

        Returns:
            int64 frame indices, ascending.
        """
        return np.flatnonzero(self._owner == node_rank).astype(np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch, which with the seed decides the order within the node; call it before each epoch.

        Args:
            epoch: The epoch number.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        frames = self._node_frames
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, self.layout.node_rank])
            frames = frames[rng.permutation(len(frames))]
        wanted = self.num_samples * self.layout.local_world_size
        if len(frames) < wanted:  # pad with the node's own frames: nothing another node caches
            frames = np.resize(frames, wanted)
        frames = frames[:wanted]
        return iter(frames[self.layout.local_rank :: self.layout.local_world_size].tolist())

    def __repr__(self) -> str:
        layout = self.layout
        return (
            f"NodeAwareSampler(frames={self.total}, node={layout.node_rank}/{layout.num_nodes}, "
            f"local_rank={layout.local_rank}/{layout.local_world_size}, per_rank={self.num_samples}, "
            f"seed={self.seed}, epoch={self.epoch})"
        )


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None
