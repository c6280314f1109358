"""A model ready to predict: from a tl checkpoint, or an ImageNet classifier with its 1,000 class names.

Everything comes from the checkpoint (architecture, class names, input size, mean/std, temperature), or from
torchvision's ImageNet metadata with ``--arch/--weights``; preprocessing is exactly ``tl eval``'s. Heavy
imports live inside functions so that ``tl --help`` stays instant.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from tl.errors import TLError

if TYPE_CHECKING:
    import torch
    from torch import nn


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


# ------------------------------------------------------------------------------------------------------
# The model and its preprocessing
# ------------------------------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A model in eval mode with everything needed to turn files into probabilities."""

    model: "nn.Module"
    class_names: list[str]  # display names, in the model's output order
    size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    temperature: float = 1.0
    thresholds: list[float] | None = None  # a multi-label model's, one per class (sigmoid outputs); None: softmax

    def transform(self):
        """File -> normalised float tensor, as ``tl eval`` preprocesses."""
        from tl.data.transforms import eval_transform

        return eval_transform(size=self.size, resize=self.resize, mean=self.mean, std=self.std)

    def pixels(self):
        """File -> uint8 tensor: ``transform``'s geometry, for loader workers; ``normalizer`` does the rest per batch."""
        from tl.data.transforms import eval_pixels

        return eval_pixels(size=self.size, resize=self.resize)

    def normalizer(self):
        from tl.data.transforms import BatchNormalize

        return BatchNormalize(self.mean, self.std)


def load_predictor(checkpoint: Path | None = None, arch: str | None = None, weights: str = "DEFAULT", *,
                   calibrated: bool = True, label_names: Path | None = None, threshold: float | None = None) -> Predictor:
    """From a tl checkpoint, or an ImageNet classifier (torchvision weights or a local weights file). ``threshold``
    replaces every class's threshold of a multi-label checkpoint."""
    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD

    if checkpoint is not None and arch is not None:
        raise TLError("pass either --checkpoint or --arch/--weights, not both", "a checkpoint already names its architecture")
    if checkpoint is not None:
        from tl.models.checkpoint import load_checkpoint

        check_checkpoint_path(checkpoint)
        model, meta = load_checkpoint(checkpoint)
        names, size, resize = list(meta["class_names"]), meta["input_size"], meta["resize_size"]
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
        temperature = float(meta.get("temperature", 1.0)) if calibrated else 1.0
        from tl.inference.multilabel import thresholds_for

        thresholds = thresholds_for(meta, threshold)
    elif arch is not None:
        model, names = _imagenet_model(arch, weights)
        from tl.models.architectures import default_sizes

        (size, resize), mean, std, temperature, thresholds = default_sizes(arch), IMAGENET_MEAN, IMAGENET_STD, 1.0, None
    else:
        raise TLError("no model given", "pass --checkpoint RUN/best, or --arch NAME --weights DEFAULT|PATH for ImageNet classes")
    if label_names is not None:
        names = read_label_names(label_names, names)
    if threshold is not None and thresholds is None:  # an ImageNet --arch (a checkpoint's meta was checked above)
        raise TLError("--threshold: this model gives one class per image", "--threshold is for multi-label checkpoints; see --min-confidence")
    return Predictor(model.eval(), names, size, resize, mean, std, temperature, thresholds)


def check_checkpoint_path(path: Path) -> None:
    """Catch the paths that are not checkpoints before safetensors reads them as one."""
    if not path.exists():
        raise TLError(f"--checkpoint: {path} does not exist", "pass a checkpoint folder such as RUN/best")
    if path.is_file() and path.suffix != ".safetensors":
        raise TLError(f"--checkpoint: {path} is not a model.safetensors file", "pass the checkpoint folder (RUN/best)")


