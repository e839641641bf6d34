"""Streaming metrics (optsample.metrics.streaming): streamed == one shot, merge(a, b) == all at once, states
that do not grow with n, overlap refused, and the random-feature MMD against the exact kernel MMD."""

import io
import math

import numpy as np
import pytest
import torch

import optsample.metrics as metrics
from optsample.metrics import Batch, MetricContext, MetricStream, analytic, image
from optsample.models import GaussianMixture

ANALYTIC = ["rmse", "loglik", "mode_error", "mmd2_unbiased", "sliced_wasserstein"]


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.random(2, 4, seed=1)


def _samples_and_context(gmm, n=120, sigma=10.0):
    x_start = sigma * torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    samples = gmm.sample(n, torch.Generator().manual_seed(6)) + 0.05  # not the reference solution: rmse > 0
    return samples, MetricContext(gmm, x_start=x_start, sigma_start=sigma)


def _stream(names, samples, ctx, chunks, n=None):
    stream = MetricStream(names, ctx, n or samples.shape[0])
    for start, stop in chunks:
        stream.update(samples[start:stop], Batch(start, x_start=ctx.x_start[start:stop] if ctx.x_start is not None else None))
    return stream


def _chunks(n, size):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def test_streamed_equals_one_shot(gmm):
    """Chunk-free statistics (sums, counts, projections): 7-sample chunks == one chunk to 1e-12 relative;
    mode counts and sorted projections exactly."""
    samples, ctx = _samples_and_context(gmm)
    names = ["loglik", "mode_error", "mmd2_unbiased", "sliced_wasserstein"]
    whole = metrics.compute(names, samples, ctx)
    streamed = _stream(names, samples, ctx, _chunks(120, 7)).compute()
    assert streamed["mode_error"] == whole["mode_error"] and streamed["sliced_wasserstein"] == whole["sliced_wasserstein"]
    for name in ("loglik", "mmd2_unbiased"):
        assert streamed[name] == pytest.approx(whole[name], rel=1e-12), name
    # the one-shot values are the former estimators' where the estimator is unchanged (mean log p, TV of counts)
    assert whole["loglik"] == pytest.approx(float(gmm.log_prob(samples, 0.0).mean()), rel=1e-13)


def test_merge_equals_all_at_once_in_any_order(gmm):
    """Chunks split between two streams (as ranks r::2 take them), merged either way == one stream over
    the same chunks, to 1e-12 relative (rmse's reference is solved per chunk, so the chunks are the same)."""
    samples, ctx = _samples_and_context(gmm)
    chunks = _chunks(120, 16)
    one = _stream(ANALYTIC, samples, ctx, chunks).compute()
    a, b = _stream(ANALYTIC, samples, ctx, chunks[0::2]), _stream(ANALYTIC, samples, ctx, chunks[1::2])
    ab = MetricStream(ANALYTIC, ctx, 120).load_state_dict(a.state_dict()).merge(b).compute()
    ba = _stream(ANALYTIC, samples, ctx, chunks[1::2]).merge(_stream(ANALYTIC, samples, ctx, chunks[0::2])).compute()
    for name in ANALYTIC:
        assert ab[name] == pytest.approx(one[name], rel=1e-12, abs=1e-15), name
        assert ba[name] == pytest.approx(one[name], rel=1e-12, abs=1e-15), name
    assert one["rmse"] > 0.01  # the 0.05 offset is seen
    # the per-chunk reference solve agrees with the whole-set solve to the solver's tolerance
    assert one["rmse"] == pytest.approx(metrics.compute(["rmse"], samples, ctx)["rmse"], rel=1e-8)


def test_state_survives_save_and_load(gmm):
    samples, ctx = _samples_and_context(gmm)
    stream = _stream(ANALYTIC, samples, ctx, _chunks(120, 50))
    buffer = io.BytesIO()
    torch.save(stream.state_dict(), buffer)
    buffer.seek(0)
    loaded = MetricStream(ANALYTIC, ctx, 120).load_state_dict(torch.load(buffer, weights_only=False))
    assert loaded.compute() == stream.compute()


