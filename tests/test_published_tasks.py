"""The published image tasks (optsample/integrations/diffusers/inverse_tasks.py) and their operators
(optsample/guidance/operators.py): parity with literal transcriptions of the peers' operators, exact properties,
bad input, and each task end to end through the runner on a tiny random UNet2DModel saved in tmp_path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import optsample
from optsample import schedules
from optsample.guidance import MeasurementLoss, guided, operators
from optsample.integrations.diffusers import inverse_tasks as T
from optsample.runner import app as R

from test_guidance_runner import resolved


# ------------------------------------------------------------------- the peers' operators, transcribed


def peer_cubic(x):  # DPS2022 util/resizer.py (= adam-guidance image_inverse_operator.py) `cubic`, literally
    absx = np.abs(x)
    absx2 = absx ** 2
    absx3 = absx ** 3
    return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) +
            (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((1 < absx) & (absx <= 2)))


def peer_contributions(in_length, out_length, scale, kernel=peer_cubic, kernel_width=4.0, antialiasing=True):
    """Resizer.contributions, literally (numpy)."""
    fixed_kernel = (lambda arg: scale * kernel(scale * arg)) if antialiasing else kernel
    kernel_width *= 1.0 / scale if antialiasing else 1.0
    out_coordinates = np.arange(1, out_length + 1)
    shifted_out_coordinates = out_coordinates - (out_length - in_length * scale) / 2
    match_coordinates = shifted_out_coordinates / scale + 0.5 * (1 - 1 / scale)
    left_boundary = np.floor(match_coordinates - kernel_width / 2)
    expanded_kernel_width = np.ceil(kernel_width) + 2
    field_of_view = np.squeeze(
        np.int16(np.expand_dims(left_boundary, axis=1) + np.arange(expanded_kernel_width) - 1))
    weights = fixed_kernel(1.0 * np.expand_dims(match_coordinates, axis=1) - field_of_view - 1)
    sum_weights = np.sum(weights, axis=1)
    sum_weights[sum_weights == 0] = 1.0
    weights = 1.0 * weights / np.expand_dims(sum_weights, axis=1)
    mirror = np.uint(np.concatenate((np.arange(in_length), np.arange(in_length - 1, -1, step=-1))))
    field_of_view = mirror[np.mod(field_of_view, mirror.shape[0])]
    non_zero_out_pixels = np.nonzero(np.any(weights, axis=0))
    weights = np.squeeze(weights[:, non_zero_out_pixels])
    field_of_view = np.squeeze(field_of_view[:, non_zero_out_pixels])
    return weights, field_of_view


def peer_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Resizer(in_shape, 1 / factor).forward, literally: per resized dimension (H, then W), x[fov] * w summed."""
    in_shape, scale = list(x.shape), 1 / factor
    out_shape = [in_shape[0], in_shape[1], int(np.ceil(in_shape[2] * scale)), int(np.ceil(in_shape[3] * scale))]
    for dim in (2, 3):
        weights, fov = peer_contributions(in_shape[dim], out_shape[dim], scale)
        w = torch.tensor(weights.T, dtype=torch.float32).reshape(list(weights.T.shape) + 3 * [1])
        fov = torch.tensor(fov.T.astype(np.int32), dtype=torch.long)
        x = torch.transpose(x, dim, 0)
        x = torch.sum(x[fov] * w, dim=0)
        x = torch.transpose(x, dim, 0)
    return x


