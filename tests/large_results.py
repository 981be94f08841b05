"""Job results shaped like a real LiDAR project's, fast to generate, with no files behind them.

Construction never downloads a frame, so scale tests and ``benchmarks/bench_scale.py`` need only the results:
``frames`` frames a job, ``keys`` per-instance label keys a frame (one annotation per key and frame, as
Playment writes them), two cameras, Playment-hosted URLs. 50 frames x 83 keys is ~1.35 MiB of JSON a job.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from playment_torch.testing.server import PLAYMENT_STORAGE, FakePlaymentServer

CLASSES = ("building", "car", "pedestrian", "pole", "road", "sidewalk", "vegetation")
_JOB = "00000000-0000-4000-8000-00000000j0b0"


def _pose(x: float) -> dict[str, Any]:
    return {"heading": {"w": 1.0, "x": 0.0, "y": 0.0, "z": 0.0}, "position": {"x": x, "y": 0.0, "z": 0.0}}


def result_template(frames: int = 50, keys: int = 83, *, classes: tuple[str, ...] = CLASSES) -> str:
    """One result as JSON text, with a placeholder where the job id goes (see :func:`large_result`)."""
    ids = iter(uuid.UUID(int=n, version=4) for n in range(1, 10**9))
    tracks = [str(next(ids)) for _ in range(keys)]
    cameras = [
        {
            "id": f"cam-{name}",
            "name": name,
            "modality": "camera",
            "primary_view": False,
            "intrinsics": {"fx": 1200.0, "fy": 1200.0, "cx": 960.0, "cy": 600.0},
            "camera_model": "brown_conrady",
        }
        for name in ("front", "rear")
    ]
    lidar = {"id": "lidar", "name": "lidar", "modality": "lidar", "primary_view": True}
    annotations, masks, sensor_frames = [], [], []
    for f in range(frames):
        frame_id = str(f)
        masks.append(
            {
                "_id": str(next(ids)),
                "frame_id": frame_id,
                "label_url": f"{PLAYMENT_STORAGE}/{_JOB}/masks/{frame_id}.json",
                "sensor_id": "lidar",
                "type": "segmentation3d",
                "url": "",
            }
        )
        for k in range(keys):
            label = classes[k % len(classes)]
            annotations.append(
                {
                    "_id": str(next(ids)),
                    "_isStationary": k % 2 == 0,
                    "attributes": {},
                    "class_id": f"class-{label}",
                    "color": "#4a90e2",
                    "frame_id": frame_id,
                    "grouping_config": None,
                    "label": label,
                    "label_key": k + 1,
                    "sensor_id": "lidar",
                    "text": label,
                    "track_id": tracks[k],
                    "type": "segmentation3d",
                }
            )
        pcd = f"{PLAYMENT_STORAGE}/{_JOB}/lidar/{f:06d}.pcd"
        sensors = [{"sensor_id": "lidar", "data_url": pcd, "original_url": pcd, "sensor_pose": _pose(0.5 * f)}]
        for camera in cameras:
            image = f"{PLAYMENT_STORAGE}/{_JOB}/{camera['name']}/{f:06d}.jpg"
            sensors.append(
                {"sensor_id": camera["name"], "data_url": image, "original_url": image, "sensor_pose": _pose(0.5 * f)}
            )
        sensor_frames.append({"ego_pose": _pose(0.5 * f), "frame_id": frame_id, "sensors": sensors})
    result = {
        "annotation_data": {
            "annotations": annotations,
            "frames": [{"_id": str(f)} for f in range(frames)],
            "groups": None,
            "masks": masks,
            "sensors": [{"sensor_id": "lidar", "sensor_type": "LIDAR"}],
            "tracks": [{"_id": t, "label": classes[k % len(classes)]} for k, t in enumerate(tracks)],
        },
        "sensor_data": {"frames": sensor_frames, "sensor_meta": [*cameras, lidar]},
    }
    return json.dumps(result)


def large_result(template: str, job_id: str) -> dict[str, Any]:
    """The template's result for ``job_id`` (its URLs name the job, so every job's files are distinct)."""
    return json.loads(template.replace(_JOB, job_id))  # type: ignore[no-any-return]


def add_large_jobs(
    server: FakePlaymentServer, n_jobs: int, *, frames: int = 50, keys: int = 83, seed: int = 0, batches: int = 1
) -> list[str]:
    """Add ``n_jobs`` completed jobs with generated results (round-robin over ``batches`` new batches).

    Returns:
        The job ids, sorted (the dataset's order).
    """
    template = result_template(frames, keys)
    batch_ids = [server.add_batch(f"batch {b}") for b in range(batches)]
    ids = job_ids(n_jobs, seed=seed)
    for n, job_id in enumerate(ids):
        server.add_job(large_result(template, job_id), job_id=job_id, batch_id=batch_ids[n % batches])
    return sorted(ids)


def job_ids(n_jobs: int, *, seed: int = 0) -> list[str]:
    """The ids :func:`add_large_jobs` gives its jobs, in the order it adds them."""
    return [str(uuid.UUID(int=(seed << 64) + n + 1, version=4)) for n in range(n_jobs)]


def large_result_bytes(template: str, job_id: str) -> bytes:
    """The template's result for ``job_id`` as the file's bytes (what the server would send)."""
    return template.replace(_JOB, job_id).encode()
