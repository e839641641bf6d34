"""scikit-learn's bundled digits (1,797 8x8 images, 10 classes, no download) as diffusion training data.

Pixels 0..16 are scaled to [-1, 1] (x / 8 - 1), images are [N, 1, 8, 8]. A fixed, stratified split
holds out :data:`HELD_OUT` images (``train_test_split(random_state=SPLIT_SEED, stratify=labels)``):
the diffusion model and the classifier train on the rest, FID-digits compares samples with the held-out part.
"""

from __future__ import annotations

import functools

import torch

SPLIT_SEED = 0
HELD_OUT = 450  # 25% of 1,797: enough for a 64-dim feature covariance (FID needs N > F)
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
SPLITS = ("train", "heldout", "all")


@functools.lru_cache(maxsize=1)
def _load() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).reshape(-1, *IMAGE_SHAPE) / 8 - 1
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


@functools.lru_cache(maxsize=1)
def _split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.model_selection import train_test_split

    _, labels = _load()
    index = list(range(len(labels)))
    train, held = train_test_split(index, test_size=HELD_OUT, random_state=SPLIT_SEED, stratify=labels.numpy())
    return torch.as_tensor(sorted(train)), torch.as_tensor(sorted(held))


def load(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 1, 8, 8] float32 in [-1, 1], labels [N] long) of ``split``: train | heldout | all."""
    if split not in SPLITS:
        raise ValueError(f"digits split {split!r} is not one of {list(SPLITS)}")
    images, labels = _load()
    if split == "all":
        return images.clone(), labels.clone()
    index = _split_indices()[0 if split == "train" else 1]
    return images[index], labels[index]


def sigma_data() -> float:
    """The pixel standard deviation of the train split (EDM's sigma_data, Karras et al. 2022, sec. 5)."""
    return float(load("train")[0].std())
