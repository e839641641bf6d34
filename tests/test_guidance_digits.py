"""Digits inverse problems (optsample/zoo/digits/inverse.py) and the digits task= options of the runner."""

from __future__ import annotations

import json
import math

import pytest
import torch

from optsample.guidance import MeasurementLoss
from optsample.zoo.digits import inverse as I

from test_guidance_runner import resolved
from optsample.runner import app as R


def test_avgpool_is_the_block_mean():
    """AvgPool of a ramp x[i, j] = 8 i + j: the 2x2 block at (0, 0) averages 0, 1, 8, 9 -> 4.5; the 4x4 block
    8 mean(i) + mean(j) = 8 * 1.5 + 1.5 = 13.5 (hand-computed)."""
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    y = I.AvgPool(2)(x)
    assert y.shape == (1, 1, 4, 4) and float(y[0, 0, 0, 0]) == 4.5 and float(y[0, 0, 3, 3]) == 58.5
    assert I.AvgPool(4)(x).shape == (1, 1, 2, 2) and float(I.AvgPool(4)(x)[0, 0, 0, 0]) == 13.5


def test_blur_kernel_is_the_normalised_gaussian():
    """3x3 Gaussian, sigma 1: centre weight 1 / (1 + 2 e^-1/2)^2 = 0.2042 (closed form), sum 1."""
    kernel = I.GaussianBlur(1.0).kernel[0, 0]
    assert abs(float(kernel.sum()) - 1) < 1e-6
    assert abs(float(kernel[1, 1]) - 1 / (1 + 2 * math.exp(-0.5)) ** 2) < 1e-6
    delta = torch.zeros(1, 1, 8, 8)
    delta[0, 0, 4, 4] = 1.0
    assert torch.allclose(I.GaussianBlur(1.0)(delta)[0, 0, 3:6, 3:6], kernel)


def test_masks_drop_what_they_say():
    masks = I.random_mask(450, 0.9, torch.Generator().manual_seed(0))
    assert abs(float(1 - masks.mean()) - 0.9) < 0.01  # 28,800 Bernoulli(0.9) draws: sd 0.0018
    assert float(1 - I.box_mask().mean()) == 16 / 64  # the centre 4x4 box


def test_problem_of_sample_k_does_not_depend_on_n():
    small, large = I.make_problem("inpaint", 3, sigma_y=0.05, seed=1), I.make_problem("inpaint", 7, sigma_y=0.05, seed=1)
    assert torch.equal(small.y, large.y[:3]) and torch.equal(small.operator.mask, large.operator.mask[:3])
    clean = I.make_problem("sr", 4, factor=4, sigma_y=0.0)
    assert torch.equal(clean.y, torch.nn.functional.avg_pool2d(clean.truth, 4))


def test_psnr_of_a_constant_offset():
    """x = t + 0.1 everywhere (t = truth / 2, inside [-1, 1] after the shift): PSNR = 10 log10(2^2 / 0.01) =
    26.02 dB; SSIM of the truth itself is 1."""
    problem = I.make_problem("box", 6)
    psnr, _ = I.psnr_ssim(problem.truth / 2 + 0.1, problem.truth / 2)
    assert abs(psnr - 10 * math.log10(4 / 0.01)) < 1e-3 and abs(I.psnr_ssim(problem.truth, problem.truth)[1] - 1) < 1e-9


