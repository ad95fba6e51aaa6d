from __future__ import annotations

import numpy as np
import pytest
import torch

from model_lib.data.loader import BatchLoader, SplitArrays
from model_lib.data.store import IMAGE_SCALE


def arrays(n: int = 10, hw: tuple[int, int] = (12, 9)) -> SplitArrays:
    rng = np.random.default_rng(0)
    maps = rng.random((n, *hw)).astype(np.float16)
    return SplitArrays(
        images=rng.integers(0, IMAGE_SCALE + 1, (n, *hw), dtype=np.uint16),
        maps=maps,
        labels=rng.integers(0, 3, n),
        dicom_ids=tuple(f"id{i}" for i in range(n)),
    )


def test_batches_cover_the_split_once_with_the_right_values() -> None:
    data = arrays()
    loader = BatchLoader(data, batch_size=4)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    rows = torch.cat([b["index"] for b in batches]).numpy()
    assert sorted(rows) == list(range(10))
    first = batches[0]
    assert first["image"].shape == (4, 1, 12, 9) and first["image"].dtype == torch.float32
    i = int(first["index"][1])
    np.testing.assert_allclose(first["image"][1, 0].numpy(), data.images[i] / IMAGE_SCALE)
    assert first["label"][1] == data.labels[i]
    np.testing.assert_allclose(first["saliency"].sum(dim=(1, 2, 3)).numpy(), 1.0, rtol=1e-5)


def test_shuffle_is_reproducible_per_epoch_and_drop_last() -> None:
    loader = BatchLoader(arrays(), batch_size=3, shuffle=True, seed=7, drop_last=True)
    assert len(loader) == 3

    def order(epoch: int) -> list[int]:
        loader.set_epoch(epoch)
        return torch.cat([b["index"] for b in loader]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert len(order(2)) == 9


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(arrays(), batch_size=0)