@pytest.mark.parametrize("size,factor", [(256, 4), (256, 16), (64, 4), (32, 16)])
def test_bicubic_down_matches_the_peers_resizer(size, factor):
    """BicubicDown (two matrices) = the peers' Resizer (gather and sum per dimension) to float32 rounding."""
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size + factor)) * 2 - 1
    ours = operators.BicubicDown(factor, (size, size))(x)
    theirs = peer_downsample(x, factor)
    assert ours.shape == theirs.shape == (2, 3, size // factor, size // factor)
    assert float((ours - theirs).abs().max()) < 2e-6


def test_downsampling_a_constant_image_gives_the_constant():
    """Each output pixel is a weighted mean (rows of the matrix sum to 1): SR of 0.37 everywhere is 0.37."""
    x = torch.full((1, 3, 64, 64), 0.37, dtype=torch.float64)
    for factor in (4, 16):
        assert float(operators.bicubic_down_matrix(64, factor).sum(1).sub(1).abs().max()) < 1e-12
        y = torch.einsum("ih,nchw,jw->ncij", operators.bicubic_down_matrix(64, factor), x,
                         operators.bicubic_down_matrix(64, factor))
        assert float((y - 0.37).abs().max()) < 1e-12


def peer_gaussian_kernel(kernel_size, std):  # Blurkernel.weights_init('gaussian'), literally
    import scipy.ndimage

    n = np.zeros((kernel_size, kernel_size))
    n[kernel_size // 2, kernel_size // 2] = 1
    return scipy.ndimage.gaussian_filter(n, sigma=std)


@pytest.mark.parametrize("sigma", [3.0, 12.0])
def test_blur_kernel_is_the_peers_61x61_kernel(sigma):
    """gaussian_kernel_1d(61, sigma, truncate=4) outer itself = scipy.ndimage.gaussian_filter of a centred delta
    (DPS2022 / adam-guidance Blurkernel) to 1e-15; at sigma 12 the radius 48 reaches past the window and the
    reflected tails fold back in (scipy's 'reflect'); the kernel sums to 1."""
    k1 = operators.gaussian_kernel_1d(61, sigma, truncate=4.0)
    kernel = torch.outer(k1, k1).numpy()
    assert np.abs(kernel - peer_gaussian_kernel(61, sigma)).max() < 1e-15
    assert abs(kernel.sum() - 1) < 1e-12


def test_blur_matches_the_peers_reflection_padded_depthwise_conv():
    """GaussianBlur(3, 61, reflect) = nn.ReflectionPad2d(30) + Conv2d(3, 3, 61, groups=3) with the scipy kernel
    (Blurkernel.seq, literally) on a 64x64 image, to float32 rounding; blurring a constant gives the constant."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    seq = torch.nn.Sequential(torch.nn.ReflectionPad2d(61 // 2), torch.nn.Conv2d(3, 3, 61, stride=1, padding=0, bias=False, groups=3))
    for _, f in seq.named_parameters():
        f.data.copy_(torch.from_numpy(peer_gaussian_kernel(61, 3.0)))
    blur = operators.GaussianBlur(3.0, 61, truncate=4.0, padding="reflect")
    with torch.no_grad():
        assert float((blur(x) - seq(x)).abs().max()) < 1e-6
    assert float((blur(torch.full((1, 3, 40, 40), -0.25)) + 0.25).abs().max()) < 1e-6


def test_inpainting_masks_are_the_peers():
    """random_mask = adam-guidance's `(torch.rand((N, 1, H, W), generator) > 0.9).float()` bit for bit (same
    seed); exact_random_mask drops exactly int(0.9 H W) pixels of every mask (DPS2022's count); one mask covers
    all three channels."""
    masks = operators.random_mask(5, (32, 32), 0.9, torch.Generator().manual_seed(42))
    theirs = (torch.rand((5, 1, 32, 32), generator=torch.Generator().manual_seed(42)) > 0.9).float()
    assert torch.equal(masks, theirs)
    exact = operators.exact_random_mask(4, (32, 48), 0.9, torch.Generator().manual_seed(0))
    assert exact.shape == (4, 1, 32, 48) and (exact.flatten(1).sum(1) == 32 * 48 - int(32 * 48 * 0.9)).all()
    y = operators.Mask(exact)(torch.ones(4, 3, 32, 48))
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2]) and torch.equal(y[:, :1], exact)


def test_load_image_resizes_the_shorter_side_and_centre_crops(tmp_path):
    """A 40x24 image of one colour stays that colour (bilinear of a constant); an image of the target size is
    read unchanged, (v / 255) * 2 - 1; a 24x40 ramp keeps its centre rows after the crop."""
    Image.new("RGB", (40, 24), (255, 0, 51)).save(tmp_path / "wide.png")
    wide = T.load_image(tmp_path / "wide.png", 16, True)
    assert wide.shape == (3, 16, 16)
    assert torch.allclose(wide, torch.tensor([1.0, -1.0, 51 / 255 * 2 - 1])[:, None, None].expand(3, 16, 16), atol=1e-6)
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    assert torch.equal(T.load_image(tmp_path / "exact.png", 16, True), torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 * 2 - 1)
    ramp = np.repeat(np.arange(40, dtype=np.uint8)[:, None, None] * 5, 24, axis=1).repeat(3, axis=2)  # 40 rows x 24 columns
    Image.fromarray(ramp).save(tmp_path / "tall.png")
    tall = T.load_image(tmp_path / "tall.png", 24, True)  # no resize (shorter side 24), crop rows 8..31
    assert torch.equal(tall[0, :, 0], torch.arange(8, 32).float() * 5 / 255 * 2 - 1)


# ---------------------------------------------------------------------------------- the tasks, end to end


def save_tiny_unet(folder, size: int = 32) -> str:
    """A random UNet2DModel (3 x size x size) with a DDPM schedule, saved as a DDPMPipeline (no download)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet.eval(), scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder)
    return str(folder)


def write_images(folder, n: int, size=(40, 36), seed: int = 0) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"img{k:02d}.png")
    return str(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    return {"model": save_tiny_unet(root / "unet"), "data": write_images(root / "cats", 3), "root": root}


def task_args(tiny, task: str) -> list:
    return [f"task={task}", f"task.model={tiny['model']}", f"task.data_dir={tiny['data']}", "task.image_size=32"]


RUN = ["logger=none", "metric=none", "progress=false", "device=cpu", "sampler=ddim", "sampler.eta=1.0",
       "schedule=discrete", "schedule.spacing=leading", "steps=2"]


@pytest.mark.parametrize("task", ["cat_sr4", "cat_sr16", "cat_deblur", "cat_inpaint90"])
def test_each_inverse_task_runs_through_the_runner(tiny, task, tmp_path):
    """2 DDIM steps (eta 1) of AdamDPS on a tiny random UNet: the row has the task's PSNR / SSIM, NFE 2."""
    cfg = resolved(RUN + task_args(tiny, task) + ["guidance=adam_dps", "n_samples=4", "batch_size=3",
                                                  f"results_dir={tmp_path}"])
    row = R.execute(cfg)
    assert row["task.name"] == task and row["nfe"] == 2 and row["guidance.name"] == "adam_dps"
    assert math.isfinite(row["metric.psnr"]) and -1 <= row["metric.ssim"] <= 1


def test_inpainting_row_is_the_hand_composed_run(tiny, tmp_path):
    """task=cat_inpaint90 guidance=dps, 4 samples in batches of 3 (per-sample masks reach each batch by sample
    number): the row's PSNR equals the same problem, guided model and seeds composed by hand in one batch,
    and differs from the unguided run's (guidance acts)."""
    args = RUN + task_args(tiny, "cat_inpaint90") + ["n_samples=4", "batch_size=3", f"results_dir={tmp_path}"]
    row = R.execute(resolved(args + ["guidance=dps", "guidance.lr=50"]))
    unguided = R.execute(resolved(args))
    task = resolved(args)["task"]
    problem = T.make_problem(task, 4)
    from optsample.integrations.diffusers.adapters import load_unet_denoiser

    denoiser = load_unet_denoiser(tiny["model"])
    sigmas = schedules.discrete(denoiser.alphas_cumprod, 2, spacing="leading")
    model = guided(denoiser, MeasurementLoss(problem.operator, problem.y, 0.0), rule="sgd", lr=50.0, lr_schedule="dps",
                   sigmas=sigmas, eta=1.0)
    x = optsample.initial_noise(range(4), (3, 32, 32)) * sigmas[0]
    with torch.no_grad():
        out = optsample.sample("ddim", model, x, sigmas, seeds=range(4), eta=1.0,
                               extra_args={"sample_index": torch.arange(4)})
    psnr, ssim = operators.psnr_ssim(out.clamp(-1, 1), problem.truth)
    assert row["metric.psnr"] == pytest.approx(psnr, abs=1e-4) and row["metric.ssim"] == pytest.approx(ssim, abs=1e-4)
    assert abs(row["metric.psnr"] - unguided["metric.psnr"]) > 1e-3


def test_fid_extra_with_a_cheap_feature_net(tiny, tmp_path):
    cfg = resolved(RUN + task_args(tiny, "cat_sr4") + ["task.fid_feature_net=avgpool4", "n_samples=3",
                                                       f"results_dir={tmp_path}"])
    row = R.execute(cfg)
    assert math.isfinite(row["metric.fid"]) and row["metric.fid"] >= 0


def peer_resnet18_keys():
    """The parameter / buffer names and shapes of adam-guidance tasks/networks/resnet.py ResNet18 (its
    __init__ without the checkpoint load), literally."""
    nn, F = torch.nn, torch.nn.functional

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, in_planes, planes, stride=1):
            super(BasicBlock, self).__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != self.expansion * planes:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(self.expansion * planes))

    class ResNet18(nn.Module):
        def __init__(self, block=BasicBlock, num_blocks=None, num_classes=10):
            super(ResNet18, self).__init__()
            if num_blocks is None:
                num_blocks = [2, 2, 2, 2]
            self.in_planes = 64
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
            self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
            self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
            self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512 * block.expansion, num_classes)

        def _make_layer(self, block, planes, num_blocks, stride):
            strides = [stride] + [1] * (num_blocks - 1)
            layers = []
            for stride in strides:
                layers.append(block(self.in_planes, planes, stride))
                self.in_planes = planes * block.expansion
            return nn.Sequential(*layers)

    del F
    return {k: tuple(v.shape) for k, v in ResNet18().state_dict().items()}


