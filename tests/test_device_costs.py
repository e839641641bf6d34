"""What an accelerator run costs that the CPU can show (issue 9, item 4).

There is no GPU here, so the accelerator code paths are taken on CPU tensors by patching
``optsample.samplers.core.on_host`` (the one predicate that chooses between the CPU fast paths, which read
tensor values in python, and the accelerator paths, which must not) to say "not on the host". What is
then checked is what a CUDA run would do: which tensors the deferred non-finite check keeps, and how many
python reads of tensor values (each a device synchronisation on CUDA) happen per model evaluation.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import optsample
import optsample.models.wrappers as wrappers
import optsample.samplers.core as core
from optsample.models import DiscreteVPDenoiser
from optsample.samplers import NonFiniteError
from helpers import SCHEDULER_KWARGS

ALPHAS_CUMPROD = torch.cumprod(1 - torch.linspace(SCHEDULER_KWARGS["beta_start"] ** 0.5,
                                                  SCHEDULER_KWARGS["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2, 0)


@pytest.fixture
def accelerator_paths(monkeypatch):
    """Every tensor counts as not on the host: the code takes the paths it takes on CUDA."""
    monkeypatch.setattr(core, "on_host", lambda tensor: False)
    monkeypatch.setattr(wrappers, "on_host", lambda tensor: False)


# Python reads of a tensor's values: on CUDA each one waits for the device.
HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """A counter of HOST_READS calls on any tensor, however reached (float(t), bool(t), t.item(), ...)."""
    count = [0]
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            count[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return count


class KeptOutputs:
    """A model whose outputs are watched through weak references (alive = someone still holds them)."""

    def __init__(self, nan_at: int | None = None):
        self.refs: list[weakref.ref] = []
        self.nan_at = nan_at

    def __call__(self, x, sigma):
        denoised = x / (1 + sigma[:, None] ** 2)
        if self.nan_at is not None and len(self.refs) == self.nan_at:
            denoised[1, 0] = float("nan")
        self.refs.append(weakref.ref(denoised))
        return denoised


def test_deferred_check_keeps_no_denoised_tensor(accelerator_paths):
    model = KeptOutputs()
    denoiser = core.Denoiser(model)
    x = torch.randn(4, 8)
    for _ in range(10):
        denoiser(x, 1.5)  # output dropped at once
    gc.collect()
    # old code kept (flags, step, sigma, nfe, denoised) for each of up to 64 evaluations: 10 alive here
    assert len(denoiser._pending) == 10
    assert sum(ref() is not None for ref in model.refs) == 0
    denoiser.raise_if_non_finite()  # all finite: no error, nothing pending
    assert denoiser._pending == []


def test_deferred_check_still_names_step_sigma_nfe_and_sample(accelerator_paths):
    model = KeptOutputs(nan_at=2)
    sigmas = torch.linspace(3.0, 0.0, 6, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match=r"at step 2 \(sigma=1\.8, NFE 3\) for batch item\(s\) \[1\]"):
        optsample.sample("euler", model, torch.randn(3, 8) * 3, sigmas)
    gc.collect()
    assert sum(ref() is not None for ref in model.refs) == 0


def vp_model():
    """A DiscreteVPDenoiser around an eps net that reads no tensor values itself."""
    return DiscreteVPDenoiser(lambda x_t, t: 0.1 * x_t + 1e-4 * t[:, None], ALPHAS_CUMPROD)


SYNC_CASES = [("euler", {}), ("heun", {}), ("dpmpp_2m", {}), ("unipc", {"order": 3}), ("momentum", {}),
              ("euler_ancestral", {})]


@pytest.mark.parametrize("name, hparams", SYNC_CASES)
def test_no_host_reads_per_evaluation_on_an_accelerator(name, hparams, accelerator_paths, host_reads):
    """Host reads of a 5-step and a 20-step run are equal: set-up reads (the sigma list, the base seed)
    happen once per call, none per evaluation. Old code read sigma twice per evaluation in
    DiscreteVPDenoiser.sigma_to_t (float(sigma[0]), bool((sigma == first).all())): +30 or more for heun."""
    model = vp_model()
    counts, nfes = [], []
    for n_steps in (5, 20):
        sigmas = torch.linspace(10.0, 0.0, n_steps + 1, dtype=torch.float64)
        x = optsample.initial_noise(range(4), (8,)) * 10
        host_reads[0] = 0
        _, info = optsample.sample(name, model, x, sigmas, seeds=range(4), return_info=True, **hparams)
        counts.append(host_reads[0])
        nfes.append(info.nfe)
    assert nfes[1] - nfes[0] >= 15
    assert counts[0] == counts[1], f"{name}: {counts} host reads for NFE {nfes}"


def test_host_fast_path_is_kept_on_the_cpu(host_reads):
    """On the CPU the sigma_to_t fast path (python floats) is still taken: it reads sigma."""
    model = vp_model()
    model(torch.randn(4, 8), torch.full((4,), 2.0))
    assert host_reads[0] >= 1
    host_reads[0] = 0
    sigma = torch.full((4,), 2.0)
    assert torch.equal(model.sigma_to_t(sigma), wrappers.DiscreteSchedule.sigma_to_t(model, sigma, quantize=False))


def test_accelerator_sigma_to_t_equals_the_cpu_fast_path(monkeypatch):
    model = vp_model()
    sigma = torch.full((4,), 2.3, dtype=torch.float64)
    fast = model.sigma_to_t(sigma)
    monkeypatch.setattr(wrappers, "on_host", lambda tensor: False)
    tensor_path = model.sigma_to_t(sigma)
    assert (fast - tensor_path).abs().max().item() <= 1e-9


def test_generator_seeds_are_drawn_on_the_generators_device(monkeypatch):
    """sample(..., generator=torch.Generator("cuda")) raised: torch.randint without device= draws on the CPU,
    which a CUDA generator refuses. The draw must name the generator's device (checked here by recording the
    call; on a GPU machine benchmarks/gpu_check.py runs it for real)."""
    calls = []
    original = torch.randint

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "randint", recording)
    generator = torch.Generator().manual_seed(3)
    seeds = core.seeds_from_generator(generator, 3)
    assert calls and calls[0].get("device") == generator.device
    reference = int(original(0, 2**62, (1,), generator=torch.Generator().manual_seed(3)))
    assert seeds == [reference, reference + 1, reference + 2]  # the same seeds as before on the CPU
