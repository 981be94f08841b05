"""playment_torch: Playment point cloud segmentation jobs as PyTorch training data.

The front door: every public name is re-exported here (see ``__all__``); everything else is private.

    import playment_torch as pt
    ds = pt.PlaymentSegmentationDataset("project-id", batch_ids=["batch-id"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=pt.collate_points, num_workers=4)
"""

from playment_torch import testing
from playment_torch.cache import ArrayCache
from playment_torch.client import PlaymentClient, RetryPolicy
from playment_torch.collate import Batch, collate_points
from playment_torch.dataset import DatasetStats, PlaymentSegmentationDataset, PrefetchReport
from playment_torch.errors import (
    APIError,
    AuthenticationError,
    CacheError,
    ConfigError,
    DownloadError,
    FrameError,
    JobNotCompletedError,
    NotFoundError,
    PlaymentError,
    PlaymentFormatError,
    RateLimitError,
    ServerError,
)
from playment_torch.formats import PCDHeader, PointCloud, read_mask, read_pcd, write_pcd
from playment_torch.geometry import Camera, Pose, project_points
from playment_torch.labels import ClassMap
from playment_torch.metrics import SegmentationMetrics
from playment_torch.models import Batch as ProjectBatch
from playment_torch.models import FrameRef, Job, JobResult, JobSummary, LabelEntry, Project
from playment_torch.sample import Sample

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "ArrayCache",
    "AuthenticationError",
    "Batch",
    "CacheError",
    "Camera",
    "ClassMap",
    "ConfigError",
    "DatasetStats",
    "DownloadError",
    "FrameError",
    "FrameRef",
    "Job",
    "JobNotCompletedError",
    "JobResult",
    "JobSummary",
    "LabelEntry",
    "NotFoundError",
    "PCDHeader",
    "PlaymentClient",
    "PlaymentError",
    "PlaymentFormatError",
    "PlaymentSegmentationDataset",
    "PointCloud",
    "Pose",
    "PrefetchReport",
    "Project",
    "ProjectBatch",
    "RateLimitError",
    "RetryPolicy",
    "Sample",
    "SegmentationMetrics",
    "ServerError",
    "__version__",
    "collate_points",
    "project_points",
    "read_mask",
    "read_pcd",
    "testing",
    "write_pcd",
]
