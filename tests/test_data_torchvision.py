"""glmip.data with torchvision v2 augmentation (the integration stage, where torchvision imports): a crop and
flip pipeline as `Dataset(transform=)`, in DataLoader workers, gives (batch, labels) of the cropped size, equal
to the same transform applied by hand and tokenized in this process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import glmip
from glmip.data import Collate, Dataset, Tokenizer

v2 = pytest.importorskip("torchvision.transforms.v2", reason="torchvision (the integration venv) is not installed")

BUDGET, PATCH = 10, 8


def test_torchvision_v2_transforms_work(ctx):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (30 + 4 * i, 41 - 2 * i, 3), dtype=np.uint8) for i in range(3)]
    augment = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.CenterCrop((24, 32))])
    loader = torch.utils.data.DataLoader(Dataset(list(zip(images, [0, 1, 2], strict=True)), transform=augment),
                                         batch_size=3, num_workers=2, collate_fn=Collate(Tokenizer(BUDGET, PATCH)),
                                         timeout=120)
    (batch, labels), = list(loader)
    assert list(batch.image_sizes) == [(32, 24)] * 3 and labels.tolist() == [0, 1, 2]
    by_hand = [augment(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy() for image in images]
    assert torch.equal(batch.tokens, glmip.tokenize([np.ascontiguousarray(a) for a in by_hand], None, BUDGET,
                                                    PATCH).tokens)
    random_crop = v2.RandomResizedCrop((16, 20), antialias=True)  # random ops run too; their sizes are fixed
    batch, _ = Collate(Tokenizer(BUDGET, PATCH))([Dataset([(images[0], 0)], transform=random_crop)[0]])
    assert list(batch.image_sizes) == [(20, 16)]
