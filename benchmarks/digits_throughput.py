"""The embedded default's numbers (printed, not asserted):

1. Samples per second of the shipped digits model (guidance 1.5, i.e. 2B rows per call) at NFE 10:
   optsample's ``euler`` loop against diffusers' ``EulerDiscreteScheduler`` given the same sigmas through
   ``set_timesteps(sigmas=...)`` (diffusers 0.42's DPMSolverMultistepScheduler takes no ``sigmas``), the network seen as an eps model by
   :class:`optsample.models.DenoiserAsDiscreteEps`. Also the largest difference of the outputs.
2. FID-digits of the data's two halves against each other (train vs held-out split, and two random
   halves of all data): the floor that sampler FIDs are read against.
3. Wall time and peak memory (max RSS, resource.getrusage) of ``optsample-study --tiny`` in a subprocess.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/digits_throughput.py [--n 1000] [--repeats 5] [--skip-study]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time

import torch

from optsample import metrics
from optsample.zoo.digits import GuidedDenoiser, data, load_denoiser
from optsample.models import DenoiserAsDiscreteEps
from optsample.samplers import initial_noise, sample
from optsample.zoo.digits import digits_metric_args

SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def diffusers_loop(scheduler, eps_net, x_t, labels):
    """The standard diffusers loop (scale_model_input, eps, step); x_t already scaled by init_noise_sigma."""
    x = x_t
    for t in scheduler.timesteps:
        x = scheduler.step(eps_net(scheduler.scale_model_input(x, t), t, class_labels=labels), t, x).prev_sample
    return x


def throughput(n: int, repeats: int) -> None:
    from diffusers import EulerDiscreteScheduler

    model = GuidedDenoiser(load_denoiser(), guidance=1.5)
    labels = torch.arange(n) % 10
    pairs = {
        "euler": (EulerDiscreteScheduler, {}),
    }
    print(f"1. samples/s at NFE 10, batch {n}, guidance 1.5 (median of {repeats}; 1 thread)")
    print(f"{'sampler':10s} {'optsample':>10s} {'diffusers':>10s} {'ratio':>6s} {'max|diff|':>10s}")
    for name, (cls, extra) in pairs.items():
        scheduler = cls(**SD_SCHEDULE, **extra)
        scheduler.set_timesteps(10)  # the discrete schedule's sigmas, then handed back as custom sigmas
        sigmas_list = scheduler.sigmas[:-1].tolist()
        eps_net = DenoiserAsDiscreteEps(model, scheduler.alphas_cumprod)
        noise = initial_noise(list(range(n)), (1, 8, 8))
        times = {"optsample": [], "diffusers": []}
        outs = {}
        for _ in range(repeats):
            scheduler = cls(**SD_SCHEDULE, **extra)
            t0 = time.perf_counter()
            scheduler.set_timesteps(sigmas=sigmas_list)
            with torch.no_grad():
                outs["diffusers"] = diffusers_loop(scheduler, eps_net, noise * scheduler.init_noise_sigma, labels)
            times["diffusers"].append(time.perf_counter() - t0)
            sigmas = scheduler.sigmas.to(torch.float32)
            start = noise * scheduler.init_noise_sigma  # diffusers' Euler works in VE coordinates, as optsample does
            t0 = time.perf_counter()
            with torch.no_grad():
                out = sample(name, model, start, sigmas, extra_args={"class_labels": labels})
            times["optsample"].append(time.perf_counter() - t0)
            outs["optsample"] = out
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        diff = float((outs["optsample"] - outs["diffusers"]).abs().max())
        print(f"{name:10s} {n / med['optsample']:10.0f} {n / med['diffusers']:10.0f} "
              f"{med['diffusers'] / med['optsample']:6.2f} {diff:10.2e}")


def fid_floor() -> None:
    ctx = metrics.MetricContext(model=None, **digits_metric_args())
    train_x, _ = data.load("train")
    all_x, _ = data.load("all")
    order = torch.randperm(len(all_x), generator=torch.Generator().manual_seed(0))
    half_a, half_b = all_x[order[: len(all_x) // 2]], all_x[order[len(all_x) // 2:]]
    from optsample.metrics.features import extract_features, feature_net
    from optsample.metrics.image import frechet_distance, kernel_distance

    net = feature_net("digits")
    print("2. FID-digits floor (features: the shipped classifier's 64-dim penultimate layer)")
    for n in (450, 1000, 1347):
        value = metrics.compute(["fid", "kid"], train_x[:n], ctx)
        print(f"   train[:{n}] vs held-out (450): FID {value['fid']:.3f}  KID {value['kid']:.5f}")
    fa, fb = extract_features(half_a, net), extract_features(half_b, net)
    print(f"   random halves of all 1797 ({len(half_a)} vs {len(half_b)}): FID {frechet_distance(fa, fb):.3f}  "
          f"KID {kernel_distance(fa, fb):.5f}")


def study_cost() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "optsample.runner.study", "--tiny", "--runs-dir", f"{tmp}/runs", "--out", f"{tmp}/out",
               "--logger", "none"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"3. optsample-study --tiny: wall {wall:.1f} s, peak RSS {peak:.0f} MB (target < 2048 MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-study", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    throughput(args.n, args.repeats)
    fid_floor()
    if not args.skip_study:
        study_cost()


if __name__ == "__main__":
    main()
