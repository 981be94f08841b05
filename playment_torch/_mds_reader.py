"""``PlaymentStreamingDataset``: an MDS export read back through MosaicML Streaming (needs the ``[mds]`` extra).

Imported on first use of ``playment_torch.mds.PlaymentStreamingDataset``: defining the class needs
``streaming.StreamingDataset`` as its base.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from playment_torch.errors import ConfigError
from playment_torch.mds import METADATA_FILE, ExportedFrame, import_streaming, read_metadata, sample_from_record
from playment_torch.sample import Sample

import_streaming()  # before the import below: see its docstring (torchvision beside a CPU-only torch)

from streaming import StreamingDataLoader, StreamingDataset  # noqa: E402

__all__ = ["PlaymentStreamingDataLoader", "PlaymentStreamingDataset"]


class PlaymentStreamingDataset(StreamingDataset):
    """An MDS export of a Playment dataset, streamed: yields :class:`Sample` like the dataset it came from.

    Every keyword of ``streaming.StreamingDataset`` is accepted (``remote``, ``local``, ``streams``,
    ``batch_size``, ``shuffle``, ``shuffle_seed``, ``num_canonical_nodes``, ``predownload``, ``cache_limit``...),
    and the engine does the rest: deterministic partitioning over nodes, ranks and workers, each shard copied
    once into each node's ``local`` folder, mid-epoch resumption through ``state_dict`` / ``load_state_dict``.
    Give each dataset on a host its own ``local`` folder: Streaming keys its shared memory by it, and two
    datasets sharing one clash.

    Args:
        transform: Called on every :class:`Sample`, as the dataset's ``transform``.
        **kwargs: ``streaming.StreamingDataset``'s arguments.

    Attributes:
        metadata: The export's ``playment.json`` (classes, ``ignore_index``, ``point_fields``, snapshot...).
        classes: Class names by training index.
        ignore_index: The label of unlabeled points.
        point_fields: The columns of ``points``.

    Raises:
        PlaymentFormatError: a stream is not a playment-torch export of a readable version.
        ConfigError: the streams disagree on classes, ``ignore_index`` or ``point_fields``.
    """

    def __init__(self, *, transform: Callable[[Sample], Sample] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transform = transform
        metadata = [_stream_metadata(stream) for stream in self.streams]
        keys = ("classes", "ignore_index", "point_fields")
        if any(tuple(m[k] for k in keys) != tuple(metadata[0][k] for k in keys) for m in metadata):
            raise ConfigError("the streams are exports with different classes, ignore_index or point_fields")
        self.metadata: dict[str, Any] = metadata[0]
        self.classes: tuple[str, ...] = tuple(self.metadata["classes"])
        self.ignore_index: int = int(self.metadata["ignore_index"])
        self.point_fields: tuple[str, ...] = tuple(self.metadata["point_fields"])

    def get_item(self, sample_id: int, retry: int = 7) -> Sample:
        """Sample ``sample_id`` (what indexing and iteration return), transformed.

        Args:
            sample_id: The sample's index in the export.
            retry: Passed to Streaming (re-downloads of an evicted shard).

        Returns:
            The sample.
        """
        sample = sample_from_record(super().get_item(sample_id, retry))
        return sample if self.transform is None else self.transform(sample)

    def frame(self, sample_id: int) -> ExportedFrame:
        """The identity of sample ``sample_id``: job, frame, sensor, result digest, item in the source dataset.

        Args:
            sample_id: The sample's index in the export.

        Returns:
            The frame's ids.
        """
        record = super().get_item(sample_id)
        return ExportedFrame(
            job_id=record["job_id"],
            frame_id=record["frame_id"],
            sensor_id=record["sensor_id"],
            digest=record["digest"],
            item=int(record["item"]),
        )


def _stream_metadata(stream: Any) -> dict[str, Any]:
    folder = os.path.join(stream.local, stream.split or "")
    if stream.remote is not None and not os.path.exists(os.path.join(folder, METADATA_FILE)):
        stream._download_file(METADATA_FILE)  # beside index.json, which Streaming fetched the same way
    return read_metadata(folder)


class PlaymentStreamingDataLoader(StreamingDataLoader):
    """Streaming's resumable ``DataLoader``, counting the frames of :class:`~playment_torch.collate.Batch` batches.

    ``streaming.StreamingDataLoader`` counts the samples it has handed out (for ``state_dict``) as
    ``len(batch[0])``, which a :class:`~playment_torch.collate.Batch` (concatenated points) does not answer;
    this one counts ``len(batch.offsets) - 1`` frames, and falls back to Streaming's rule for other batches.
    ``state_dict()`` / ``load_state_dict()`` then resume mid-epoch with exactly the rest of the epoch.
    """

    def _get_batch_size(self, batch: Any) -> int:
        offsets = getattr(batch, "offsets", None)
        if offsets is not None:
            return len(offsets) - 1
        return int(super()._get_batch_size(batch))
