"""Metrics: exact identities and parity with independent formulas / peer implementations (scipy, torchmetrics)."""

import math
import json
import sys

import numpy as np
import pytest
import torch
from scipy.stats import norm, wasserstein_distance

import optsample.metrics as metrics
from optsample import reference
from optsample.metrics import MetricContext, analytic, features
from optsample.models import EmpiricalDenoiser, GaussianMixture
from optsample.samplers.core import Denoiser


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.random(2, 4, seed=1)


# ---------------------------------------------------------------------------------------- registry


def test_unknown_and_inapplicable_metrics(gmm):
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown metric 'nope'.*loglik.*mode_error"):
        metrics.compute(["loglik", "nope"], x, MetricContext(gmm))
    empirical = EmpiricalDenoiser(torch.randn(8, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="'loglik' does not apply to model EmpiricalDenoiser"):
        metrics.compute(["loglik"], x, MetricContext(empirical))
    with pytest.raises(ValueError, match="'mode_error' does not apply"):
        metrics.compute(["mode_error"], x, MetricContext(lambda x, sigma: x))
    with pytest.raises(ValueError, match="'fid' applies to images"):
        metrics.compute(["fid"], x, MetricContext(gmm, feature_net="avgpool4"))
    with pytest.raises(ValueError, match="needs MetricContext.x_start"):
        metrics.compute(["rmse"], x, MetricContext(gmm))



def test_registering_a_metric_twice_replaces_it_with_a_warning():
    """A re-run notebook cell registers again: the second function wins (value 2.0, not 1.0), with a warning."""
    try:
        metrics.register_metric("test_twice")(lambda s, c: 1.0)
        with pytest.warns(UserWarning, match="metric 'test_twice' is already registered; replacing it"):
            metrics.register_metric("test_twice")(lambda s, c: 2.0)
        assert metrics.compute(["test_twice"], torch.zeros(1, 1), MetricContext(None)) == {"test_twice": 2.0}
    finally:
        from optsample.metrics import registry as metric_registry
        metric_registry._METRICS.pop("test_twice", None)


# ---------------------------------------------------------------------------------------- analytic


def test_rmse_zero_on_reference_and_exact_offset(gmm):
    x_start = 10.0 * torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_ref = reference.solve(gmm, x_start, 10.0, 0.0)
    wrapped = Denoiser(gmm)  # the runner may hand over the framework's wrapper: metrics must not count NFE
    ctx = MetricContext(wrapped, x_start=x_start, sigma_start=10.0)
    assert metrics.compute(["rmse"], x_ref.clone(), ctx) == {"rmse": 0.0}
    assert wrapped.nfe == 0
    shifted = metrics.compute(["rmse"], x_ref + 0.125, ctx)["rmse"]  # cached reference, same solution
    assert abs(shifted - 0.125) < 1e-15


def test_loglik_matches_scipy_mixture_density():
    model = GaussianMixture([[0.0], [3.0]], stds=[0.5, 2.0], weights=[1.0, 3.0])
    x = torch.tensor([[-1.0], [0.2], [2.5], [7.0]], dtype=torch.float64)
    density = 0.25 * norm.pdf(x.numpy()[:, 0], 0.0, 0.5) + 0.75 * norm.pdf(x.numpy()[:, 0], 3.0, 2.0)
    got = metrics.compute(["loglik"], x.float(), MetricContext(model))["loglik"]
    assert got == pytest.approx(np.log(density).mean(), abs=1e-6)  # samples given in float32
    assert metrics.compute(["loglik"], x, MetricContext(model))["loglik"] == pytest.approx(np.log(density).mean(), abs=1e-13)


def test_mode_error_exact_on_constructed_samples():
    model = GaussianMixture([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]], stds=1.0, weights=[0.5, 0.3, 0.2])
    counts = [6, 2, 2]  # frequencies 0.6, 0.2, 0.2 -> TV = (0.1 + 0.1 + 0) / 2
    x = torch.cat([model.means[k].repeat(n, 1) + 0.5 for k, n in enumerate(counts)])
    assert metrics.compute(["mode_error"], x, MetricContext(model))["mode_error"] == pytest.approx(0.1, abs=1e-15)
    balanced = torch.cat([model.means[k].repeat(n, 1) for k, n in enumerate([5, 3, 2])])
    assert metrics.compute(["mode_error"], balanced, MetricContext(model))["mode_error"] == pytest.approx(0.0, abs=1e-15)


def test_mmd_parity_with_torchmetrics_estimator():
    from torchmetrics.image.kid import maximum_mean_discrepancy

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, generator=g, dtype=torch.float64), torch.randn(50, 3, generator=g, dtype=torch.float64) + 0.3
    h = 1.7
    kernel = lambda a, b: torch.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * h * h))  # noqa: E731
    expected = float(maximum_mean_discrepancy(kernel(x, x), kernel(x, y), kernel(y, y)))
    assert analytic.mmd2_unbiased(x, y, h) == pytest.approx(expected, abs=1e-14)


