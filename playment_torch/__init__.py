"""playment_torch: Playment point cloud segmentation jobs as PyTorch training data.

The front door: every public name is re-exported here (see ``__all__``); everything else is private.

    import playment_torch as pt
    ds = pt.PlaymentSegmentationDataset("project-id", batch_ids=["batch-id"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=pt.collate_points, num_workers=4)

Names are imported on first use (PEP 562), so ``import playment_torch.formats`` or ``.geometry`` does not pay
for torch, and the fake server is not loaded unless ``pt.testing`` is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> (module, attribute in it; None for the module itself).
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "APIError": ("playment_torch.errors", "APIError"),
    "ArrayCache": ("playment_torch.cache", "ArrayCache"),
    "AuthenticationError": ("playment_torch.errors", "AuthenticationError"),
    "Batch": ("playment_torch.collate", "Batch"),
    "CacheError": ("playment_torch.errors", "CacheError"),
    "Camera": ("playment_torch.geometry", "Camera"),
    "ClassMap": ("playment_torch.labels", "ClassMap"),
    "ConfigError": ("playment_torch.errors", "ConfigError"),
    "DatasetStats": ("playment_torch.dataset", "DatasetStats"),
    "DownloadError": ("playment_torch.errors", "DownloadError"),
    "EvaluationReport": ("playment_torch.evaluation", "EvaluationReport"),
    "FrameError": ("playment_torch.errors", "FrameError"),
    "FrameMetrics": ("playment_torch.evaluation", "FrameMetrics"),
    "FrameRef": ("playment_torch.models", "FrameRef"),
    "HostUnreachableError": ("playment_torch.errors", "HostUnreachableError"),
    "Job": ("playment_torch.models", "Job"),
    "JobNotCompletedError": ("playment_torch.errors", "JobNotCompletedError"),
    "JobResult": ("playment_torch.models", "JobResult"),
    "JobSummary": ("playment_torch.models", "JobSummary"),
    "LabelEntry": ("playment_torch.models", "LabelEntry"),
    "NodeAwareSampler": ("playment_torch.sampler", "NodeAwareSampler"),
    "NodeLayout": ("playment_torch.sampler", "NodeLayout"),
    "NotFoundError": ("playment_torch.errors", "NotFoundError"),
    "PCDHeader": ("playment_torch.formats", "PCDHeader"),
    "PlaymentClient": ("playment_torch.client", "PlaymentClient"),
    "PlaymentError": ("playment_torch.errors", "PlaymentError"),
    "PlaymentFormatError": ("playment_torch.errors", "PlaymentFormatError"),
    "PlaymentResults": ("playment_torch.predictions", "PlaymentResults"),
    "PlaymentSegmentationDataset": ("playment_torch.dataset", "PlaymentSegmentationDataset"),
    "PointCloud": ("playment_torch.formats", "PointCloud"),
    "Pose": ("playment_torch.geometry", "Pose"),
    "PredictionWriter": ("playment_torch.predictions", "PredictionWriter"),
    "Predictions": ("playment_torch.predictions", "Predictions"),
    "PrefetchReport": ("playment_torch.dataset", "PrefetchReport"),
    "Project": ("playment_torch.models", "Project"),
    "ProjectBatch": ("playment_torch.models", "Batch"),
    "RateLimitError": ("playment_torch.errors", "RateLimitError"),
    "RelabelOutcome": ("playment_torch.relabel", "RelabelOutcome"),
    "RelabelReport": ("playment_torch.relabel", "RelabelReport"),
    "RetryPolicy": ("playment_torch.client", "RetryPolicy"),
    "Sample": ("playment_torch.sample", "Sample"),
    "SegmentationMetrics": ("playment_torch.metrics", "SegmentationMetrics"),
    "ServerError": ("playment_torch.errors", "ServerError"),
    "collate_points": ("playment_torch.collate", "collate_points"),
    "create_jobs": ("playment_torch.relabel", "create_jobs"),
    "evaluate": ("playment_torch.evaluation", "evaluate"),
    "export_frame": ("playment_torch.export", "export_frame"),
    "export_mds": ("playment_torch.mds", "export_mds"),
    "load_predictions": ("playment_torch.predictions", "load_predictions"),
    "mds": ("playment_torch.mds", None),
    "project_points": ("playment_torch.geometry", "project_points"),
    "read_mask": ("playment_torch.formats", "read_mask"),
    "read_pcd": ("playment_torch.formats", "read_pcd"),
    "read_prediction": ("playment_torch.predictions", "read_prediction"),
    "render_confusion_matrix": ("playment_torch.evaluation", "render_confusion_matrix"),
    "testing": ("playment_torch.testing", None),
    "viz": ("playment_torch.viz", None),
    "write_pcd": ("playment_torch.formats", "write_pcd"),
    "write_playment_results": ("playment_torch.predictions", "write_playment_results"),
}

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
    "EvaluationReport",
    "FrameError",
    "FrameMetrics",
    "FrameRef",
    "HostUnreachableError",
    "Job",
    "JobNotCompletedError",
    "JobResult",
    "JobSummary",
    "LabelEntry",
    "NodeAwareSampler",
    "NodeLayout",
    "NotFoundError",
    "PCDHeader",
    "PlaymentClient",
    "PlaymentError",
    "PlaymentFormatError",
    "PlaymentResults",
    "PlaymentSegmentationDataset",
    "PointCloud",
    "Pose",
    "PredictionWriter",
    "Predictions",
    "PrefetchReport",
    "Project",
    "ProjectBatch",
    "RateLimitError",
    "RelabelOutcome",
    "RelabelReport",
    "RetryPolicy",
    "Sample",
    "SegmentationMetrics",
    "ServerError",
    "__version__",
    "collate_points",
    "create_jobs",
    "evaluate",
    "export_frame",
    "export_mds",
    "load_predictions",
    "mds",
    "project_points",
    "read_mask",
    "read_pcd",
    "read_prediction",
    "render_confusion_matrix",
    "testing",
    "viz",
    "write_pcd",
    "write_playment_results",
]


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'playment_torch' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what type checkers and IDEs see
    from playment_torch import mds, testing, viz
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
        HostUnreachableError,
        JobNotCompletedError,
        NotFoundError,
        PlaymentError,
        PlaymentFormatError,
        RateLimitError,
        ServerError,
    )
    from playment_torch.evaluation import EvaluationReport, FrameMetrics, evaluate, render_confusion_matrix
    from playment_torch.export import export_frame
    from playment_torch.formats import PCDHeader, PointCloud, read_mask, read_pcd, write_pcd
    from playment_torch.geometry import Camera, Pose, project_points
    from playment_torch.labels import ClassMap
    from playment_torch.mds import export_mds
    from playment_torch.metrics import SegmentationMetrics
    from playment_torch.models import Batch as ProjectBatch
    from playment_torch.models import FrameRef, Job, JobResult, JobSummary, LabelEntry, Project
    from playment_torch.predictions import (
        PlaymentResults,
        Predictions,
        PredictionWriter,
        load_predictions,
        read_prediction,
        write_playment_results,
    )
    from playment_torch.relabel import RelabelOutcome, RelabelReport, create_jobs
    from playment_torch.sample import Sample
    from playment_torch.sampler import NodeAwareSampler, NodeLayout
