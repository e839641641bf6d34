"""The published image tasks of guidance as optimization, on diffusers ``UNet2DModel`` checkpoints (users' GPUs).

    optsample-run task=cat_sr4 task.data_dir=~/cats guidance=adam_dps sampler=ddim sampler.eta=1 \
        schedule=discrete schedule.spacing=leading steps=100 device=cuda

Tasks (``task=``), as christianbelardi/adam-guidance (Belardi et al., ICLR 2026) runs them on
``google/ddpm-ema-cat-256`` (its DDPM schedule through :func:`~.adapters.load_unet_denoiser`):

* ``cat_sr4`` / ``cat_sr16``: super-resolution x4 / x16, the antialiased bicubic ``Resizer``
  (:class:`optsample.guidance.operators.BicubicDown`; adam-guidance ``tasks/super_resolution.py``, DPS2022
  ``guided_diffusion/measurements.py`` ``super_resolution``);
* ``cat_deblur``: Gaussian blur 61x61, sigma 3, reflection padding (``tasks/gaussian_deblur.py`` ``intensity=3``;
  DPS2022 ``gaussian_blur``); ``task.blur_sigma=12`` is their ``gaussian_deblur_12``;
* ``cat_inpaint90``: random inpainting, 90 % of the pixels dropped, one mask per image shared by the channels
  (``tasks/inpainting.py``: ``rand(N, 1, H, W) > 0.9``; ``task.mask=exact`` drops exactly int(0.9 H W) pixels,
  DPS2022's ``mask_generator``);
* ``cifar10_class``: class guidance of ``google/ddpm-cifar10-32`` by the peer's guide classifier, a CIFAR
  ResNet-18 (``tasks/networks/resnet.py``; its ``resnet_cifar10.pt`` state dict from ``task.classifier``),
  scored by guide accuracy and, with ``task.judge`` (a transformers image classifier, the peer's evaluator is
  ``ahsanjavid/convnext-tiny-finetuned-cifar10``), by a judge's accuracy.

Images come from ``task.data_dir`` (png / jpg, sorted by name; nothing ships, nothing downloads): converted to
RGB, the shorter side resized to ``task.image_size`` (PIL bilinear) and centre-cropped (torchvision's
``Resize`` + ``CenterCrop``, as the peer's ``tasks/utils.py``), to [-1, 1]. Sample k reconstructs image
(offset + k) mod n; masks and measurement noise are drawn per image from ``Generator(problem_seed)``, so
sample k's problem does not depend on the run's size. ``y = A(x0) + sigma_y n``; ``sigma_y`` 0 by default
(adam-guidance's ``gaussian_observation_noise_sigma``), 0.05 for DPS2022's settings.

Metrics: PSNR and SSIM (torchmetrics, data range 2); optional extras, off by default: ``task.lpips=true``
(torchmetrics LPIPS, SqueezeNet, inputs in [0, 1], as the peer's ``evaluations/image.py``; needs torchvision)
and ``task.fid_feature_net=inception`` (FID of the reconstructions against the task's own images; needs
torch-fidelity). The runner calls this module through :mod:`optsample.runner.guidance_tasks`: ``TASKS``,
``check``, ``model_config``, ``prepare``, ``metrics``, ``log_images``.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ...guidance import ClassifierLoss, MeasurementLoss, operators
from ...models.registry import BuiltModel

CAT_MODEL = "google/ddpm-ema-cat-256"
CIFAR10_MODEL = "google/ddpm-cifar10-32"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
KINDS = ("sr", "blur", "inpaint")
MASKS = ("bernoulli", "exact")
EXTRA = "pip install 'optsample[inception]' (it pulls torchvision)"


@dataclass
class ImageInverseTaskConfig:
    """An image inverse problem on a UNet2DModel checkpoint (module docstring)."""

    name: str = "cat_sr4"
    kind: str = "sr"  # sr | blur | inpaint
    factor: int = 4  # sr: the downscale factor
    blur_sigma: float = 3.0  # blur: the Gaussian's width (adam-guidance's "intensity")
    blur_size: int = 61  # blur: the kernel's size
    drop: float = 0.9  # inpaint: the fraction of pixels dropped
    mask: str = "bernoulli"  # inpaint: bernoulli (each pixel, adam-guidance) | exact (int(drop H W) pixels, DPS2022)
    sigma_y: float = 0.0
    data_dir: Optional[str] = None  # a folder of .png / .jpg images (the truth)
    model: str = CAT_MODEL  # hub id (downloaded beforehand) or a save_pretrained directory of a UNet2DModel pipeline
    image_size: int = 256
    resize: bool = True  # shorter side to image_size, then centre crop; false: every image must be image_size already
    offset: int = 0  # the first image (tuning and held-out problems use different offsets)
    problem_seed: int = 0
    lpips: bool = False  # optional extra: needs torchvision
    fid_feature_net: Optional[str] = None  # e.g. inception (needs torch-fidelity): FID against the task's images


@dataclass
class ClassGuidanceTaskConfig:
    """Class guidance of a UNet2DModel checkpoint by a CIFAR ResNet-18 on x0_hat (module docstring)."""

    name: str = "cifar10_class"
    model: str = CIFAR10_MODEL
    classifier: Optional[str] = None  # the guide: a ResNet-18 state dict (.pt), e.g. TFG's resnet_cifar10.pt
    target: int = -1  # -1: sample k is guided to class k % num_classes; else every sample to this class
    judge: Optional[str] = None  # a transformers image classifier (hub id downloaded beforehand, or a directory)
    fid_reference: Optional[str] = None  # reference images (.npz / .pt / folder) for FID; None: no FID
    feature_net: str = "inception"  # FID's features (inception needs torch-fidelity)


TASKS = {
    "cat_sr4": functools.partial(ImageInverseTaskConfig, kind="sr", factor=4),
    "cat_sr16": functools.partial(ImageInverseTaskConfig, kind="sr", factor=16),
    "cat_deblur": functools.partial(ImageInverseTaskConfig, kind="blur"),
    "cat_inpaint90": functools.partial(ImageInverseTaskConfig, kind="inpaint", drop=0.9),
    "cifar10_class": ClassGuidanceTaskConfig,
}


# ----------------------------------------------------------------------------------------------
# Images from a folder.


def image_files(data_dir: Optional[str]) -> list[Path]:
    """The sorted .png / .jpg files of ``data_dir``; one-line errors for no folder or no images."""
    if not data_dir:
        raise ValueError("task.data_dir is not set: give task.data_dir=<a folder of .png / .jpg images>")
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise ValueError(f"task.data_dir {data_dir!r} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"task.data_dir {data_dir!r} holds no {' / '.join(IMAGE_SUFFIXES)} images")
    return files


def check_sizes(files: list[Path], image_size: int, resize: bool) -> None:
    """Without resizing every image must be image_size x image_size (PIL reads only the header)."""
    from PIL import Image

    if resize:
        return
    for path in files:
        with Image.open(path) as image:
            if image.size != (image_size, image_size):
                raise ValueError(f"image {path.name} is {image.size[0]}x{image.size[1]}, but task.image_size is "
                                 f"{image_size} and task.resize=false (set task.resize=true to resize and crop)")


def load_image(path: Path, image_size: int, resize: bool) -> torch.Tensor:
    """[3, S, S] in [-1, 1]: torchvision ``Resize(S)`` (shorter side to S, the longer int(S long / short),
    PIL bilinear) + ``CenterCrop(S)`` (offsets int(round((h - S) / 2))) + ``ToTensor`` + ``Normalize(0.5, 0.5)``."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    if resize:
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        size = (image_size, int(image_size * long / short))
        new_w, new_h = size if w <= h else size[::-1]
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BILINEAR)
        top, left = int(round((new_h - image_size) / 2.0)), int(round((new_w - image_size) / 2.0))
        image = image.crop((left, top, left + image_size, top + image_size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels.float() / 255 * 2 - 1


# ----------------------------------------------------------------------------------------------
# The inverse problems.


@dataclass
class ImageInverse:
    """truth [N, 3, S, S], its operator and y = A(truth) + sigma_y n, for the run's N samples."""

    operator: operators.Operator
    truth: torch.Tensor
    y: torch.Tensor
    sigma_y: float
    task: dict


def make_operator(task: dict, n_images: int, generator: torch.Generator) -> operators.Operator:
    size = (task["image_size"], task["image_size"])
    if task["kind"] == "sr":
        return operators.BicubicDown(task["factor"], size)
    if task["kind"] == "blur":
        return operators.GaussianBlur(task["blur_sigma"], task["blur_size"], truncate=4.0, padding="reflect")
    draw = operators.random_mask if task["mask"] == "bernoulli" else operators.exact_random_mask
    return operators.Mask(draw(n_images, size, task["drop"], generator))


def make_problem(task: dict, n: int) -> ImageInverse:
    """The problem of samples 0..n-1: image (offset + k) mod n_images, its mask and noise (module docstring)."""
    files = image_files(task["data_dir"])
    check_sizes(files, task["image_size"], task["resize"])
    index = (task["offset"] + torch.arange(n)) % len(files)
    used = sorted(set(index.tolist()))
    loaded = {k: load_image(files[k], task["image_size"], task["resize"]) for k in used}
    truth = torch.stack([loaded[k] for k in index.tolist()])
    generator = torch.Generator().manual_seed(task["problem_seed"])
    operator = make_operator(task, len(files), generator)
    if isinstance(operator, operators.Mask):
        operator = operator.select(index)
    clean = operator(truth)
    noise = torch.randn((len(files), *clean.shape[1:]), generator=generator)[index]
    return ImageInverse(operator, truth, clean + task["sigma_y"] * noise, float(task["sigma_y"]), task)


def lpips(reconstruction: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean LPIPS (SqueezeNet, inputs in [0, 1]: the peer's ``LearnedPerceptualImagePatchSimilarity(net_type=
    'squeeze', normalize=True)``)."""
    if importlib.util.find_spec("torchvision") is None:
        raise ImportError(f"task.lpips=true needs torchvision (LPIPS's SqueezeNet): {EXTRA}")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type="squeeze", normalize=True)
    for start in range(0, reconstruction.shape[0], 16):  # the mean over all images, 16 at a time
        metric.update((reconstruction[start:start + 16].float().cpu().clamp(-1, 1) + 1) / 2,
                      (truth[start:start + 16].float().cpu() + 1) / 2)
    return float(metric.compute())


def fid(samples: torch.Tensor, reference: torch.Tensor, feature_net: str) -> float:
    from ...metrics.features import extract_features
    from ...metrics.features import feature_net as make_feature_net
    from ...metrics.image import frechet_distance

    net = make_feature_net(feature_net)
    return frechet_distance(extract_features(reference.float().cpu(), net), extract_features(samples.float().cpu(), net))


def reconstruction_metrics(problem: ImageInverse, samples: torch.Tensor) -> dict[str, float]:
    """psnr, ssim; lpips and fid when the task asks for them."""
    if samples.shape != problem.truth.shape:
        raise ValueError(f"reconstructions have shape {tuple(samples.shape)}, the truth {tuple(problem.truth.shape)}")
    if not bool(torch.isfinite(samples).all()):
        return {"psnr": -float("inf"), "ssim": -float("inf")}
    psnr, ssim = operators.psnr_ssim(samples, problem.truth)
    values = {"psnr": psnr, "ssim": ssim}
    if problem.task["lpips"]:
        values["lpips"] = lpips(samples, problem.truth)
    if problem.task["fid_feature_net"]:
        values["fid"] = fid(samples, problem.truth, problem.task["fid_feature_net"])
    return values


# ----------------------------------------------------------------------------------------------
# CIFAR-10 class guidance: the peer's guide classifier.


class BasicBlock(nn.Module):
    """The CIFAR ResNet basic block (He et al. 2016; adam-guidance ``tasks/networks/resnet.py`` ``BasicBlock``)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """The peer's CIFAR ResNet-18 (``tasks/networks/resnet.py``; same parameter names, so its state dict
    loads), returning logits of images in [-1, 1] (the peer feeds x0_hat unnormalised). ``width`` 64 as theirs."""

    def __init__(self, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes, layers = width, []
        for k, stride in enumerate((1, 2, 2, 2)):
            out = width * 2**k
            layers.append(nn.Sequential(BasicBlock(planes, out, stride), BasicBlock(out, out, 1)))
            planes = out
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def classifier_file(path: Optional[str]) -> Path:
    if not path:
        raise ValueError("task.classifier is not set: give task.classifier=<a ResNet-18 state dict .pt, e.g. resnet_cifar10.pt>")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"task.classifier {path!r} does not exist")
    return file


def load_classifier(path: Optional[str]) -> ResNet18:
    """The guide from a ResNet-18 state dict (width and classes read from it), in eval mode, frozen."""
    file = classifier_file(path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "conv1.weight" not in state or "fc.weight" not in state:
        raise ValueError(f"task.classifier {path!r} is not a ResNet-18 state dict (no conv1.weight / fc.weight)")
    net = ResNet18(num_classes=state["fc.weight"].shape[0], width=state["conv1.weight"].shape[0])
    net.load_state_dict(state)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


@dataclass
class ClassGuidance:
    classifier: nn.Module
    labels: torch.Tensor
    task: dict


def target_labels(n: int, target: int, num_classes: int) -> torch.Tensor:
    if target == -1:
        return torch.arange(n) % num_classes
    if not 0 <= target < num_classes:
        raise ValueError(f"task.target must be -1 or a class in [0, {num_classes - 1}], got {target}")
    return torch.full((n,), target, dtype=torch.long)


def _to_uint8(images: torch.Tensor):
    """[N, H, W, 3] uint8 numpy from [-1, 1] (DDPMPipeline's (x / 2 + 0.5).clamp(0, 1), rounded)."""
    return ((images.detach().float().cpu().clamp(-1, 1) / 2 + 0.5) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def judge_accuracy(path: str, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256, device="cpu") -> float:
    """Accuracy of a transformers image classifier on the samples (the peer's evaluator: AutoImageProcessor +
    AutoModelForImageClassification on the uint8 images)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from .adapters import _load

    processor, model = _load(AutoImageProcessor, path), _load(AutoModelForImageClassification, path).to(device).eval()
    pixels, predicted = _to_uint8(images), []
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            inputs = processor(images=list(pixels[start:start + batch_size]), return_tensors="pt")
            predicted.append(model(**{k: v.to(device) for k, v in inputs.items()}).logits.argmax(-1).cpu())
    return float((torch.cat(predicted) == labels.cpu()).double().mean())


def class_metrics(problem: ClassGuidance, samples: torch.Tensor) -> dict[str, float]:
    if not bool(torch.isfinite(samples).all()):
        return {"guide_accuracy": 0.0}
    device = next(problem.classifier.parameters()).device
    with torch.no_grad():
        predicted = torch.cat([problem.classifier(samples[i:i + 256].to(device, torch.float32)).argmax(1).cpu()
                               for i in range(0, samples.shape[0], 256)])
    values = {"guide_accuracy": float((predicted == problem.labels).double().mean())}
    task = problem.task
    if task["judge"]:
        values["judge_accuracy"] = judge_accuracy(task["judge"], samples, problem.labels, device=device)
    if task["fid_reference"]:
        from .runner import load_reference_images

        values["fid"] = fid(samples, load_reference_images(task["fid_reference"]), task["feature_net"])
    return values


# ----------------------------------------------------------------------------------------------
# The runner's interface (optsample.runner.guidance_tasks).


def _is_class(task: dict) -> bool:
    return task["name"] == "cifar10_class" or "classifier" in task


def check(task: dict) -> None:
    """Validate the task section before any work (one line naming the key)."""
    if _is_class(task):
        classifier_file(task["classifier"])
        if task["target"] < -1:
            raise ValueError(f"task.target must be -1 or a class index, got {task['target']}")
        if task["fid_reference"]:
            _check_feature_net(task["feature_net"], "task.feature_net")
            _check_file(task["fid_reference"], "task.fid_reference")
        return
    if task["kind"] not in KINDS:
        raise ValueError(f"task.kind must be one of {list(KINDS)}, got {task['kind']!r}")
    if task["mask"] not in MASKS:
        raise ValueError(f"task.mask must be one of {list(MASKS)}, got {task['mask']!r}")
    if not task["sigma_y"] >= 0:
        raise ValueError(f"task.sigma_y must be >= 0, got {task['sigma_y']}")
    if not 0 <= task["drop"] < 1:
        raise ValueError(f"task.drop must be in [0, 1), got {task['drop']}")
    if task["kind"] == "sr" and (task["factor"] < 1 or task["image_size"] % task["factor"]):
        raise ValueError(f"task.factor must divide task.image_size {task['image_size']}, got {task['factor']}")
    if not task["blur_sigma"] > 0:
        raise ValueError(f"task.blur_sigma must be > 0, got {task['blur_sigma']}")
    if task["lpips"] and importlib.util.find_spec("torchvision") is None:
        raise ValueError(f"task.lpips=true needs torchvision (LPIPS's SqueezeNet): {EXTRA}")
    if task["fid_feature_net"]:
        _check_feature_net(task["fid_feature_net"], "task.fid_feature_net")
    check_sizes(image_files(task["data_dir"]), task["image_size"], task["resize"])


def _check_file(path: str, key: str) -> None:
    if not Path(path).expanduser().exists():
        raise ValueError(f"{key} {path!r} does not exist")


def _check_feature_net(name: str, key: str) -> None:
    from ...metrics.features import available_feature_nets

    if name not in available_feature_nets():
        raise ValueError(f"{key} must be one of {available_feature_nets()}, got {name!r}")
    if name == "inception" and importlib.util.find_spec("torch_fidelity") is None:
        raise ValueError(f"{key}=inception needs torch-fidelity: {EXTRA}, or another feature net")


def model_config(task: dict) -> dict:
    """The runner's model section: the task's UNet2DModel checkpoint (model=diffusers_unet)."""
    return {"name": "diffusers_unet", "path": task["model"], "reference": None, "feature_net": "inception"}


def _sample_index(indices: list) -> dict:
    """Each batch's sample numbers select its measurements / labels (optsample.guidance.objectives)."""
    return {"sample_index": torch.as_tensor(list(indices), dtype=torch.long)}


def prepare(cfg: dict, task: dict, built: BuiltModel, guide: Optional[Callable], guidance: dict):
    """(the model to sample, the problem). ``guide(model, objective)`` wraps a model in the run's guidance
    (None: unguided); ``guidance`` is the guidance section (its ``norm`` and ``through``)."""
    size = built.sample_shape
    if _is_class(task):
        if size[0] != 3:
            raise ValueError(f"task={task['name']} needs an RGB model, got sample shape {size}")
        classifier = load_classifier(task["classifier"])
        classifier.to(_device(built.denoiser))
        labels = target_labels(cfg["n_samples"], task["target"], classifier.fc.out_features)
        problem = ClassGuidance(classifier, labels, task)
        objective = lambda: ClassifierLoss(classifier, labels, through=guidance["through"])  # noqa: E731
    else:
        if tuple(size) != (3, task["image_size"], task["image_size"]):
            raise ValueError(f"task.image_size {task['image_size']} does not match the model's sample shape "
                             f"{tuple(size)} (task.model={task['model']!r})")
        problem = make_problem(task, cfg["n_samples"])
        objective = lambda: MeasurementLoss(problem.operator, problem.y, problem.sigma_y,  # noqa: E731
                                            norm=guidance["norm"], through=guidance["through"])
    model, conditioning = built.denoiser, None
    if guide is not None:
        model, conditioning = guide(model, objective()), _sample_index
    return BuiltModel(model, size, conditioning=conditioning, metric_args=built.metric_args, decode=built.decode), problem


def _device(model) -> torch.device:
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return param.device if param is not None else torch.device("cpu")


def metrics(problem, samples: torch.Tensor) -> dict[str, float]:
    """The task's row metrics (module docstring)."""
    if isinstance(problem, ClassGuidance):
        return class_metrics(problem, samples)
    return reconstruction_metrics(problem, samples)


def log_images(problem, images: torch.Tensor) -> torch.Tensor:
    """The logger's picture: measurement | reconstruction | truth for the inverse tasks, else the samples."""
    if isinstance(problem, ClassGuidance):
        return images
    n = images.shape[0]
    return operators.side_by_side(problem.operator.display(problem.y.float())[:n], images, problem.truth[:n])