def test_the_mmd_metric_is_named_unbiased_mmd2_because_it_can_be_negative():
    """Two identical 2-point sets, bandwidth 1: the unbiased MMD^2 is 2k - 2 (1 + k) / 2 = k - 1 with
    k = exp(-1/2) (Gretton et al. 2012, Lemma 6), i.e. -0.393: so the metric is called mmd2_unbiased."""
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    assert analytic.mmd2_unbiased(x, x.clone(), 1.0) == pytest.approx(math.exp(-0.5) - 1, abs=1e-15)
    assert "mmd2_unbiased" in metrics.available() and "mmd" not in metrics.available()
    assert metrics.info("mmd2_unbiased").description.startswith("Unbiased MMD^2")


def test_mmd_and_sliced_wasserstein_same_vs_different(gmm):
    data = gmm.sample(1000, torch.Generator().manual_seed(11))
    ctx = MetricContext(gmm, n_reference=1000)  # fresh data from the model, seeded by reference_seed
    same = metrics.compute(["mmd2_unbiased", "sliced_wasserstein"], data, ctx)
    other = metrics.compute(["mmd2_unbiased", "sliced_wasserstein"], data + torch.tensor([1.0, 0.0], dtype=torch.float64), ctx)
    assert abs(same["mmd2_unbiased"]) < 1e-3 and other["mmd2_unbiased"] > 0.01
    assert same["sliced_wasserstein"] < 0.2 and other["sliced_wasserstein"] > 0.6
    identical = metrics.compute(["sliced_wasserstein"], data, MetricContext(gmm, reference=data))
    assert identical["sliced_wasserstein"] == 0.0
    assert metrics.compute(["mmd2_unbiased"], data, ctx) == {"mmd2_unbiased": same["mmd2_unbiased"]}  # reproducible reference draw


def test_wasserstein_1d_exact():
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(37, 4, generator=g, dtype=torch.float64), 2 * torch.randn(23, 4, generator=g, dtype=torch.float64)
    w1 = analytic.wasserstein_1d(u, v, p=1)  # unequal sizes: against scipy's W1
    assert torch.allclose(w1, torch.tensor([wasserstein_distance(u[:, j], v[:, j]) for j in range(4)], dtype=torch.float64), atol=1e-12)
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)  # W_p(u, u + c) = |c| in 1-D
    assert torch.allclose(analytic.wasserstein_1d(u, u + shift, p=2), shift.abs(), atol=1e-14)
    w = analytic.wasserstein_1d(u[:20], v[:20], p=2)  # equal sizes: sorted matching
    direct = (u[:20].sort(0).values - v[:20].sort(0).values).pow(2).mean(0).sqrt()
    assert torch.allclose(w, direct, atol=1e-14)


# ---------------------------------------------------------------------------------------- images


def _images(seed, n=200):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_fid_self_zero_shift_exact_and_cached(tmp_path):
    data = _images(0)
    ctx = MetricContext(None, reference=data, feature_net="avgpool4", cache_dir=str(tmp_path))
    assert abs(metrics.compute(["fid"], data, ctx)["fid"]) < 1e-8
    # a constant shift c moves every avgpool feature by c and keeps the covariance: FID = F c^2 = 48 * 0.25
    assert metrics.compute(["fid"], data + 0.5, ctx)["fid"] == pytest.approx(12.0, rel=1e-8)
    cached = list((tmp_path / "features").glob("avgpool4-*.pt"))
    assert len(cached) == 1

    def must_not_load():
        raise AssertionError("the cache should have been used")

    keyed = MetricContext(None, reference=data, reference_key="toy/set", feature_net="avgpool4", cache_dir=str(tmp_path))
    first = metrics.compute(["fid"], _images(1), keyed)["fid"]
    keyed.reference = must_not_load
    assert metrics.compute(["fid"], _images(1), keyed)["fid"] == first
    assert (tmp_path / "features" / "avgpool4-toy_set.pt").exists()


def test_fid_parity_with_scipy_sqrtm(tmp_path):
    from scipy.linalg import sqrtm

    real, fake = _images(2), _images(3) * 0.8 + 0.1
    f_real = torch.nn.functional.adaptive_avg_pool2d(real, 4).flatten(1).numpy()
    f_fake = torch.nn.functional.adaptive_avg_pool2d(fake, 4).flatten(1).numpy()
    mu1, mu2 = f_real.mean(0), f_fake.mean(0)
    s1, s2 = np.cov(f_real, rowvar=False), np.cov(f_fake, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)  # Heusel et al. 2017, eq. 6
    ctx = MetricContext(None, reference=real, feature_net="avgpool4", cache_dir=str(tmp_path))
    assert metrics.compute(["fid"], fake, ctx)["fid"] == pytest.approx(expected, rel=1e-7)


