"""Prompt sets for text-to-image runs: a short built-in list, or COCO captions from a file.

``load_prompts(source)``: ``"builtin"``; a COCO annotations JSON (``captions_val2017.json``: one caption per
image, the one with the lowest annotation id, images in increasing ``image_id``); or a ``.txt`` file with
one prompt per line. :func:`prompt_conditioning` makes the runner's ``BuiltModel.conditioning``: sample k
gets prompt ``k % len(prompts)``, so it depends on k alone, never on the batching.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

BUILTIN_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a red double-decker bus driving down a city street",
    "a bowl of fruit on a wooden kitchen table",
    "a cat sleeping on a sunny windowsill",
    "a lighthouse on a rocky coast at sunset",
    "two people skiing down a snowy mountain slope",
    "a plate of pasta with tomato sauce and basil",
    "a small sailboat on a calm blue lake",
    "an old steam train crossing a stone bridge",
    "a dog catching a frisbee in a park",
    "a living room with a grey sofa and a large window",
    "a giraffe standing next to a tall tree",
    "a vase of sunflowers on a white background",
    "a busy market street at night with neon signs",
    "a close-up of a hummingbird drinking from a flower",
    "a snowy cabin in a pine forest",
)


def coco_captions(path: str | Path) -> list[str]:
    """One caption per image from a COCO captions annotations file (``{"annotations": [{"image_id", "id",
    "caption"}, ...]}``): for each image (increasing image_id) the caption with the lowest annotation id."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list) or not annotations:
        raise ValueError(f"{path}: not a COCO captions file (expected a non-empty 'annotations' list)")
    first: dict[int, tuple[int, str]] = {}
    for item in annotations:
        try:
            image_id, ann_id, caption = item["image_id"], item["id"], item["caption"]
        except (KeyError, TypeError):
            raise ValueError(f"{path}: annotation {item!r} lacks image_id / id / caption") from None
        if image_id not in first or ann_id < first[image_id][0]:
            first[image_id] = (ann_id, " ".join(str(caption).split()))
    return [first[image_id][1] for image_id in sorted(first)]


def load_prompts(source: str = "builtin") -> list[str]:
    """``"builtin"``, a COCO captions ``.json`` or a ``.txt`` (one prompt per line, blank lines skipped)."""
    if source == "builtin":
        return list(BUILTIN_PROMPTS)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt file {source!r} does not exist (use 'builtin', a COCO captions_val2017.json or a .txt file)"
        )
    if path.suffix == ".json":
        prompts = coco_captions(path)
    elif path.suffix == ".txt":
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ValueError(f"prompt file {source!r}: expected a .json (COCO captions) or .txt file")
    if not prompts:
        raise ValueError(f"prompt file {source!r} holds no prompts")
    return prompts


def prompt_conditioning(prompts: list[str]) -> Callable[[list], dict]:
    """``indices -> {"prompts": [prompts[k % n] for k in indices]}`` (BuiltModel.conditioning)."""
    if not prompts:
        raise ValueError("the prompt list is empty")
    prompts = list(prompts)
    return lambda indices: {"prompts": [prompts[int(k) % len(prompts)] for k in indices]}
