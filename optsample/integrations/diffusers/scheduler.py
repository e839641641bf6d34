"""Any optsample sampler or update rule as a diffusers scheduler.

    pipe.scheduler = as_scheduler("dpmpp_2m", pipe.scheduler.config)
    pipe.scheduler = OptSampleScheduler.from_config(pipe.scheduler.config, sampler="heun", use_karras_sigmas=True)

A diffusers pipeline runs ``for t in scheduler.timesteps: out = unet(scheduler.scale_model_input(x, t), t);
x = scheduler.step(out, t, x).prev_sample``: one model evaluation per timestep, the scheduler deciding
where the next one happens. An optsample sampler is a plain function that calls ``model(x, sigma)``
whenever it needs a gradient (DESIGN.md). :class:`OptSampleScheduler` runs the sampler as a coroutine
(:class:`SamplerCoroutine`, a daemon worker thread): each ``model(x_eval, sigma)`` call suspends it;
``step`` turns the pipeline's network output at that point into ``denoised`` and resumes the sampler
until its next model call, whose point it returns as ``prev_sample``; the last ``step`` returns the
sampler's result. Multi-evaluation samplers (heun, dpm_2, restart, nesterov look-ahead, ...) thus
take several pipeline iterations per schedule step, and ``len(scheduler.timesteps)`` is the NFE.

Timesteps. Pipelines iterate ``scheduler.timesteps`` after ``set_timesteps``, so every evaluation
sigma must be known up front. :func:`evaluation_sigmas` finds them by a dry run of the sampler on two
cheap dummy denoisers (a sampler's evaluation sigmas never depend on x; it checks this and refuses a
sampler whose do). ``timesteps`` = the fractional training timesteps of those sigmas (log-sigma
interpolation, as diffusers' ``EulerDiscreteScheduler._sigma_to_t``); ``sigmas[i]`` is the noise level
of ``timesteps[i]`` (plus a trailing 0, as in diffusers).

Coordinates (config ``latent_scaling``). The sampler works on VE points ``x = x0 + sigma eps``; a
VP network sees ``x / sqrt(sigma^2 + 1)`` (Karras et al. 2022, Table 1; optsample.models.wrappers).

- ``"vp"`` (default): the pipeline's latents are the VP points ``x / sqrt(sigma^2 + 1)``, so
  ``scale_model_input`` is the identity, ``init_noise_sigma = sigma_0 / sqrt(sigma_0^2 + 1)`` and
  ``add_noise`` is DDPM's ``sqrt(abar) x0 + sqrt(1 - abar) noise``. Works in every pipeline, including
  those that call neither ``scale_model_input`` nor ``init_noise_sigma`` (``DDPMPipeline``).
- ``"ve"``: the latents are the VE points, as diffusers' Euler-family schedulers carry them:
  ``scale_model_input`` divides by ``sqrt(sigma^2 + 1)``, ``init_noise_sigma = sigma_0``.

Both give the same samples; the final latents (sigma = 0) are the same in both.

Noise. Stochastic samplers draw step noise from per-sample streams (:class:`~optsample.samplers.SeededNoise`):
seeds ``base + k`` with ``base`` one draw from the ``generator`` the pipeline passes to ``step`` (exactly as
``optsample.samplers.sample(..., generator=g)``; a list of generators gives one seed per sample), else
``noise_seed + k`` from the config, else torch's global RNG. The draw happens at the sampler's first noise
request, so a deterministic sampler never touches the pipeline's generator.

Starting mid-schedule (img2img: ``set_begin_index(t_start * order)``). ``order`` is the number of
evaluations of the first step (2 for heun, dpm_2, dpmpp_sde, ...; 1 for single-evaluation samplers), and
the sampler is restarted on the rest of the step schedule, which must evaluate exactly at the remaining
timesteps (checked; nesterov's look-ahead and plms' warm-up are examples that cannot restart everywhere).
The sampler keeps its own state: latents edited between steps (a ``callback_on_step_end`` returning new
latents) are refused with ValueError rather than silently ignored.

Threads. The worker is a daemon thread; it finishes by itself after the last ``step`` and is cancelled
when ``set_timesteps`` is called again, when the scheduler is garbage collected, and as soon as the
``prev_sample`` it handed out is released without coming back to ``step``: an interrupted pipeline call
(an exception in ``callback_on_step_end``, a KeyboardInterrupt) frees its worker and that run's tensors
when its frame goes, i.e. at once unless the exception's traceback is kept (a REPL's ``sys.last_traceback``),
then at the next ``set_timesteps``. ``step`` must get back the very tensor it returned (or an equal copy
while that tensor is alive); a copy of a released one is refused with ValueError. An exception in the
sampler (e.g. :class:`~optsample.samplers.NonFiniteError`) is re-raised by ``step`` in the pipeline's thread.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from contextlib import ExitStack, nullcontext
import queue
import threading
import warnings
import weakref
from typing import Any, Callable, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler, EulerDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin

from ... import schedules
from ...models.wrappers import DiscreteSchedule, check_prediction_type, expand, vp_denoised
from ...samplers import SeededNoise, initial_noise, registry
from ...samplers import sample as run_sampler

LATENT_SCALINGS = ("vp", "ve")
# Schedules whose sigma range defaults to the model's training range (diffusers' use_karras_sigmas does the same).
RANGED_SCHEDULES = ("karras", "exponential", "polyexponential", "linear")
SCHEDULES = ("discrete",) + RANGED_SCHEDULES + ("ays", "vp", "learned")
PLAN_DTYPE = torch.float32  # the state dtype of float32 / float16 pipelines (core.state_dtype)


# ----------------------------------------------------------------------------------------------
# Where the sampler will call the model.


def _record_run(sampler: str, sigmas: torch.Tensor, hparams: dict, denoise: Callable, seed: int):
    """(sigma of every model call, first call is at the start point) of one dry run on a dummy denoiser."""
    x_start = initial_noise([seed], (3,), dtype=PLAN_DTYPE) * float(sigmas[0])
    calls, first_at_start = [], []

    def model(x, sigma):
        if not calls:
            first_at_start.append(bool(torch.equal(x, x_start)))
        if not bool((sigma == sigma[0]).all()):
            raise ValueError(f"sampler {sampler!r} evaluates the batch at different sigmas {sigma.tolist()}")
        calls.append(float(sigma[0]))
        return denoise(x)

    with warnings.catch_warnings():  # the real run warns; the dry runs stay quiet
        warnings.simplefilter("ignore")
        run_sampler(sampler, model, x_start, sigmas.to(PLAN_DTYPE), seeds=[seed], **hparams)
    return tuple(calls), first_at_start[0] if first_at_start else True


def evaluation_sigmas(sampler: str, sigmas: torch.Tensor, hparams: dict | None = None) -> tuple[float, ...]:
    """The sigma of every model call of ``sampler`` along ``sigmas``, from dry runs on dummy denoisers.

    Two runs (denoiser 0 and denoiser x/2, different starting noise and step noise) must call the
    model at the same sigmas, else the sampler's evaluation sigmas depend on the data and no pipeline
    could know its timesteps up front: ValueError. The first call must be at the starting point
    itself (the pipeline evaluates its initial latents first), which rules out noise injected before
    the first evaluation (EDM churn at sigma_max): ValueError naming the hyper-parameters.
    """
    hparams = dict(hparams or {})
    first = _record_run(sampler, sigmas, hparams, lambda x: x * 0, seed=0)
    second = _record_run(sampler, sigmas, hparams, lambda x: x * 0.5, seed=1)
    if first[0] != second[0]:
        raise ValueError(
            f"sampler {sampler!r} ({hparams}) calls the model at data-dependent sigmas ({list(first[0])} vs "
            f"{list(second[0])}); a diffusers pipeline needs every timestep before sampling starts"
        )
    if not first[1]:
        raise ValueError(
            f"sampler {sampler!r} ({hparams}) changes x before its first model evaluation (noise injected at "
            f"sigma_max, e.g. s_churn / langevin_churn with a range including sigma_max = {float(sigmas[0]):.6g}); "
            "inside a pipeline the first evaluation is at the initial latents: lower s_tmax / langevin_tmax"
        )
    return first[0]


def tail_evaluation_sigmas(sampler: str, sigmas: torch.Tensor, first_step: int, hparams: dict | None = None):
    """Evaluation sigmas of the sampler restarted at schedule step ``first_step`` (img2img), one dry run."""
    return _record_run(sampler, sigmas[first_step:], dict(hparams or {}), lambda x: x * 0, seed=0)[0]


def _same_sigmas(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7) for x, y in zip(a, b))


# ----------------------------------------------------------------------------------------------
# The sampler as a coroutine.

_CANCEL = object()


class _Cancelled(BaseException):
    """Raised inside the worker's model call to unwind a cancelled sampler (not an Exception: nothing catches it)."""