@pytest.mark.parametrize("make,message", [
    (lambda: I.Mask(torch.ones(1, 1, 4, 4)), r"mask must have shape \[N, 1, 8, 8\]"),
    (lambda: I.AvgPool(2)(torch.zeros(2, 1, 4, 4)), r"AvgPool's input must have shape \[N, 1, 8, 8\]"),
    (lambda: I.Mask(torch.ones(3, 1, 8, 8))(torch.zeros(2, 1, 8, 8)), "mask has 3 masks but x has 2 samples"),
    (lambda: I.AvgPool(3), "factor must be 2 or 4, got 3"),
    (lambda: I.make_problem("sr", 2, sigma_y=-0.1), "sigma_y must be >= 0, got -0.1"),
    (lambda: I.make_problem("deblur", 2), "kind must be one of"),
    (lambda: MeasurementLoss(I.AvgPool(2), torch.zeros(2, 1, 8, 8)).loss(torch.zeros(2, 1, 8, 8)),
     r"y has shape \(2, 1, 8, 8\) but operator\(x0_hat\) has shape \(2, 1, 4, 4\)"),
])
def test_bad_shapes_are_one_line_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_sample_index_selects_the_batch_rows():
    """A loss over the run's N measurements at sample_index equals the loss of the batch's own problem."""
    problem = I.make_problem("inpaint", 6, sigma_y=0.05)
    x0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = MeasurementLoss(problem.operator, problem.y, 0.05).loss(x0, torch.tensor([4, 1]))
    rows = [MeasurementLoss(I.Mask(problem.operator.mask[[k]]), problem.y[[k]], 0.05).loss(x0[[j]])
            for j, k in enumerate([4, 1])]
    assert torch.equal(whole, torch.cat(rows))
    with pytest.raises(ValueError, match="sample_index 9 is past the 6 measurements"):
        MeasurementLoss(problem.operator, problem.y, 0.05).loss(x0, torch.tensor([9, 1]))


DIGITS = ["logger=none", "metric=none", "progress=false", "sampler=ddim", "nfe=8", "n_samples=16"]


@pytest.mark.parametrize("overrides,message", [
    (["task=digits_sr2", "task.sigma_y=-0.1"], r"task.sigma_y must be >= 0, got -0.1"),
    (["task=digits_inpaint50", "task.drop=1.0"], r"task.drop must be in \[0, 1\), got 1.0"),
    (["task=digits_sr2", "task.factor=3"], "task.factor must be 2 or 4, got 3"),
    (["task=digits_blur", "guidance=exact"], "guidance.objective='exact' needs task=gmm_inverse"),
])
def test_bad_digits_task_config_fails_before_work(overrides, message):
    with pytest.raises(R.ConfigError, match=message):
        R.plan_run(resolved(DIGITS + overrides))


def test_digits_inpainting_row_guided_beats_unguided(tmp_path):
    """task=digits_inpaint50: DPS at lr 1 reconstructs (PSNR 16.7 dB at 20 NFE, 64 samples) where the unguided
    prior draws unrelated digits (8.7 dB): at 8 NFE, 16 samples the gap stays > 4 dB."""
    guided_row = R.execute(resolved(DIGITS + ["task=digits_inpaint50", "guidance=dps", "guidance.lr=1",
                                              f"results_dir={tmp_path}"]))
    prior_row = R.execute(resolved(DIGITS + ["task=digits_inpaint50", f"results_dir={tmp_path}"]))
    assert {"metric.psnr", "metric.ssim", "metric.fid_digits", "metric.accuracy"} <= set(guided_row)
    assert guided_row["metric.psnr"] > prior_row["metric.psnr"] + 4
    assert guided_row["task.drop"] == 0.5 and guided_row["nfe"] == 8


def test_guided_digits_batches_match_one_batch(tmp_path):
    """Per-sample measurements reach each batch: 16 samples in batches of 4 reconstruct as one batch of 16."""
    rows = [R.execute(resolved(DIGITS + ["task=digits_sr4", "guidance=dps", f"batch_size={b}", f"results_dir={tmp_path}"]))
            for b in (4, 16)]
    assert abs(rows[0]["metric.psnr"] - rows[1]["metric.psnr"]) < 1e-4


