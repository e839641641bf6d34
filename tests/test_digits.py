"""The embedded default: shipped weights, FID-digits, the accuracy metric, guidance, the runner's
model=digits / digits_empirical options, and a short training run (optsample/zoo/digits/, its train.py)."""

import json

import pytest
import torch

from optsample.runner import config as C
from optsample import metrics
from optsample.runner import app as R
from optsample.zoo.digits import train as T
from optsample.zoo.digits import GuidedDenoiser, checkpoints, data, load_classifier, load_denoiser, training
from optsample.models import EmpiricalDenoiser


@pytest.fixture(scope="module")
def heldout():
    return data.load("heldout")


def fid_context(tmp_path, reference):
    return metrics.MetricContext(model=None, reference=reference, feature_net="digits", cache_dir=str(tmp_path))


def test_split_is_fixed_disjoint_and_scaled():
    train_x, train_y = data.load("train")
    held_x, held_y = data.load("heldout")
    all_x, _ = data.load("all")
    assert (len(train_y), len(held_y), len(all_x)) == (1347, 450, 1797)
    assert float(all_x.min()) == -1.0 and float(all_x.max()) == 1.0
    expected = torch.bincount(torch.cat([train_y, held_y])) * 450 / 1797  # stratified: class shares kept
    assert float((torch.bincount(held_y) - expected).abs().max()) <= 1
    # no held-out image is a train image by index (the split partitions 0..1796)
    train_idx, held_idx = data._split_indices()
    assert len(set(train_idx.tolist()) | set(held_idx.tolist())) == 1797
    with pytest.raises(ValueError, match="split 'test'"):
        data.load("test")


def test_shipped_checkpoints_load_and_match_provenance():
    record = checkpoints.provenance()
    for name, key in ((checkpoints.DENOISER_FILE, "denoiser"), (checkpoints.CLASSIFIER_FILE, "classifier")):
        path = checkpoints.asset(name)
        assert checkpoints.file_digest(path) == record[key]["sha256"]
        assert path.stat().st_size < 4_000_000
    denoiser = load_denoiser()
    assert sum(p.numel() for p in denoiser.parameters()) == record["denoiser"]["parameters"]
    assert abs(denoiser.sigma_data - data.sigma_data()) < 1e-3
    assert record["denoiser"]["loss_last_50"] < 0.6 * record["denoiser"]["loss_first_50"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_denoiser("/nonexistent/digits.safetensors")


def test_classifier_heldout_accuracy(heldout):
    images, labels = heldout
    acc = training.accuracy(load_classifier(), images, labels)
    assert acc >= 0.95, acc  # measured 0.98


def test_fid_digits_self_is_zero_noise_is_large(tmp_path, heldout):
    images, _ = heldout
    ctx = fid_context(tmp_path, images)
    assert metrics.compute(["fid"], images, ctx)["fid"] < 1e-6
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    train_x, _ = data.load("train")
    floor = metrics.compute(["fid"], train_x[:450], ctx)["fid"]  # train vs held-out: sampling error alone
    noise_fid = metrics.compute(["fid"], noise, ctx)["fid"]
    assert noise_fid > 20 * floor, (noise_fid, floor)
    assert metrics.compute(["kid"], noise, ctx)["kid"] > 20 * max(metrics.compute(["kid"], train_x[:450], ctx)["kid"], 1e-4)


def test_accuracy_metric_counts_matching_labels(heldout):
    images, labels = heldout
    ctx = metrics.MetricContext(model=None, labels=labels)
    exact = training.accuracy(load_classifier(), images, labels)
    assert metrics.compute(["accuracy"], images, ctx)["accuracy"] == pytest.approx(exact, abs=1e-6)
    wrong = metrics.compute(["accuracy"], images, metrics.MetricContext(model=None, labels=(labels + 1) % 10))["accuracy"]
    assert wrong < 0.05
    with pytest.raises(metrics.NotApplicable, match="class labels"):
        metrics.compute(["accuracy"], images, metrics.MetricContext(model=None))
    assert metrics.info("accuracy").higher_is_better


def test_guidance_is_the_cfg_combination():
    denoiser = load_denoiser().double()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigma = torch.full((6,), 1.3, dtype=torch.float64)
    labels = torch.arange(6)
    cond = denoiser(x, sigma, class_labels=labels)
    uncond = denoiser(x, sigma, class_labels=torch.full((6,), 10))
    assert torch.equal(GuidedDenoiser(denoiser, 1.0)(x, sigma, class_labels=labels), cond)
    assert torch.equal(GuidedDenoiser(denoiser, 0.0)(x, sigma, class_labels=labels), uncond)
    guided = GuidedDenoiser(denoiser, 2.5)(x, sigma, class_labels=labels)
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=0, atol=1e-12)
    assert float((cond - uncond).abs().max()) > 1e-3  # the label matters
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        GuidedDenoiser(denoiser, -1.0)
    with pytest.raises(ValueError, match="class_labels must be 6 integers in 0..9"):
        GuidedDenoiser(denoiser, 2.0)(x, sigma, class_labels=torch.full((6,), 12))