def test_overlap_and_incomplete_are_refused(gmm):
    samples, ctx = _samples_and_context(gmm)
    stream = _stream(["loglik"], samples, ctx, [(0, 50)])
    with pytest.raises(ValueError, match="samples 40..60 overlap samples 0..50"):
        stream.update(samples[40:60], Batch(40))
    with pytest.raises(ValueError, match="metrics saw 50 of 120 samples"):
        stream.compute()
    with pytest.raises(ValueError, match="overlap"):
        stream.merge(_stream(["loglik"], samples, ctx, [(0, 10)], n=120))
    with pytest.raises(ValueError, match="fall outside 0..120"):
        stream.update(samples[:10], Batch(115))
    with pytest.raises(ValueError, match="cannot merge metrics"):
        stream.merge(MetricStream(["mmd2_unbiased"], ctx, 120))


def test_state_size_does_not_grow_with_n(gmm):
    """Every analytic state but sliced Wasserstein's projections (256 per sample) has a size independent of n."""
    sizes = {}
    for n in (100, 1000):
        samples, ctx = _samples_and_context(gmm, n)
        stream = _stream(ANALYTIC, samples, ctx, _chunks(n, 100))
        sizes[n] = {name: sum(v.numel() for v in stat.sums.values()) for name, stat in stream.stats.items()}
        assert sum(p.numel() for p in stream.stats["sliced_wasserstein"].parts()) == 256 * n
    assert sizes[100] == sizes[1000]
    assert sizes[1000]["mmd2_unbiased"] == 2 * analytic.RFF_FREQUENCIES + 2 and sizes[1000]["mode_error"] == 4