def test_resnet18_loads_the_peers_state_dict():
    """Our ResNet-18 has exactly the peer's state-dict names and shapes (so resnet_cifar10.pt loads), 11.17 M
    parameters, and gives logits [N, 10] of a 32x32 image."""
    ours = T.ResNet18()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == peer_resnet18_keys()
    assert sum(p.numel() for p in ours.parameters()) == 11173962
    assert ours.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def save_constant_judge(folder, label: int = 3) -> str:
    """A tiny transformers ConvNext image classifier (+ its image processor) whose head always answers ``label``."""
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

    model = ConvNextForImageClassification(ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                                          num_labels=10, image_size=32))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[label] = 1.0
    model.save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folder)
    return str(folder)


def test_cifar10_class_guidance_runs_through_the_runner(tiny, tmp_path):
    """task=cifar10_class with a narrow ResNet-18 state dict (width 4, read from the file), AdamDPS's rule on the
    classifier gradient, 2 DDIM steps: labels k % 10 = 0, 1, 2, 3, so a judge that always answers 3 scores
    exactly 0.25; FID against a reference .pt with avgpool4 features is finite."""
    torch.manual_seed(1)
    torch.save(T.ResNet18(width=4).state_dict(), tmp_path / "resnet.pt")
    torch.save(torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1, tmp_path / "reference.pt")
    cfg = resolved(RUN + ["task=cifar10_class", f"task.model={tiny['model']}", f"task.classifier={tmp_path / 'resnet.pt'}",
                          f"task.judge={save_constant_judge(tmp_path / 'judge')}", f"task.fid_reference={tmp_path / 'reference.pt'}",
                          "task.feature_net=avgpool4", "guidance=adam_dps", "n_samples=4", f"results_dir={tmp_path}"])
    row = R.execute(cfg)
    assert row["task.name"] == "cifar10_class" and row["nfe"] == 2 and 0 <= row["metric.guide_accuracy"] <= 1
    assert row["metric.judge_accuracy"] == 0.25 and math.isfinite(row["metric.fid"])
    assert torch.equal(T.target_labels(12, -1, 10)[10:], torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra,message", [
    (["task.data_dir=null"], r"task.data_dir is not set: give task.data_dir=<a folder of \.png / \.jpg images>"),
    (["task.data_dir=/nonexistent/cats"], "task.data_dir '/nonexistent/cats' is not a directory"),
    (["task.resize=false"], r"image img00.png is 40x36, but task.image_size is 32 and task.resize=false"),
    (["task.sigma_y=-0.1"], "task.sigma_y must be >= 0, got -0.1"),
    (["task.factor=3"], "task.factor must divide task.image_size 32, got 3"),
    (["task.fid_feature_net=inceptio"], "task.fid_feature_net must be one of"),
])
def test_bad_task_input_fails_before_work(tiny, extra, message):
    with pytest.raises(R.ConfigError, match=message):
        R.plan_run(resolved(RUN + task_args(tiny, "cat_sr4") + extra))