def runner_cfg(tmp_path, **overrides):
    from hydra import compose, initialize_config_dir

    C.register_configs()
    args = ["logger=none", "progress=false", f"results_dir={tmp_path}", "device=cpu"]
    args += [f"{k}={v}" for k, v in overrides.items()]
    with initialize_config_dir(config_dir=R.config_path(), version_base="1.3"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(compose("config", overrides=args), resolve=True)


def test_model_digits_samples_are_recognised_at_nfe_20(tmp_path):
    cfg = runner_cfg(tmp_path, model="digits", sampler="dpmpp_2m", nfe=20, n_samples=200, batch_size=200,
                     **{"metric.names": "[accuracy,fid]", "model.guidance": 2.0})
    row = R.execute(cfg)
    assert row["nfe"] == 20  # one guided call (a batch of 2B rows) is one NFE
    assert row["metric.accuracy"] >= 0.90, row["metric.accuracy"]  # measured 0.99
    assert row["metric.fid"] < 20, row["metric.fid"]


def test_model_digits_conditioning_and_errors(tmp_path):
    built = C.MODELS["digits"].build({"name": "digits", "dtype": "float32", "guidance": 2.0, "checkpoint": None})
    assert built.conditioning([0, 1, 13, 27])["class_labels"].tolist() == [0, 1, 3, 7]
    assert built.metric_args["feature_net"] == "digits" and built.sample_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        C.MODELS["digits"].build({"name": "digits", "dtype": "float32", "guidance": -0.5, "checkpoint": None})


def test_digits_empirical_is_the_exact_denoiser_of_the_train_split():
    images, labels = data.load("train")
    x = torch.randn(20, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sigma = torch.full((20,), 0.7, dtype=torch.float64)
    plain = C.MODELS["digits_empirical"].build({"name": "digits_empirical", "dtype": "float32", "split": "train",
                                                "class_conditional": False})
    torch.testing.assert_close(plain.denoiser(x, sigma), EmpiricalDenoiser(images.double())(x, sigma))
    cond = C.MODELS["digits_empirical"].build({"name": "digits_empirical", "dtype": "float32", "split": "train",
                                               "class_conditional": True})
    class_labels = cond.conditioning(list(range(20)))["class_labels"]
    out = cond.denoiser(x, sigma, class_labels=class_labels)
    for b in (0, 7, 13):
        expected = EmpiricalDenoiser(images[labels == class_labels[b]].double())(x[b:b + 1], sigma[b:b + 1])
        torch.testing.assert_close(out[b:b + 1], expected)


def test_short_training_run_lowers_the_loss_and_writes_loadable_checkpoints(tmp_path):
    cfg = T.TrainConfig(iterations=80, batch_size=64, warmup=10, channels=16, emb_dim=32, classifier_epochs=2,
                        checkpoint_every=40, progress=False)
    record = T.train(cfg, tmp_path)
    assert record["denoiser"]["loss_last_50"] < 0.8 * record["denoiser"]["loss_first_50"], record["denoiser"]
    losses = [float(line.split(",")[1]) for line in (tmp_path / "loss.csv").read_text().splitlines()[1:]]
    assert len(losses) == 80 and (tmp_path / "loss.png").stat().st_size > 1000
    for path in (tmp_path / checkpoints.DENOISER_FILE, tmp_path / "checkpoints" / "step_000040.safetensors"):
        net = load_denoiser(path)
        assert net.net.conv_in.out_channels == 16
    assert json.loads((tmp_path / "digits.json").read_text())["config"]["iterations"] == 80
    assert load_classifier(tmp_path / checkpoints.CLASSIFIER_FILE).head.out_features == 10
    with pytest.raises(ValueError, match="label_dropout must be in"):
        T.check(T.TrainConfig(label_dropout=1.5))
    with pytest.raises(ValueError, match="channels must be a multiple of 8"):
        T.check(T.TrainConfig(channels=12))