def test_mmd_from_feature_sums_is_the_u_statistic_of_the_feature_kernel():
    """mmd2_from_sums == Gretton et al. Lemma 6 with the explicit kernel matrix K = phi phi^T (exact identity)."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 3, generator=g, dtype=torch.float64), torch.randn(20, 3, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(3, 64, generator=g, dtype=torch.float64)
    px, py = analytic.random_fourier_features(x, w), analytic.random_fourier_features(y, w)
    kxx, kyy, kxy = px @ px.T, py @ py.T, px @ py.T
    expected = (kxx.sum() - kxx.trace()) / (30 * 29) + (kyy.sum() - kyy.trace()) / (20 * 19) - 2 * kxy.mean()
    got = analytic.mmd2_from_sums(*analytic.feature_sums(x, w), 30.0, *analytic.feature_sums(y, w), 20.0)
    assert got == pytest.approx(float(expected), rel=1e-12)
    # the feature kernel is an unbiased estimate of the Gaussian kernel: with 20,000 frequencies the
    # entries agree with exp(-|a-b|^2 / 2) to ~ 1 / sqrt(20000) = 0.007 (here: 4 standard errors)
    w_many = torch.randn(3, 20000, generator=g, dtype=torch.float64)
    approx = analytic.random_fourier_features(x, w_many) @ analytic.random_fourier_features(y, w_many).T
    assert (approx - analytic.gaussian_kernel(x, y, 1.0)).abs().max() < 0.03


def test_random_feature_mmd_close_to_exact_kernel_mmd(gmm):
    """The metric 'mmd2_unbiased' (1024 random frequencies) against the exact Gaussian-kernel U-statistic on 2,000
    gmm2d samples, shifted by 0, 0.5 and 1 (measured: 7.75004e-4 vs 7.75006e-4, 3.385e-3 vs 3.466e-3,
    1.777e-2 vs 1.814e-2): the random-feature error is far below the sampling noise (7.8e-4 at shift 0)."""
    data = gmm.sample(2000, torch.Generator().manual_seed(11))
    ctx = MetricContext(gmm, n_reference=2000)
    ref = gmm.sample(2000, torch.Generator().manual_seed(0))  # reference_data's draw with reference_seed 0
    bandwidth = analytic.median_bandwidth(ref)
    for shift, abs_tol in ((0.0, 1e-6), (0.5, 2e-4), (1.0, 1e-3)):
        x = data + torch.tensor([shift, 0.0], dtype=torch.float64)
        exact = analytic.mmd2_unbiased(x, ref, bandwidth)
        assert metrics.compute(["mmd2_unbiased"], x, ctx)["mmd2_unbiased"] == pytest.approx(exact, abs=abs_tol), shift


def test_collected_fallback_for_plain_function_metrics(gmm):
    """A metric registered as fn(samples, ctx) streams by keeping its samples: fn sees them all, in index order."""
    name = "test_stream_first_coordinate_sum"
    if name not in metrics.available():
        metrics.register_metric(name)(lambda s, c: float(s[:, 0].sum() + c.x_start[:, 0].sum()))
    samples, ctx = _samples_and_context(gmm)
    chunks = _chunks(120, 13)
    streamed = _stream([name], samples, ctx, chunks[1::2]).merge(_stream([name], samples, ctx, chunks[0::2])).compute()
    assert streamed[name] == float(samples[:, 0].sum() + ctx.x_start[:, 0].sum())


# ---------------------------------------------------------------------------------------- images


def _images(seed, n=90):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_fid_streamed_and_merged_equal_torchmetrics_one_shot(tmp_path):
    real, fake = _images(0), _images(1) * 0.7 + 0.1
    ctx = MetricContext(None, reference=real, feature_net="avgpool4", cache_dir=str(tmp_path))
    features = lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)  # noqa: E731
    expected = image.frechet_distance(features(real), features(fake))  # torchmetrics' class, all at once
    chunks = _chunks(90, 20)
    a, b = (MetricStream(["fid"], ctx, 90) for _ in range(2))
    for k, (start, stop) in enumerate(chunks):
        (a if k % 2 else b).update(fake[start:stop], Batch(start))
    assert a.merge(b).compute()["fid"] == pytest.approx(expected, rel=1e-9)


def test_fid_from_precomputed_npz_statistics(tmp_path):
    """reference_stats=<.npz with mu, sigma> gives the FID of the reference features it was made from."""
    real, fake = _images(2), _images(3) * 0.8
    features = torch.nn.functional.adaptive_avg_pool2d(real, 4).flatten(1)
    image.save_reference_stats(str(tmp_path / "ref.npz"), features)
    with np.load(tmp_path / "ref.npz") as data:
        assert np.allclose(data["sigma"], np.cov(features.numpy(), rowvar=False), atol=1e-14)  # pytorch-fid's sigma
    from_data = metrics.compute(["fid"], fake, MetricContext(None, reference=real, feature_net="avgpool4", cache_dir=str(tmp_path)))
    from_npz = metrics.compute(["fid"], fake, MetricContext(None, reference_stats=str(tmp_path / "ref.npz"), feature_net="avgpool4"))
    assert from_npz["fid"] == pytest.approx(from_data["fid"], rel=1e-10)
    np.savez(tmp_path / "bad.npz", mean=features.mean(0).numpy())
    with pytest.raises(ValueError, match=r"lacks \['mu', 'sigma'\]"):
        metrics.compute(["fid"], fake, MetricContext(None, reference_stats=str(tmp_path / "bad.npz"), feature_net="avgpool4"))


def test_kid_subsets_fixed_by_sample_index(tmp_path):
    """KID over the streamed chunks: the same whichever stream saw which chunk (1e-12), and each subset's
    term is the torchmetrics unbiased polynomial MMD^2 (poly_mmd2 == maximum_mean_discrepancy, equal sizes)."""
    from torchmetrics.image.kid import poly_kernel, maximum_mean_discrepancy

    real, fake = _images(4, 100), _images(5, 90)
    ctx = MetricContext(None, reference=real, feature_net="avgpool4", cache_dir=str(tmp_path))
    chunks = _chunks(90, 30)
    one = MetricStream(["kid"], ctx, 90)
    for start, stop in chunks:
        one.update(fake[start:stop], Batch(start))
    split = [MetricStream(["kid"], ctx, 90) for _ in range(2)]
    for k, (start, stop) in enumerate(chunks):
        split[k % 2].update(fake[start:stop], Batch(start))
    assert split[1].merge(split[0]).compute()["kid"] == pytest.approx(one.compute()["kid"], rel=1e-12)
    f = torch.nn.functional.adaptive_avg_pool2d(fake[:30], 4).flatten(1)
    r = torch.nn.functional.adaptive_avg_pool2d(real[:30], 4).flatten(1)
    expected = maximum_mean_discrepancy(poly_kernel(f, f), poly_kernel(f, r), poly_kernel(r, r))
    assert float(image.poly_mmd2(f, r)) == pytest.approx(float(expected), rel=1e-12)
    assert math.isfinite(one.compute()["kid"])