def _imagenet_model(arch: str, weights: str) -> tuple["nn.Module", list[str]]:
    """A torchvision classifier with its 1,000 ImageNet outputs and their names (no download for a local file)."""
    import torchvision

    from tl.models.architectures import build_base, check_arch, torchvision_state
    from tl.models.weights import is_torchvision_weights_name, read_state_dict

    check_arch(arch)
    if ":" in arch:
        raise TLError(f"--arch {arch}: ImageNet prediction needs a torchvision architecture",
                      "for your own model use --checkpoint")
    model = build_base(arch)
    enum = torchvision.models.get_model_weights(arch)
    if is_torchvision_weights_name(weights):
        state, _ = torchvision_state(arch, weights)
        categories = (enum.DEFAULT if weights.upper() == "DEFAULT" else enum[weights]).meta["categories"]
    else:
        state, categories = read_state_dict(weights), enum.DEFAULT.meta["categories"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TLError(f"--weights: {weights} does not fit {arch} ({str(exc).splitlines()[0][:160]})",
                      "pass the architecture the weights were made for; a tl checkpoint goes to --checkpoint")
    if hasattr(model, "transform_input"):
        model.transform_input = True  # inception/googlenet ImageNet weights expect torchvision's input transform
    return model, list(categories)


def read_label_names(path: Path, class_names: list[str]) -> list[str]:
    """Display names from JSON (``{"class": "name"}`` or a list in class order) or CSV rows ``class,name``."""
    if not path.is_file():
        raise TLError(f"--label-names: no such file {path}", "give a JSON object or a CSV of class,display-name rows")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
            pairs = list(zip(class_names, raw)) if isinstance(raw, list) else list(raw.items())
            bad = next(((key, value) for key, value in pairs if not isinstance(value, str) or not value.strip()), None)
            if bad:
                raise TLError(f"--label-names: {path} gives {bad[0]!r} the name {bad[1]!r}", "every display name is a non-empty string")
            mapping = {str(k): v for k, v in pairs}
        else:
            with open(path, newline="") as handle:
                mapping = {row[0]: row[1] for row in csv.reader(handle) if len(row) >= 2}
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise TLError(f"--label-names: cannot read {path} ({exc})", "give a JSON object or a CSV of class,display-name rows")
    if not set(mapping) & set(class_names):
        raise TLError(f"--label-names: {path} names none of the model's classes",
                      f"its keys must be class names such as {', '.join(class_names[:3])}")
    shown = [mapping.get(name, name) for name in class_names]
    made = sorted({n for n in shown if shown.count(n) > 1} - {n for n in class_names if class_names.count(n) > 1})
    if made:  # two p_<name> columns nobody could tell apart (a model's own repeats, as ImageNet's "crane", stay)
        raise TLError(f"--label-names: {path} gives two classes the name {made[0]!r}", "give each class its own display name")
    return shown


def autocast_dtype(precision: Precision, device: "torch.device"):
    """None for fp32. auto: half precision where the device computes it natively (bf16 on GPUs that have it, else
    fp16; bf16 on a CPU with AVX512-BF16 or AMX), fp32 elsewhere. ``tl eval`` makes the same choice, so the two agree."""
    import torch

    from tl.progress import log
    from tl.runtime import auto_precision

    if precision == Precision.auto:  # training's rule, except on mps, where inference autocast works in fp16
        if device.type not in ("cuda", "cpu"):
            return torch.float16 if device.type == "mps" else None
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(auto_precision(device.type == "cuda"))
    if precision == Precision.fp16 and device.type == "cpu":
        log.warning("fp16 autocast does nothing on the CPU; using bf16 instead")
        return torch.bfloat16
    return {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}[precision]


def probabilities(predictor: Predictor, images: "torch.Tensor", *, tta: bool = False, dtype=None) -> "torch.Tensor":
    """Softmax of the temperature-scaled logits (a multi-label model: each class's sigmoid), in float32; ``tta``
    averages with the mirrored image."""
    import torch

    from tl.models.heads import split_outputs

    with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        views = [images, images.flip(-1)] if tta else [images]
        logits = [split_outputs(predictor.model(v))[0].float() for v in views]
        probs = [x.sigmoid() if predictor.thresholds is not None else (x / predictor.temperature).softmax(1) for x in logits]
    return sum(probs) / len(probs)
