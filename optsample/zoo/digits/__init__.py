"""The embedded default: a small class-conditional diffusion model of scikit-learn's digits, shipped with
its weights (optsample/zoo/digits/assets/), and the digit classifier behind FID-digits and the "accuracy" metric.

    from optsample.zoo.digits import load_denoiser, GuidedDenoiser
    model = GuidedDenoiser(load_denoiser(), guidance=2.0)    # D(x, sigma, class_labels=...)

Importing this package registers feature net "digits" and metric "accuracy" (optsample.metrics).
Retrain the weights with ``optsample-train install=true`` (optsample/zoo/digits/train.py).
"""

from . import data
from .checkpoints import load_classifier, load_denoiser, load_judge, provenance, shipped_classifier, shipped_judge
from .guidance import GuidedDenoiser
from .metrics import register as _register_metrics
from .nets import NULL_CLASS, DigitsClassifier, DigitsJudge, DigitsUNet

_register_metrics()

__all__ = [
    "NULL_CLASS", "DigitsClassifier", "DigitsJudge", "DigitsUNet", "GuidedDenoiser", "data", "load_classifier",
    "load_denoiser", "load_judge", "provenance", "shipped_classifier", "shipped_judge",
]
