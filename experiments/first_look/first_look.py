"""First look: optimizer-inspired update rules vs classic solvers on an analytic model.

64-dimensional, 8-component Gaussian mixture (float64), Karras schedule (sigma_min 0.002, sigma_max 80,
rho 7), RMSE to the high-accuracy reference ODE solution at NFE 5, 10, 20. NFE is what
``sample(..., return_info=True)`` reports; for samplers with several evaluations per step the step count
is the largest whose NFE does not exceed the target (the real NFE is printed). Samplers not registered
(yet) are skipped. Run: ``.venv/bin/python experiments/first_look/first_look.py``.
"""

from __future__ import annotations

import torch

import optsample
from optsample import reference, schedules
from optsample.models import GaussianMixture
from optsample.samplers.core import steps_for_nfe

NFES = (5, 10, 20)
BATCH = 256
CLASSIC = [("euler", {}), ("heun", {}), ("lms", {}), ("dpmpp_2m", {}), ("unipc", {})]
# ema_x0 is momentum (a proven identity, tests/test_rules.py) and plms_momentum at beta 0 is ghvb of the same
# integer order (bitwise): listed once each, so no number appears twice under two names.
RULES = ["sgd", "momentum", "nesterov", "ghvb", "plms_momentum", "dpmpp_2m_momentum", "unipc_momentum", "adam", "rmsprop", "lion",
         "eps_scaling"]
VARIANTS = [  # the calibration points of the issue, and the consistent alternatives
    ("momentum", {"beta": 0.5}), ("momentum", {"beta": 0.8}),
    ("nesterov", {"lookahead_sigma": "same"}),
    ("adam", {"rescale": "unit"}), ("adam", {"rescale": "none"}),
    ("ghvb", {"order": 2.0}), ("ghvb", {"order": 2.5}), ("ghvb", {"order": 3.0}), ("ghvb", {"order": 4.0}),
    ("dpmpp_2m_momentum", {"beta": 0.0}),
    ("eps_scaling", {"scale": 1.0, "slope": 0.02}),
    ("sgd", {"lr_schedule": "cosine", "lr_start": 1.1, "lr_end": 0.9}),
]


def rmse_at(name, hparams, nfe, model, x, x_ref):
    n_steps = steps_for_nfe(name, nfe, **hparams)
    sigmas = schedules.karras(n_steps, 0.002, 80.0, 7.0)
    out, info = optsample.sample(name, model, x, sigmas, seeds=range(x.shape[0]), return_info=True, **hparams)
    return reference.rmse(out, x_ref), info.nfe


def main():
    torch.set_num_threads(1)
    model = GaussianMixture.random(64, 8, seed=0)
    x = optsample.initial_noise(range(BATCH), (64,), dtype=torch.float64) * 80.0
    x_ref = reference.solve(model, x, 80.0, 0.0, rtol=1e-10, atol=1e-10)
    rows = [(n, {}) for n, _ in CLASSIC] + [(n, {}) for n in RULES] + VARIANTS
    print("| sampler | hyper-parameters | " + " | ".join(f"NFE {n}" for n in NFES) + " |")
    print("|---|---|" + "---|" * len(NFES))
    for name, hparams in rows:
        if name not in optsample.available():
            print(f"| {name} | (not registered, skipped) |" + " |" * len(NFES))
            continue
        cells = []
        for nfe in NFES:
            err, real_nfe = rmse_at(name, hparams, nfe, model, x, x_ref)
            cells.append(f"{err:.3g}" + ("" if real_nfe == nfe else f" (NFE {real_nfe})"))
        label = ", ".join(f"{k}={v}" for k, v in hparams.items()) or "defaults"
        print(f"| {name} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
