"""Per-step overhead of optsample's samplers against the matching diffusers scheduler loop.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler_overhead.py [--steps 20 --repeats 7 --profile]``

Model: the exact denoiser of one Gaussian N(mu, diag(v)) in 64 dims,
D(x; sigma) = mu + v / (v + sigma^2) (x - mu) (the posterior mean, Tweedie's formula), batch 256,
float32. diffusers sees it as a discrete eps network through
``optsample.models.DenoiserAsDiscreteEps`` on Stable Diffusion's alphas_cumprod; optsample sees the
same eps network through ``DiscreteVPDenoiser`` (so both loops compute the same thing, and the
script prints how far apart their outputs are), and also the denoiser directly (the EDM-style use).

The time spent inside the timed model call is measured separately and subtracted from both loops,
so what remains is the scheduler / sampler overhead alone. For the "VP-wrapped" optsample column,
the timed call is the same eps network diffusers calls, so the wrapper's sigma <-> t conversion
counts as optsample overhead (the strictest comparison). Each configuration is run ``--repeats``
times after one warm-up; the table shows medians. Sigmas are computed before timing for optsample;
diffusers' ``set_timesteps`` is timed inside its loop (reported separately below the table).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from diffusers import (
    DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, UniPCMultistepScheduler,
)

import optsample
from optsample import schedules
from optsample.models import DenoiserAsDiscreteEps, DiscreteVPDenoiser

BATCH, DIM = 256, 64
# Stable Diffusion's discrete VP schedule (as tests/helpers.py).
SCHEDULER_KWARGS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

# optsample sampler -> (diffusers scheduler class, its extra config)
PAIRS = {
    "euler": (EulerDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, dict(solver_order=2, algorithm_type="dpmsolver++")),
    "unipc": (UniPCMultistepScheduler, dict(solver_order=2, solver_type="bh2", predict_x0=True)),
}
# Schedulers whose sample lives in VP coordinates x_t = x / sqrt(sigma^2 + 1) (init_noise_sigma = 1).
VP_SAMPLE = {"dpmpp_2m", "unipc"}


class GaussianDenoiser:
    """Exact denoiser of N(mu, diag(v)): D = mu + v / (v + sigma^2) (x - mu) (Tweedie's formula)."""

    def __init__(self, dim: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(dim, generator=g)
        self.var = torch.rand(dim, generator=g) + 0.5

    def __call__(self, x, sigma, **extra):
        sigma2 = sigma.to(x.dtype).reshape(-1, 1) ** 2
        return self.mu + self.var / (self.var + sigma2) * (x - self.mu)


class Timed:
    """Wraps a callable and accumulates the wall time spent inside it."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out

    def reset(self):
        self.seconds, self.calls = 0.0, 0


def make_scheduler(name: str):
    cls, extra = PAIRS[name]
    return cls(**SCHEDULER_KWARGS, **extra)


def diffusers_loop(scheduler, eps_net: Timed, noise: torch.Tensor, n_steps: int):
    """The standard diffusers denoising loop (set_timesteps included); returns (x, seconds)."""
    start = time.perf_counter()
    scheduler.set_timesteps(n_steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(eps_net(model_input, t), t, x).prev_sample
    return x, time.perf_counter() - start


def optsample_start(name: str, scheduler, noise: torch.Tensor, sigma_0: float) -> torch.Tensor:
    """diffusers' starting point in VE coordinates: Euler / Heun start at noise * init_noise_sigma; the VP
    multistep schedulers at unit noise x_t, i.e. x = x_t sqrt(sigma_0^2 + 1) (Karras et al. 2022, Table 1)."""
    scale = (sigma_0**2 + 1) ** 0.5 if name in VP_SAMPLE else float(scheduler.init_noise_sigma)
    return noise * scale


def optsample_loop(name: str, model, x_start: torch.Tensor, sigmas: torch.Tensor):
    start = time.perf_counter()
    x = optsample.sample(name, model, x_start, sigmas)
    return x, time.perf_counter() - start


def overhead_us_per_step(runs: dict, timers: dict, n_steps: int, repeats: int):
    """Median over repeats of (loop time - time inside the model) / steps, in microseconds, per run.

    The runs are interleaved (one of each per repeat) so that load from other processes hits them alike.
    """
    outs = {key: run()[0] for key, run in runs.items()}  # warm-up
    samples = {key: [] for key in runs}
    calls = {}
    for _ in range(repeats):
        for key, run in runs.items():
            timers[key].reset()
            outs[key], seconds = run()
            samples[key].append((seconds - timers[key].seconds) / n_steps * 1e6)
            calls[key] = timers[key].calls
    return {key: statistics.median(values) for key, values in samples.items()}, outs, calls


def optsample_sigmas(name: str, n_steps: int) -> torch.Tensor:
    """The sigmas diffusers' scheduler uses (Heun: its underlying Euler sigmas), so outputs can be compared."""
    scheduler = EulerDiscreteScheduler(**SCHEDULER_KWARGS) if name == "heun" else make_scheduler(name)
    scheduler.set_timesteps(n_steps)
    return scheduler.sigmas.to(torch.float32)


def bench(name: str, n_steps: int, repeats: int):
    scheduler = make_scheduler(name)
    scheduler.set_timesteps(n_steps)
    alphas_cumprod = scheduler.alphas_cumprod
    gaussian = GaussianDenoiser(DIM)
    eps_net = Timed(DenoiserAsDiscreteEps(gaussian, alphas_cumprod))
    wrapped = DiscreteVPDenoiser(eps_net, alphas_cumprod)
    direct = Timed(gaussian)
    noise = optsample.initial_noise(range(BATCH), (DIM,), dtype=torch.float32)
    sigmas = optsample_sigmas(name, n_steps)

    x_start = optsample_start(name, scheduler, noise, float(sigmas[0]))
    runs = {
        "diffusers": lambda: diffusers_loop(scheduler, eps_net, noise, n_steps),
        "wrapped": lambda: optsample_loop(name, wrapped, x_start, sigmas),
        "direct": lambda: optsample_loop(name, direct, x_start, sigmas),
    }
    us, outs, calls = overhead_us_per_step(runs, {"diffusers": eps_net, "wrapped": eps_net, "direct": direct},
                                           n_steps, repeats)
    return dict(name=name, **us, nfe=(calls["wrapped"], calls["diffusers"]),
                diff=float((outs["wrapped"] - outs["diffusers"]).abs().max()))


def setup_costs(n_steps: int, repeats: int):
    """us per call of diffusers' set_timesteps and of optsample.schedules.discrete."""
    scheduler = make_scheduler("euler")

    def per_call(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e6)
        return statistics.median(times)

    return (per_call(lambda: scheduler.set_timesteps(n_steps)),
            per_call(lambda: schedules.discrete(scheduler.alphas_cumprod, n_steps)))


def core_costs(repeats: int) -> dict:
    """us per call of the pieces of optsample.samplers.core a step pays for, on a batch-size tensor."""
    from optsample.samplers import core, registry

    x = torch.randn(BATCH, DIM)
    model = GaussianDenoiser(DIM)
    sigma = torch.full((BATCH,), 3.0)
    sigmas = schedules.karras(20, 0.03, 14.6)

    def per_call(fn, number=200):
        fn()
        return min(time.perf_counter() - t0 for t0 in _timed_loop(fn, number, repeats)) / number * 1e6

    return {
        "model alone": per_call(lambda: model(x, sigma)),
        "Denoiser call (check_finite=False)": per_call(lambda: core.Denoiser(model, check_finite=False)(x, 3.0)),
        "Denoiser call (check_finite=True)": per_call(lambda: core.Denoiser(model)(x, 3.0)),
        "  of which isfinite(d).all()": per_call(lambda: bool(torch.isfinite(x).all())),
        "  aminmax alternative": per_call(lambda: all(map(math.isfinite, map(float, torch.aminmax(x))))),
        "sample() entry: make_params": per_call(lambda: registry.get("heun").make_params()),
        "sample() entry: check_sigmas": per_call(lambda: core.check_sigmas(sigmas, x)),
    }


def _timed_loop(fn, number: int, repeats: int):
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        yield t0


def profile(name: str, n_steps: int):
    """cProfile of one optsample run with the direct model: where the per-step time goes."""
    import cProfile
    import pstats

    gaussian = GaussianDenoiser(DIM)
    noise = optsample.initial_noise(range(BATCH), (DIM,), dtype=torch.float32)
    sigmas = optsample_sigmas(name, n_steps)
    optsample_loop(name, gaussian, noise, sigmas)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(20):
        optsample_loop(name, gaussian, noise, sigmas)
    profiler.disable()
    print(f"\n--- cProfile: 20 x optsample {name}, {n_steps} steps, direct model (tottime, top 15) ---")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of each optsample sampler")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registered = set(optsample.available())

    print(f"batch {BATCH} x {DIM} float32, {args.steps} steps, median of {args.repeats}, torch threads {args.threads}")
    print("overhead = loop time - time inside the model, per step (us)\n")
    header = f"{'sampler':<10} {'optsample':>10} {'optsample':>11} {'diffusers':>10} {'ratio':>7} {'ratio':>8} {'NFE':>9} {'max|diff|':>10}"
    print(header)
    print(f"{'':<10} {'(direct)':>10} {'(VP wrap)':>11} {'':>10} {'direct':>7} {'VP wrap':>8} {'ours/dif':>9} {'(VP wrap)':>10}")
    for name in PAIRS:
        if name not in registered:
            print(f"{name:<10} not registered")
            continue
        r = bench(name, args.steps, args.repeats)
        print(f"{name:<10} {r['direct']:>10.1f} {r['wrapped']:>11.1f} {r['diffusers']:>10.1f} "
              f"{r['direct'] / r['diffusers']:>7.2f} {r['wrapped'] / r['diffusers']:>8.2f} "
              f"{r['nfe'][0]:>4}/{r['nfe'][1]:<4} {r['diff']:>10.2e}")
    set_timesteps_us, discrete_us = setup_costs(args.steps, args.repeats)
    print(f"\nper call: diffusers set_timesteps {set_timesteps_us:.0f} us (inside its loop above); "
          f"optsample.schedules.discrete {discrete_us:.0f} us (not inside the optsample loop)")
    print("\nper call, min over repeats (us):")
    for piece, us in core_costs(args.repeats).items():
        print(f"  {piece:<38} {us:8.1f}")
    if args.profile:
        for name in PAIRS:
            if name in registered:
                profile(name, args.steps)


if __name__ == "__main__":
    main()