def test_kid_parity_self_and_shift(tmp_path):
    real, fake = _images(4, 100), _images(5, 100)
    ctx = MetricContext(None, reference=real, feature_net="avgpool4", cache_dir=str(tmp_path))

    def kid_full(a, b):  # subset size = n: every subset is the whole set (Binkowski et al. 2018, unbiased MMD^2)
        a = torch.nn.functional.adaptive_avg_pool2d(a, 4).flatten(1)
        b = torch.nn.functional.adaptive_avg_pool2d(b, 4).flatten(1)
        k = lambda p, q: (p @ q.T / a.shape[1] + 1) ** 3  # noqa: E731
        m = a.shape[0]
        k_aa, k_bb = k(a, a), k(b, b)
        return float((k_aa.sum() - k_aa.trace() + k_bb.sum() - k_bb.trace()) / (m * (m - 1)) - 2 * k(a, b).sum() / m**2)

    assert metrics.compute(["kid"], fake, ctx)["kid"] == pytest.approx(kid_full(real, fake), rel=1e-9, abs=1e-12)
    self_kid = metrics.compute(["kid"], real, ctx)["kid"]
    shifted = metrics.compute(["kid"], real + 0.5, ctx)["kid"]
    assert abs(self_kid) < 1e-2 and shifted > 0.5  # measured: -0.0055 and 0.95
    assert self_kid == pytest.approx(kid_full(real, real), abs=1e-12)


def test_feature_net_registry_and_missing_inception(tmp_path, monkeypatch):
    class Doubled(torch.nn.Module):
        def forward(self, images):
            return 2 * torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)

    metrics.register_feature_net("test_doubled", lambda device: Doubled(), overwrite=True)
    data = _images(6)
    ctx = MetricContext(None, reference=data, feature_net="test_doubled", cache_dir=str(tmp_path))
    assert metrics.compute(["fid"], data + 0.5, ctx)["fid"] == pytest.approx(48.0, rel=1e-8)  # features scaled by 2
    assert len(list((tmp_path / "features").glob("test_doubled-*.pt"))) == 1
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as on a machine without the extra
    monkeypatch.setattr(features, "_LOADED", {})
    with pytest.raises(ImportError, match=r"torch-fidelity.*optsample\[inception\]"):
        metrics.compute(["fid"], data, MetricContext(None, reference=data, cache_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown feature net 'nope'"):
        metrics.compute(["kid"], data, MetricContext(None, reference=data, feature_net="nope", cache_dir=str(tmp_path)))


# ---------------------------------------------------------------------------------------- CLIP score

WORDS = ["a", "photo", "of", "red", "cat", "blue", "dog"]


def _tiny_clip(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab, merges = {"<|startoftext|>": 0, "<|endoftext|>": 1}, []
    for char in sorted(set("".join(WORDS))):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    for word in WORDS:  # left-to-right BPE merges that build each word
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16,
    )
    torch.manual_seed(2)  # a seed whose image/text cosines are all positive (the clamp at 0 inactive)
    return CLIPModel(config).eval(), tokenizer


def test_clip_score_equals_hand_computed(tmp_path):
    model, tokenizer = _tiny_clip(tmp_path)
    assert tokenizer.convert_ids_to_tokens(tokenizer("a red cat")["input_ids"]) == [
        "<|startoftext|>", "a</w>", "red</w>", "cat</w>", "<|endoftext|>"]
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prompts = ["a photo of a red cat", "a blue dog"]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).reshape(1, 3, 1, 1)
    with torch.no_grad():  # features computed directly from the sub-modules
        image_emb = model.visual_projection(model.vision_model(pixel_values=((images + 1) / 2 - mean) / std).pooler_output)
        tokens = tokenizer(prompts, padding=True, return_tensors="pt")
        text_emb = model.text_projection(model.text_model(**tokens).pooler_output)
    cos = torch.nn.functional.cosine_similarity(image_emb[:, None].double(), text_emb[None].double(), dim=-1)  # [image, text]
    hand = (100 * cos).clamp(min=0)
    matching, swapped = hand.diagonal().mean().item(), hand.flip(1).diagonal().mean().item()
    assert (cos > 0.05).all() and abs(matching - swapped) > 1.0  # measured: 32.86 vs 29.54
    ctx = MetricContext(None, prompts=prompts, clip_model=(model, tokenizer))
    assert metrics.compute(["clip_score"], images, ctx)["clip_score"] == pytest.approx(matching, abs=1e-4)
    # streamed one image at a time (each chunk with its own prompts): the same mean of the same scores;
    # the float32 network sees other batch shapes, hence 1e-6 rather than 1e-12
    one_by_one = metrics.compute(["clip_score"], images, ctx, chunk_size=1)["clip_score"]
    assert one_by_one == pytest.approx(metrics.compute(["clip_score"], images, ctx)["clip_score"], rel=1e-6)
    ctx.prompts = prompts[::-1]
    assert metrics.compute(["clip_score"], images, ctx)["clip_score"] == pytest.approx(swapped, abs=1e-4)
    with pytest.raises(ValueError, match="needs prompts"):
        metrics.compute(["clip_score"], images, MetricContext(None, clip_model=(model, tokenizer)))


def test_clip_embedding_accepts_all_return_types():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    emb = torch.randn(2, 4)
    out = BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 3, 4), pooler_output=emb)
    for value in (emb, out, out.to_tuple()):
        assert metrics.clip.embedding(value) is emb
