"""The main job, end to end, on a machine with no Playment account: ``playment-torch demo``.

An embedded :class:`~playment_torch.testing.FakePlaymentServer` serves a synthetic project; the dataset resolves
its jobs, prefetches them into the disk cache, a small PointNet-style network trains on some jobs for a few
epochs on the CPU, and per-class IoU is measured on held-out jobs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from playment_torch.client import PlaymentClient
from playment_torch.collate import Batch, collate_points
from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.metrics import SegmentationMetrics
from playment_torch.testing.server import FakePlaymentServer
from playment_torch.testing.synthetic import add_synthetic_project

__all__ = ["DemoResult", "PointNetSegmenter", "run_demo"]


class PointNetSegmenter(nn.Module):
    """A per-point MLP with a global max-pooled feature per cloud (PointNet's segmentation head, minus T-nets).

    Args:
        in_channels: Columns of ``points``.
        num_classes: Output classes.
        width: Width of the per-point features.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.local = nn.Sequential(nn.Linear(in_channels, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.globalize = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(3 * width, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, points: torch.Tensor, batch_index: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Per-point logits ``(N, num_classes)`` for a batch of concatenated clouds."""
        local = self.local(points)
        per_point = self.globalize(local)
        pooled = torch.full((batch_size, per_point.shape[1]), -torch.inf, dtype=per_point.dtype)
        pooled = pooled.scatter_reduce(0, batch_index[:, None].expand_as(per_point), per_point, reduce="amax")
        return self.head(torch.cat([local, pooled[batch_index]], dim=1))


def features(batch: Batch) -> torch.Tensor:
    """Network input: x, y scaled to tens of metres, height, intensity, and horizontal range.

    Height and range carry most of what separates road from building from pole in a lidar sweep; giving
    range explicitly saves a tiny network from learning a square root.
    """
    xyz, rest = batch.points[:, :3], batch.points[:, 3:]
    distance = xyz[:, :2].norm(dim=1, keepdim=True)
    return torch.cat([xyz[:, :2] / 20.0, xyz[:, 2:3] / 2.0, rest, distance / 20.0], dim=1)


@dataclass
class DemoResult:
    """What the demo measured, and the pictures it drew (empty paths without Pillow)."""

    losses: list[float]
    miou: float
    accuracy: float
    table: str
    seconds: float
    train_frames: int
    test_frames: int
    pictures: list[Path] = field(default_factory=list)


def run_demo(
    *,
    epochs: int = 12,
    frames: int = 32,
    points_per_frame: int = 20_000,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool | None = None,
    echo: Callable[[str], None] = print,
    pictures: str | Path | None = None,
) -> DemoResult:
    """Serve a synthetic project locally, load it with the dataset, train, and evaluate on held-out jobs.

    Args:
        epochs: Training epochs.
        frames: Frames in the project (split into jobs of 4; a quarter of the jobs is held out).
        points_per_frame: Lidar points per frame.
        cache_dir: Where the dataset caches; a temporary folder when ``None``.
        seed: Seed of the scenes and of training.
        progress: Progress bars (``None``: only on a terminal).
        echo: Where to print.
        pictures: Folder for ``demo-frame.png`` (a held-out frame: truth | prediction | disagreement) and
            ``demo-confusion.png``; ``None`` draws none. Without Pillow (the ``viz`` extra) the demo says so and
            draws none.

    Returns:
        Loss per epoch, mIoU, accuracy and the per-class table.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    frames_per_job = 4
    n_jobs = max(2, -(-frames // frames_per_job))
    with (
        tempfile.TemporaryDirectory(prefix="playment-torch-demo-") as scratch,
        FakePlaymentServer() as server,
    ):
        jobs = add_synthetic_project(
            server, n_jobs=n_jobs, frames_per_job=frames_per_job, points_per_frame=points_per_frame, seed=seed
        )
        job_ids = sorted(job.job_id for job in jobs)
        held_out = max(1, len(job_ids) // 4)
        echo(
            f"fake Playment server at {server.url}: project {server.project_id}, {len(job_ids)} jobs, "
            f"{n_jobs * frames_per_job} frames of ~{points_per_frame} points"
        )
        client = PlaymentClient(server.api_key, base_url=server.url)
        options = {
            "client": client,
            "cache_dir": str(cache_dir or Path(scratch) / "cache"),
            "point_fields": ("x", "y", "z", "intensity"),
            "progress": progress,
        }
        # Resolve the whole project once so that both splits share one class list.
        everything = PlaymentSegmentationDataset(server.project_id, **options)  # type: ignore[arg-type]
        classes = everything.classes
        train = PlaymentSegmentationDataset(
            server.project_id,
            job_ids=job_ids[:-held_out],
            classes=classes,
            **options,  # type: ignore[arg-type]
        )
        test = PlaymentSegmentationDataset(
            server.project_id,
            job_ids=job_ids[-held_out:],
            classes=classes,
            **options,  # type: ignore[arg-type]
        )
        report = everything.prefetch(num_threads=8, progress=progress is not False)
        echo(f"prefetched {report}")
        echo(f"classes: {', '.join(classes)}")

        model = PointNetSegmenter(len(options["point_fields"]) + 1, len(classes))  # type: ignore[arg-type]
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-2, total_steps=max(1, epochs * len(train)))
        loss_fn = nn.CrossEntropyLoss(ignore_index=train.ignore_index)
        loader = torch.utils.data.DataLoader(
            train,
            batch_size=1,
            shuffle=True,
            collate_fn=collate_points,
            generator=torch.Generator().manual_seed(seed),
        )
        losses = []
        for epoch in range(epochs):
            model.train()
            total, count = 0.0, 0
            # A bar per epoch on a terminal (tqdm's disable=None), gone when the epoch's loss line prints.
            disable = True if progress is False else None
            for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="frame", leave=False, disable=disable):
                logits = model(features(batch), batch.batch_index, len(batch))
                loss = loss_fn(logits, batch.labels)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.item() * len(batch)
                count += len(batch)
            losses.append(total / max(count, 1))
            echo(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")

        metrics = SegmentationMetrics(len(classes), ignore_index=test.ignore_index, class_names=classes)
        model.eval()
        with torch.no_grad():
            for batch in torch.utils.data.DataLoader(test, batch_size=2, collate_fn=collate_points):
                metrics.update(model(features(batch), batch.batch_index, len(batch)), batch.labels)
        table = metrics.table()
        echo(f"held-out jobs ({len(test)} frames):")
        echo(table)
        drawn = _draw(model, test, metrics, classes, pictures, echo) if pictures is not None else []
        result = DemoResult(
            losses=losses,
            miou=metrics.miou(),
            accuracy=metrics.accuracy(),
            table=table,
            seconds=time.perf_counter() - started,
            train_frames=len(train),
            test_frames=len(test),
            pictures=drawn,
        )
        client.close()
    echo(f"mIoU {result.miou:.3f} (chance ~{1 / len(classes):.3f}) in {result.seconds:.1f}s")
    return result


def _draw(
    model: nn.Module,
    test: PlaymentSegmentationDataset,
    metrics: SegmentationMetrics,
    classes: tuple[str, ...],
    folder: str | Path,
    echo: Callable[[str], None],
) -> list[Path]:
    """Truth | prediction | disagreement of the first held-out frame, and the confusion matrix, as PNGs."""
    try:
        from playment_torch.evaluation import render_confusion_matrix
        from playment_torch.viz import compare_bev
    except ImportError:
        return []
    try:
        import PIL  # noqa: F401 - the pictures need Pillow (the viz extra)
    except ImportError:
        echo("pictures skipped: pip install 'playment-torch[viz]' to draw them")
        return []
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sample = test[0]
    batch = collate_points([sample])
    with torch.no_grad():
        predicted = model(features(batch), batch.batch_index, 1).argmax(dim=1)
    frame = test.frames[0]
    picture = compare_bev(
        sample.points, sample.labels, predicted, classes=classes, ignore_index=test.ignore_index,
        ego_pose=sample.poses[0], extent=30.0, resolution=0.1,
    )  # fmt: skip
    frame_path, confusion_path = out / "demo-frame.png", out / "demo-confusion.png"
    picture.save(frame_path)
    render_confusion_matrix(metrics.confusion_matrix, classes, confusion_path)
    echo(f"pictures: {frame_path} (job {frame.job_id}, frame {frame.frame_id}: truth | prediction | disagreement)")
    echo(f"          {confusion_path} (held-out confusion matrix)")
    return [frame_path, confusion_path]