def test_logger_picture_is_measurement_reconstruction_truth(tmp_path):
    cfg = resolved(DIGITS + ["task=digits_sr2", "guidance=dps", "logger=csv", f"results_dir={tmp_path}"])
    plan = R.plan_run(cfg)
    built = R.build_model(R.guidance_tasks.model_config(cfg), torch.device("cpu"), torch.float32)
    _, task = R.guidance_tasks.prepare(cfg, built, R.resolve_schedule(plan, built), plan.hparams)
    reconstruction = torch.zeros(16, 1, 8, 8)
    picture = R.guidance_tasks.log_images(task, reconstruction)
    assert picture.shape == (16, 1, 8, 26)
    assert torch.equal(picture[..., :8], task.problem.operator.display(task.problem.y).clamp(-1, 1))
    assert torch.equal(picture[..., 9:17], reconstruction) and torch.equal(picture[..., 18:], task.problem.truth)


def test_shipped_judge_is_another_network_with_its_provenance():
    """The judge has no convolution (the guide is a CNN), its file's SHA-256 and held-out accuracy (0.978 when
    trained) are those its provenance records."""
    from optsample.zoo.digits import checkpoints, data, shipped_classifier, shipped_judge, training

    record = json.loads(checkpoints.asset(checkpoints.JUDGE_PROVENANCE_FILE).read_text())
    judge = shipped_judge()
    assert not any(isinstance(m, torch.nn.Conv2d) for m in judge.modules())
    assert any(isinstance(m, torch.nn.Conv2d) for m in shipped_classifier().modules())
    assert record["sha256"] == checkpoints.file_digest(checkpoints.asset(checkpoints.JUDGE_FILE))
    assert abs(training.accuracy(judge, *data.load("heldout")) - record["heldout_accuracy"]) < 1e-6
    assert record["heldout_accuracy"] > 0.95 and record["config"]["seed"] != 0  # the guide was trained with seed 0


def test_judge_training_is_seeded():
    """Two one-epoch trainings with the same seed give bitwise the same weights; another seed does not."""
    from optsample.zoo.digits import DigitsJudge, training

    def train(seed):
        net, _ = training.train_classifier(epochs=1, batch_size=256, lr=0.002, seed=seed, make_net=DigitsJudge)
        return torch.cat([p.flatten() for p in net.parameters()])

    first = train(3)
    assert torch.equal(first, train(3)) and not torch.equal(first, train(4))


def test_digits_class_guidance_row(tmp_path):
    """task=digits_class: the unconditional model lands on class k % 10 by chance (guide accuracy 0.14 at 20 NFE,
    100 samples); DPS on the guide's -log p(c | x0_hat) at lr 0.3 reaches 1.0 (guide) / 0.67 (judge). At 8 NFE,
    20 samples: guide accuracy > 0.8 and the judge above chance (> 0.3)."""
    base = DIGITS[:-1] + ["n_samples=20", "task=digits_class", f"results_dir={tmp_path}"]
    guided_row = R.execute(resolved(base + ["guidance=dps"]))
    assert guided_row["metric.guide_accuracy"] > 0.8 and guided_row["metric.judge_accuracy"] > 0.3
    assert "metric.fid_digits" in guided_row
    mpgd_row = R.execute(resolved(base + ["guidance=mpgd"]))  # through x0_hat only: runs, differs from DPS
    assert mpgd_row["metric.guide_accuracy"] != guided_row["metric.guide_accuracy"] or mpgd_row["metric.fid_digits"] != guided_row["metric.fid_digits"]


def test_csv_logger_saves_the_side_by_side_picture(tmp_path):
    """The run's samples.png is the grid of [8, 26] measurement | reconstruction | truth tiles, not of 8x8 samples."""
    from matplotlib.image import imread

    from optsample.runner import loggers

    R.execute(resolved(DIGITS + ["task=digits_box", "guidance=dps", "logger=csv", f"results_dir={tmp_path}"]),
              run_dir=str(tmp_path / "run"))
    saved = imread(tmp_path / "run" / "samples.png")
    expected = loggers.image_grid(torch.zeros(16, 1, 8, 26))
    assert saved.shape[:2] == expected.shape[:2] and saved.shape[:2] != loggers.image_grid(torch.zeros(16, 1, 8, 8)).shape[:2]
