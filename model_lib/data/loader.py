"""Batches straight from the packed store: images, gaze maps and labels.

The store keeps each split in one memory-mapped array, so a batch is one fancy-index read of
sorted rows: no per-image Python work and no worker processes, which is why the loader never
starves a training step (see bench/loader.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_lib.data.gaze_maps import load_gaze_maps
from model_lib.data.store import IMAGE_SCALE, PackedStore


@dataclass(frozen=True)
class SplitArrays:
    """One split for batching: images (N, H, W) uint16, maps (N, H, W) float16, labels (N,)."""

    images: np.ndarray
    maps: np.ndarray
    labels: np.ndarray
    dicom_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def open_split(store_dir: Path, maps_dir: Path, split: str) -> SplitArrays:
    """Memory-map one split of the store together with its gaze maps."""
    part = PackedStore.open(store_dir).split(split)
    maps = load_gaze_maps(maps_dir, split)
    if maps.shape != part.images.shape:
        raise ValueError(
            f"{maps_dir}/{split}: maps {maps.shape} do not match images {part.images.shape}"
        )
    return SplitArrays(
        images=part.images,
        maps=maps,
        labels=part.manifest["label"].to_numpy(np.int64),
        dicom_ids=tuple(part.manifest["dicom_id"]),
    )


class BatchLoader:
    """Iterate over a split in batches of dicts with tensors.

    ``image`` (B, 1, H, W) float32 in [0, 1]; ``saliency`` (B, 1, H, W) float32 summing to 1
    per image (the KL target); ``label`` (B,) int64; ``index`` (B,) rows of the split.
    Shuffling is reproducible: epoch ``e`` uses ``seed + e``.
    """

    def __init__(
        self,
        data: SplitArrays,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        in_memory: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if in_memory:
            # Small splits fit in RAM; reading them once avoids page faults on every epoch.
            data = SplitArrays(np.array(data.images), np.array(data.maps), data.labels,
                               data.dicom_ids)  # fmt: skip
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.rank, self.world_size = 0, 1

    def __len__(self) -> int:
        n, b = len(self.data), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def shard(self, rank: int, world_size: int) -> BatchLoader:
        """This loader for rank ``rank`` of ``world_size`` data-parallel processes.

        Every rank draws the same global order (``seed + epoch``) and takes its slice of each
        global batch of ``batch_size`` images: ``batch_size / world_size`` consecutive ones, so
        the ranks' batches are disjoint and together make the single-process batch. A short
        last batch is split as evenly as it goes: sizes differ by at most one, and a rank gets
        an empty batch when there are fewer images than ranks. Every rank sees the same number
        of batches, as a collective training step needs.

        Raises:
            ValueError: ``batch_size`` is not a multiple of ``world_size``, or ``rank`` is not
                in ``0..world_size - 1``.
        """
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if self.batch_size % world_size:
            raise ValueError(
                f"batch size {self.batch_size} does not split evenly over {world_size} "
                f"processes; use a multiple of {world_size}"
            )
        part = copy.copy(self)
        part.rank, part.world_size = rank, world_size
        return part

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.data)
        order = (
            np.random.default_rng(self.seed + self.epoch).permutation(n)
            if self.shuffle
            else np.arange(n)
        )
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            rows = order[start : start + self.batch_size]
            if self.world_size > 1:
                rows = np.array_split(rows, self.world_size)[self.rank]
            yield self.batch(rows)

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        rows = np.sort(np.asarray(rows))
        images = torch.from_numpy(self.data.images[rows].astype(np.float32) / IMAGE_SCALE)
        maps = torch.from_numpy(self.data.maps[rows].astype(np.float32))
        maps = maps / maps.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        return {
            "image": images.unsqueeze(1),
            "saliency": maps.unsqueeze(1),
            "label": torch.from_numpy(self.data.labels[rows]),
            "index": torch.from_numpy(rows),
        }