def test_empty_folder_and_wrong_model_size_are_one_line_errors(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(R.ConfigError, match="holds no .png / .jpg / .jpeg images"):
        R.plan_run(resolved(RUN + task_args(tiny, "cat_sr4") + [f"task.data_dir={tmp_path / 'empty'}"]))
    cfg = resolved(RUN + task_args(tiny, "cat_sr4")[:-1] + ["n_samples=2", f"results_dir={tmp_path}"])  # image_size 256
    with pytest.raises(ValueError, match=r"task.image_size 256 does not match the model's sample shape \(3, 32, 32\)"):
        R.execute(cfg)
    with pytest.raises(R.ConfigError, match="task.classifier is not set"):
        R.plan_run(resolved(RUN + ["task=cifar10_class"]))


@pytest.mark.skipif(T.importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_lpips_without_torchvision_names_the_extra(tiny):
    with pytest.raises(R.ConfigError, match=r"task.lpips=true needs torchvision .*pip install 'optsample\[inception\]'"):
        R.plan_run(resolved(RUN + task_args(tiny, "cat_sr4") + ["task.lpips=true"]))
    with pytest.raises(ImportError, match=r"pip install 'optsample\[inception\]'"):
        T.lpips(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ------------------------------------------------------------------------------ the published configs


@pytest.mark.parametrize("experiment,task,lr,betas", [
    ("published_adam_dps_cats", "cat_sr4", 0.028345205024078887, (0.1379679693259383, 0.03214589787727347)),
    ("published_adam_dps_cifar10", "cifar10_class", 0.034016831764649244, (0.0, 0.816854997120548)),
    ("published_dps2022_cats", "cat_sr4", 0.3, None),
])
def test_published_configs_plan_with_the_peers_settings(tiny, tmp_path, experiment, task, lr, betas):
    """Each committed experiment composes and passes the run's checks (with local files; LPIPS / FID off, as
    this machine has no torchvision), at the peers' settings: AdamDPS 100 leading DDIM steps of 1000 at eta 1
    with the best (s, beta1, beta2) of adam-guidance's search CSVs (README of results/.../published.md); DPS2022
    1000 steps, scale 0.3, sigma_y 0.05."""
    torch.save(T.ResNet18(width=4).state_dict(), tmp_path / "resnet.pt")
    local = ([f"task.classifier={tmp_path / 'resnet.pt'}"] if task == "cifar10_class" else
             [f"task.data_dir={tiny['data']}", "task.lpips=false", "task.fid_feature_net=null"])
    cfg = resolved([f"experiment={experiment}", "logger=none"] + local)
    plan = R.plan_run(cfg)
    assert cfg["task"]["name"] == task and cfg["guidance"]["lr"] == lr and cfg["sampler"] == {"name": "ddim", "eta": 1.0}
    assert plan.key and cfg["schedule"]["spacing"] == "leading" and cfg["steps"] == (1000 if "dps2022" in experiment else 100)
    if betas is not None:
        assert (cfg["guidance"]["rule"], cfg["guidance"]["lr_schedule"]) == ("adam", "adam_dps")
        assert (cfg["guidance"]["beta1"], cfg["guidance"]["beta2"]) == betas
    else:
        assert (cfg["guidance"]["rule"], cfg["guidance"]["lr_schedule"], cfg["task"]["sigma_y"]) == ("sgd", "dps", 0.05)


def test_the_adam_dps_config_is_adam_guidance_loop_on_a_unet(tiny):
    """What published_adam_dps_cats runs (schedule=discrete spacing=leading, ddim eta 1, guided rule adam with
    lr_schedule adam_dps) == optsample.guidance.published.adam_dps (tested against adam-guidance's loop) with
    the timesteps of the peer's scheduler, diffusers DDIMScheduler.from_config(DDPM config).set_timesteps(10)
    (its diffusion/unet/huggingface.py), no clipping, on the tiny UNet in float64: <= 1e-9. With linspace
    spacing (other timesteps) the two differ: the check can fail."""
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    from optsample.guidance.published import adam_dps
    from optsample.integrations.diffusers.adapters import unet_denoiser

    unet = UNet2DModel.from_pretrained(tiny["model"], subfolder="unet").double().eval()
    ddpm = DDPMScheduler.from_pretrained(tiny["model"], subfolder="scheduler")
    ddim = DDIMScheduler.from_config(ddpm.config)
    ddim.set_timesteps(10)
    truth = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    operator = operators.BicubicDown(4, (32, 32))
    loss = MeasurementLoss(operator, operator(truth.float()).double())
    seeds, hp = [7, 8], dict(beta1=0.14, beta2=0.03)
    x_vp = optsample.initial_noise(seeds, (3, 32, 32), dtype=torch.float64)
    with torch.no_grad():
        theirs = adam_dps(lambda x, t: unet(x, t).sample, x_vp, loss, ddpm.alphas_cumprod.double(), ddim.timesteps.tolist(),
                          scale=0.03, eta=1.0, seeds=seeds, **hp)
        denoiser = unet_denoiser(unet, ddpm)
        for spacing, close in (("leading", True), ("linspace", False)):
            sigmas = schedules.discrete(denoiser.alphas_cumprod, 10, spacing=spacing)
            model = guided(denoiser, loss, rule="adam", lr=0.03, lr_schedule="adam_dps", sigmas=sigmas, eta=1.0, **hp)
            ours = optsample.sample("ddim", model, x_vp * (1 + sigmas[0] ** 2).sqrt(), sigmas, seeds=seeds, eta=1.0)
            assert (float((ours - theirs).abs().max()) <= 1e-9) == close


def test_the_dps2022_config_is_dps2022s_loop_on_a_unet(tiny):
    """What published_dps2022_cats runs (ddim eta 1 on the leading discrete schedule, guided sgd with lr_schedule
    dps) == optsample.guidance.published.dps (DPS2022's DDPM loop, fixed_small variance: tested against their
    code) on a tiny float64 UNet, 10 respaced steps, scale 0.3, sigma_y 0.05 measurement: <= 1e-9."""
    from diffusers import DDPMScheduler, UNet2DModel

    from optsample.guidance.published import dps
    from optsample.integrations.diffusers.adapters import unet_denoiser

    unet = UNet2DModel.from_pretrained(tiny["model"], subfolder="unet").double().eval()
    ddpm = DDPMScheduler.from_pretrained(tiny["model"], subfolder="scheduler")
    generator = torch.Generator().manual_seed(4)
    truth = torch.rand(2, 3, 32, 32, generator=generator, dtype=torch.float64) * 2 - 1
    operator = operators.GaussianBlur(3.0, 61, truncate=4.0, padding="reflect")
    loss = MeasurementLoss(operator, operator(truth.float()).double() + 0.05 * torch.randn(2, 3, 32, 32, generator=generator,
                                                                                            dtype=torch.float64), 0.05)
    seeds = [3, 4]
    x_vp = optsample.initial_noise(seeds, (3, 32, 32), dtype=torch.float64)
    denoiser = unet_denoiser(unet, ddpm)
    sigmas = schedules.discrete(denoiser.alphas_cumprod, 10, spacing="leading")
    timesteps = schedules.discrete_timesteps(1000, 10, "leading").long().tolist()
    theirs = dps(lambda x, t: unet(x, t).sample, x_vp, loss, ddpm.alphas_cumprod.double(), timesteps, scale=0.3, seeds=seeds)
    model = guided(denoiser, loss, rule="sgd", lr=0.3, lr_schedule="dps", sigmas=sigmas, eta=1.0)
    with torch.no_grad():
        ours = optsample.sample("ddim", model, x_vp * (1 + sigmas[0] ** 2).sqrt(), sigmas, seeds=seeds, eta=1.0)
    assert float((ours - theirs).abs().max()) <= 1e-9
