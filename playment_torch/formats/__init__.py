"""Bytes to numpy: PCD point clouds in every encoding, and Playment segmentation masks."""

from __future__ import annotations

from playment_torch.formats.masks import encode_mask, read_mask
from playment_torch.formats.pcd import PCDHeader, PointCloud, encode_pcd, read_pcd, write_pcd

__all__ = ["PCDHeader", "PointCloud", "encode_mask", "encode_pcd", "read_mask", "read_pcd", "write_pcd"]