class SamplerCoroutine:
    """Runs ``run(model)`` in a daemon thread; every ``model(x, sigma)`` call suspends it.

    Strict alternation: :meth:`resume` hands the worker the answer to its pending model call (nothing
    for the first) and blocks until the worker asks for the next one. It returns ``("eval", x, sigma)``,
    ``("done", result)`` or ``("error", exception)``. The worker holds no reference to its owner, so an
    owner that is garbage collected can cancel it (``weakref.finalize``).
    """

    def __init__(self, run: Callable[[Callable], Any], thread_state: Callable[[], Any] | None = None):
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._replies: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._work, args=(run, self._requests, self._replies, thread_state), name="optsample-sampler",
            daemon=True,
        )
        self._thread.start()

    @staticmethod
    def _work(run, requests, replies, thread_state):
        def model(x, sigma):
            requests.put(("eval", x, sigma))
            reply = replies.get()
            if reply is _CANCEL:
                raise _Cancelled
            return reply

        try:
            with thread_state() if thread_state is not None else nullcontext():
                result = run(model)
        except _Cancelled:
            return
        except BaseException as err:  # surfaces in the caller's thread via resume()
            requests.put(("error", err))
            return
        requests.put(("done", result))

    def resume(self, reply: Any = None) -> tuple:
        if reply is not None:
            self._replies.put(reply)
        return self._requests.get()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float = 30.0) -> None:
        """Wait for a worker that has reported 'done' or 'error' to exit."""
        self._thread.join(timeout)

    def cancel(self, timeout: float = 30.0) -> None:
        """Unwind a suspended sampler and wait for its thread; a no-op once it has finished."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._replies.put(_CANCEL)
            self._thread.join(timeout)


def _caller_thread_state(device: torch.device):
    """A context manager factory re-creating the caller's grad / inference mode and CUDA stream in the worker.

    Grad mode, inference mode and the current CUDA stream are thread-local in torch.
    """
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None

    def enter():
        stack = ExitStack()
        stack.enter_context(torch.inference_mode() if inference else torch.set_grad_enabled(grad))
        if stream is not None:
            stack.enter_context(torch.cuda.stream(stream))
        return stack

    return enter


# ----------------------------------------------------------------------------------------------
# Noise from the pipeline's generator(s).


def _seed_from(generator: torch.Generator) -> int:
    """One base seed drawn from ``generator`` on its own device (core.seeds_from_generator, any device)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def seeds_for(batch: int, generator=None, noise_seed: int | None = None) -> list[int] | None:
    """Per-sample step-noise seeds: from one generator (base + k), a list of generators (one each), or noise_seed."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch} samples")
        return [_seed_from(g) for g in generator]
    if generator is not None:
        base = _seed_from(generator)
        return [base + k for k in range(batch)]
    if noise_seed is not None:
        return [int(noise_seed) + k for k in range(batch)]
    return None


class _LazySeededNoise:
    """A noise_sampler that draws its seeds (from the pipeline's generator) only when first asked for noise."""

    independent_calls = True  # a stream (samplers/core.py, the noise contract)

    def __init__(self, x: torch.Tensor, draw_seeds: Callable[[], list[int] | None]):
        self.x, self.draw_seeds, self.noise = x, draw_seeds, None

    def __call__(self, sigma=None, sigma_next=None):
        if self.noise is None:
            seeds = self.draw_seeds()
            self.noise = SeededNoise(self.x, seeds) if seeds is not None else (lambda *_: torch.randn_like(self.x))
        return self.noise(sigma, sigma_next)


# ----------------------------------------------------------------------------------------------
# The scheduler.


class OptSampleScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs optsample sampler ``sampler`` (any registered name) with ``sampler_kwargs``.

    Config: the model's training schedule (``num_train_timesteps``, ``beta_*``, ``trained_betas``,
    ``prediction_type``: read from any diffusers scheduler config by ``from_config``); the sigma
    schedule ``schedule`` (``"discrete"``: diffusers' ``timestep_spacing`` / ``steps_offset`` spacing;
    ``"karras"``, ``"exponential"``, ``"polyexponential"``, ``"linear"`` over the training sigma range;
    ``"ays"``, ``"vp"``; see optsample.schedules) with ``schedule_kwargs``; ``use_karras_sigmas`` /
    ``use_exponential_sigmas`` as in diffusers; ``final_sigmas_type`` (schedules' ``final``);
    ``latent_scaling`` and ``noise_seed`` (module docstring). ``set_timesteps(sigmas=...)`` or
    ``timesteps=...`` give a custom schedule.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        sampler: str = "euler",
        sampler_kwargs: dict | None = None,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        latent_scaling: str = "vp",
        noise_seed: int | None = None,
    ):
        self.spec = registry.get(sampler)  # an unknown name raises the registry's UnknownSamplerError
        self.spec.make_params(**(sampler_kwargs or {}))  # bad hyper-parameters fail here, not mid-pipeline
        check_prediction_type(prediction_type)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r} is not one of {list(SCHEDULES)}")
        if latent_scaling not in LATENT_SCALINGS:
            raise ValueError(f"latent_scaling {latent_scaling!r} is not one of {list(LATENT_SCALINGS)}")
        if use_karras_sigmas and use_exponential_sigmas:
            raise ValueError("use_karras_sigmas and use_exponential_sigmas cannot both be set")
        if use_beta_sigmas:
            raise ValueError("use_beta_sigmas is not supported; pass schedule= one of " + str(list(SCHEDULES)))
        if rescale_betas_zero_snr:
            raise ValueError("rescale_betas_zero_snr gives sigma_max = inf, which a VE sampler cannot start from")
        # The training betas / alphas_cumprod exactly as diffusers computes them (float32).
        training = EulerDiscreteScheduler(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas,
        )
        self.alphas_cumprod = training.alphas_cumprod
        self.training_schedule = DiscreteSchedule(self.alphas_cumprod)
        self.num_inference_steps = None
        self.schedule_sigmas = None  # the optsample step schedule (ends at 0)
        self.eval_sigmas: tuple[float, ...] | None = None  # sigma of every model evaluation, in order
        self._start_steps: dict[int, int] = {}  # evaluation index -> schedule step a run can start at
        self.timesteps = None
        self.sigmas = None
        self._reset_run()
        self._begin_index = None

    # -- diffusers' scheduler interface --------------------------------------------------------

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next ``step`` (None before the first)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at evaluation ``begin_index`` (img2img calls it with ``t_start * order``).

        The sampler restarted at some schedule step must then evaluate exactly at the remaining
        timesteps; ValueError otherwise (e.g. Restart's segments span the whole schedule).
        """
        self._require_timesteps()
        self._start_step(begin_index)
        self._begin_index = begin_index

    @property
    def init_noise_sigma(self) -> float:
        """Std of the initial latents: sigma_0 (ve) or sigma_0 / sqrt(sigma_0^2 + 1) (vp)."""
        sigma = float(self.sigmas[0]) if self.sigmas is not None else self.training_schedule.sigma_max
        return sigma if self.config.latent_scaling == "ve" else sigma / math.sqrt(sigma**2 + 1)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """Build the step schedule, plan every evaluation, and cancel any sampler still running."""
        self.schedule_sigmas = self._step_schedule(num_inference_steps, sigmas, timesteps)
        self.num_inference_steps = len(self.schedule_sigmas) - 1
        self.eval_sigmas = evaluation_sigmas(self.config.sampler, self.schedule_sigmas, self._hparams())
        self._start_steps = {0: 0}
        self.order = self._evaluations_per_step()
        eval_sigmas = torch.tensor(self.eval_sigmas, dtype=PLAN_DTYPE)
        self.timesteps = self.training_schedule.sigma_to_t(eval_sigmas).to(device)
        self.sigmas = torch.cat([eval_sigmas, eval_sigmas.new_zeros(1)])  # CPU, as diffusers keeps them
        self._reset_run()
        self._begin_index = None

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The network input: the latents themselves (vp) or latents / sqrt(sigma^2 + 1) (ve)."""
        if self.config.latent_scaling == "vp":
            return sample
        self._require_timesteps()
        index = self._step_index if self._step_index is not None else self._first_index(timestep)
        sigma = self.sigmas[index].to(sample.device, sample.dtype)
        return sample / (sigma**2 + 1).sqrt()

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """original + sigma noise (ve), divided by sqrt(sigma^2 + 1) for vp: DDPM's sqrt(abar) x0 + sqrt(1 - abar) noise.

        The step index is chosen as diffusers' ``EulerDiscreteScheduler.add_noise`` chooses it: begin_index
        before the first step (img2img), the current step after it (inpainting), else each timestep's index.
        """
        self._require_timesteps()
        if self._begin_index is None:
            indices = [self._index_of(t) for t in torch.as_tensor(timesteps).reshape(-1)]
        elif self._step_index is not None:
            indices = [self._step_index] * len(timesteps)
        else:
            indices = [self._begin_index] * len(timesteps)
        sigma = expand(self.sigmas[indices].to(original_samples.device, original_samples.dtype), original_samples.ndim)
        noisy = original_samples + noise * sigma
        return noisy if self.config.latent_scaling == "ve" else noisy / (sigma**2 + 1).sqrt()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ):
        """Hand the network output at the pending evaluation to the sampler; return its next evaluation point.

        ``prev_sample`` is the sampler's next evaluation point in the pipeline's coordinates, or its final
        result after the last timestep; ``pred_original_sample`` is the denoised estimate just computed.
        """
        self._require_timesteps()
        if self._step_index is None:
            self._start(self._first_index(timestep), sample, generator)
        else:
            self._take_back(sample)
        index = self._step_index
        if index >= len(self.timesteps):
            raise IndexError(f"step() called {index + 1} times but there are {len(self.timesteps)} timesteps")
        self._check_timestep(timestep, index)
        _, x_eval, sigma = self._pending
        sigma_b = expand(sigma, x_eval.ndim)
        denoised = vp_denoised(x_eval, sigma_b, model_output.to(x_eval.dtype), self.config.prediction_type)
        request = self._coroutine.resume(denoised)
        if request[0] == "error":
            self._reset_run()
            raise request[1]
        if request[0] == "done":
            self._coroutine.join()
        last = index == len(self.timesteps) - 1
        if request[0] == "done" and not last or request[0] == "eval" and last:
            self._reset_run()
            raise RuntimeError(
                f"sampler {self.config.sampler!r} made a different number of model evaluations than planned "
                f"({len(self.timesteps)}): its evaluation points depend on the data"
            )
        if request[0] == "eval":
            self._check_sigma(request[2], index + 1)
            prev_sample = self._to_latents(request[1], request[2])
            self._pending = request
        else:
            prev_sample = request[1]
        prev_sample = prev_sample.to(sample.dtype)
        if request[0] == "eval":
            prev_sample = self._hand_out(prev_sample)
        self._step_index += 1
        if not return_dict:
            return (prev_sample, denoised.to(sample.dtype))
        return EulerDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised.to(sample.dtype))

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -- internals ------------------------------------------------------------------------------

    def _hparams(self) -> dict:
        return dict(self.config.sampler_kwargs or {})

    def _require_timesteps(self) -> None:
        if self.eval_sigmas is None:
            raise RuntimeError("call set_timesteps() before using the scheduler")

    def _reset_run(self) -> None:
        """Cancel the running sampler (if any) and forget the run's state."""
        coroutine = getattr(self, "_coroutine", None)
        if coroutine is not None:
            self._finalizer.detach()
            if self._on_drop is not None:
                self._on_drop.detach()
            coroutine.cancel()
        self._coroutine, self._finalizer, self._pending, self._returned, self._on_drop = None, None, None, None, None
        self._step_index = None

    def _hand_out(self, prev_sample: torch.Tensor) -> torch.Tensor:
        """``prev_sample`` as a tensor object of its own whose release cancels the suspended sampler.

        An interrupted pipeline call (an exception in ``callback_on_step_end``, a KeyboardInterrupt) never
        calls ``step`` again; when it lets go of the latents it was given, the worker is released at once
        instead of at the next ``set_timesteps``. The view shares storage (no copy); only a weak reference
        is kept, and the run's state goes with the worker.
        """
        prev_sample = prev_sample.view_as(prev_sample)
        self._returned = weakref.ref(prev_sample)
        self._on_drop = weakref.finalize(prev_sample, _release_run, weakref.ref(self))
        self._on_drop.atexit = False
        return prev_sample

    def _take_back(self, sample: torch.Tensor) -> None:
        """Check that ``sample`` is the prev_sample handed out last and keep its release from cancelling the run."""
        returned = self._returned() if self._returned is not None else None
        if returned is not None:
            self._on_drop.detach()
        if sample is not returned and (returned is None or not torch.equal(sample.to(returned.dtype), returned)):
            self._reset_run()
            raise ValueError(
                "the latents passed to step() are not the prev_sample the scheduler returned (edited between "
                "steps, or a copy of it after the original was released); an optsample sampler keeps its own "
                "state: pass the returned tensor itself back"
            )

    def _step_schedule(self, n, sigmas, timesteps) -> torch.Tensor:
        given = [name for name, value in (("num_inference_steps", n), ("sigmas", sigmas), ("timesteps", timesteps))
                 if value is not None]
        if len(given) != 1:
            raise ValueError(f"pass exactly one of num_inference_steps, sigmas, timesteps (got {given or 'none'})")
        if sigmas is not None:
            return schedules.custom(torch.as_tensor(sigmas, dtype=torch.float64).tolist())
        if timesteps is not None:
            t = torch.as_tensor(timesteps, dtype=torch.float64)
            return schedules.custom(self.training_schedule.t_to_sigma(t).tolist())
        config = self.config
        name = "karras" if config.use_karras_sigmas else "exponential" if config.use_exponential_sigmas else config.schedule
        params = dict(config.schedule_kwargs or {})
        if name == "discrete":
            params = dict(spacing=config.timestep_spacing, steps_offset=config.steps_offset, **params)
            return schedules.discrete(self.alphas_cumprod, n, final=config.final_sigmas_type, **params)
        if name in RANGED_SCHEDULES:
            params.setdefault("sigma_min", self.training_schedule.sigma_min)
            params.setdefault("sigma_max", self.training_schedule.sigma_max)
        if name == "learned":  # a schedule file (optsample.learned_schedules.files, its own final sigma), checked
            params.setdefault("expect", {"sampler": config.sampler, "hparams": self._hparams()})
        else:
            params.setdefault("final", config.final_sigmas_type)  # every other schedule takes final= (ays, vp too)
        return schedules.get(name, n, **params)

    def _evaluations_per_step(self) -> int:
        """diffusers' ``order``: evaluations of the first step (NFE minus the NFE of the run from step 1), >= 1.

        img2img slices ``timesteps[t_start * order:]``, so for samplers with a fixed count per step (heun,
        dpm_2: 2, like diffusers' Heun / KDPM2 schedulers) the slice starts at a step's first evaluation.
        """
        if self.num_inference_steps < 2:
            return 1
        tail = tail_evaluation_sigmas(self.config.sampler, self.schedule_sigmas, 1, self._hparams())
        order = len(self.eval_sigmas) - len(tail)
        if order >= 1 and _same_sigmas(tail, self.eval_sigmas[order:]):
            self._start_steps[order] = 1
        return max(order, 1)

    def _start_step(self, index: int) -> int:
        """The schedule step from which the sampler evaluates exactly at ``eval_sigmas[index:]`` (ValueError if none)."""
        if index in self._start_steps:
            return self._start_steps[index]
        remaining = len(self.eval_sigmas) - index
        if 0 < index < len(self.eval_sigmas):
            for first_step in range(1, self.num_inference_steps):
                tail = tail_evaluation_sigmas(self.config.sampler, self.schedule_sigmas, first_step, self._hparams())
                if len(tail) < remaining:
                    break
                if _same_sigmas(tail, self.eval_sigmas[index:]):
                    self._start_steps[index] = first_step
                    return first_step
        raise ValueError(
            f"sampler {self.config.sampler!r} cannot start at evaluation {index} of {len(self.eval_sigmas)}: no schedule "
            f"step from which it evaluates exactly at the remaining timesteps (scheduler.order = {self.order}; "
            "samplers whose evaluations span the whole schedule, e.g. restart, cannot start mid-schedule / img2img)"
        )

    def _first_index(self, timestep) -> int:
        """Where a run starts: begin_index if the pipeline set one, else the first evaluation at ``timestep``."""
        if self._begin_index is not None:
            return self._begin_index
        index = self._index_of(timestep)
        self._start_step(index)
        return index

    def _index_of(self, timestep) -> int:
        matches = (self.timesteps.cpu() == torch.as_tensor(timestep, dtype=self.timesteps.dtype).cpu()).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {float(timestep):.6g} is not one of scheduler.timesteps")
        return int(matches[0])

    def _check_timestep(self, timestep, index: int) -> None:
        if float(timestep) != float(self.timesteps[index]):
            raise ValueError(
                f"step() got timestep {float(timestep):.6g} but evaluation {index} is at timestep "
                f"{float(self.timesteps[index]):.6g}; iterate scheduler.timesteps in order"
            )

    def _check_sigma(self, sigma: torch.Tensor, index: int) -> None:
        planned = self.eval_sigmas[index]
        if not math.isclose(float(sigma[0]), planned, rel_tol=1e-5, abs_tol=1e-7):
            self._reset_run()
            raise RuntimeError(
                f"sampler {self.config.sampler!r} evaluated at sigma {float(sigma[0]):.6g} where the plan says "
                f"{planned:.6g} (evaluation {index}): its evaluation sigmas depend on the data"
            )

    def _to_latents(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """A VE point as the pipeline carries it (module docstring, 'Coordinates')."""
        if self.config.latent_scaling == "ve":
            return x
        return x / (expand(sigma, x.ndim) ** 2 + 1).sqrt()

    def _start(self, index: int, sample: torch.Tensor, generator) -> None:
        """Start the sampler at evaluation ``index`` (a step start) from the pipeline's latents ``sample``."""
        first_step = self._start_step(index)
        sigmas = self.schedule_sigmas[first_step:]
        sigma_0 = float(sigmas[0])
        x_start = sample.to(torch.float64 if sample.dtype == torch.float64 else torch.float32)
        if self.config.latent_scaling == "vp":
            x_start = x_start * math.sqrt(sigma_0**2 + 1)
        sampler, hparams, noise_seed = self.config.sampler, self._hparams(), self.config.noise_seed
        batch = x_start.shape[0]

        def run(model):
            noise = _LazySeededNoise(x_start, lambda: seeds_for(batch, generator, noise_seed))
            return run_sampler(sampler, model, x_start, sigmas.to(x_start.device), noise_sampler=noise, **hparams)

        self._coroutine = SamplerCoroutine(run, _caller_thread_state(x_start.device))
        self._finalizer = weakref.finalize(self, self._coroutine.cancel)
        request = self._coroutine.resume()
        if request[0] == "error":
            self._reset_run()
            raise request[1]
        if request[0] != "eval":
            raise RuntimeError(f"sampler {sampler!r} finished without evaluating the model")
        self._check_sigma(request[2], index)
        self._pending, self._step_index = request, index


def _release_run(owner: weakref.ref) -> None:
    """The latents of a suspended run were released without coming back to ``step``: cancel the run."""
    scheduler = owner()
    if scheduler is not None:  # a collected scheduler's own finalizer has cancelled its worker
        step_index = scheduler._step_index
        scheduler._reset_run()
        scheduler._step_index = step_index  # a later step() (not a new run) is told what happened


_SCHEDULER_OPTIONS = frozenset(inspect.signature(OptSampleScheduler.__init__).parameters) - {"self", "sampler"}


def as_scheduler(name: str, config: dict | None = None, **options) -> OptSampleScheduler:
    """Sampler ``name`` as a diffusers scheduler; ``config`` is a pipeline's ``scheduler.config`` (training schedule).

    ``options`` naming an :class:`OptSampleScheduler` config field (``schedule``, ``use_karras_sigmas``,
    ``latent_scaling``, ``noise_seed``, ...) configure the scheduler; every other option is a sampler
    hyper-parameter, validated by the registry (``as_scheduler("nesterov", pipe.scheduler.config, beta=0.5)``).
    """
    scheduler_options = {k: options.pop(k) for k in list(options) if k in _SCHEDULER_OPTIONS}
    hparam_names = [f.name for f in dataclasses.fields(registry.get(name).params)]
    for key in options:  # a near-miss of a scheduler option is a typo, not a sampler hyper-parameter
        near = difflib.get_close_matches(key, sorted(_SCHEDULER_OPTIONS), n=1, cutoff=0.8)
        if key not in hparam_names and near:
            raise TypeError(f"as_scheduler: unknown scheduler option {key!r}; did you mean {near[0]!r}?")
    sampler_kwargs = {**(scheduler_options.pop("sampler_kwargs", None) or {}), **options}
    if config is None:
        return OptSampleScheduler(sampler=name, sampler_kwargs=sampler_kwargs, **scheduler_options)
    return OptSampleScheduler.from_config(config, sampler=name, sampler_kwargs=sampler_kwargs, **scheduler_options)
