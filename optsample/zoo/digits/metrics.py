"""FID-digits and class accuracy: the shipped classifier as a feature net and as a metric.

- Feature net "digits" (:func:`optsample.metrics.register_feature_net`): the classifier's 64-dim
  penultimate activations (the role Inception-v3's pool layer plays in FID, Heusel et al. 2017).
- Metric "accuracy" (higher is better): the fraction of samples the classifier assigns to their
  conditioning label ``MetricContext.labels``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...metrics import (
    Batch, MetricContext, NotApplicable, Statistic, available, available_feature_nets, register_feature_net,
    register_statistic,
)
from .checkpoints import shipped_classifier


class ClassifierFeatures(nn.Module):
    """Images [N, 1, 8, 8] in [-1, 1] -> the classifier's penultimate features [N, 64]."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


def digits_feature_net(device: torch.device) -> nn.Module:
    return ClassifierFeatures(shipped_classifier()).to(device).eval()


def _check(samples: torch.Tensor, labels) -> torch.Tensor:
    if labels is None:
        raise NotApplicable("metric 'accuracy' needs per-sample class labels (MetricContext.labels): "
                            "use a class-conditional model such as model=digits")
    if samples.ndim != 4 or tuple(samples.shape[1:]) != (1, 8, 8):
        raise NotApplicable(f"metric 'accuracy' applies to 1x8x8 digit images, got shape {tuple(samples.shape)}")
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    if labels.shape[0] != samples.shape[0]:
        raise ValueError(f"metric 'accuracy': {labels.shape[0]} labels for {samples.shape[0]} samples")
    return labels


def correct_count(samples: torch.Tensor, labels) -> int:
    """Number of samples the shipped digits classifier assigns to their conditioning label."""
    labels = _check(samples, labels)
    classifier = shipped_classifier()
    with torch.no_grad():
        predicted = torch.cat([classifier(chunk.cpu().float()).argmax(1) for chunk in samples.split(1024)])
    return int((predicted == labels).sum())


def class_accuracy(samples: torch.Tensor, ctx: MetricContext) -> float:
    """Fraction of samples the shipped digits classifier assigns to their conditioning label."""
    return correct_count(samples, ctx.labels) / samples.shape[0]


class ClassAccuracy(Statistic):
    """Fraction of samples the shipped digits classifier assigns to their conditioning label (state:
    the counts of correct and of all samples)."""

    def update(self, samples: torch.Tensor, batch: Batch) -> None:
        self.add("correct", torch.tensor(float(correct_count(samples, batch.labels))))
        self.add("count", torch.tensor(float(samples.shape[0])))

    def compute(self) -> float:
        return float(self.sums["correct"] / self.sums["count"])


def register() -> None:
    """Idempotent: add feature net "digits" and metric "accuracy" (once per process)."""
    if "digits" not in available_feature_nets():
        register_feature_net("digits", digits_feature_net)
    if "accuracy" not in available():
        register_statistic("accuracy", higher_is_better=True)(ClassAccuracy)
