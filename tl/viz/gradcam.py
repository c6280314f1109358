"""``tl gradcam``: where in the image the evidence for a class lies (Selvaraju et al. 2017, "Grad-CAM").

The map is the ReLU of the target layer's channels weighted by the mean gradient of the class score over
each channel, scaled up to the input's size and to [0, 1]. The target layer is the last convolutional stage
of each architecture family: the finest map that already carries class evidence.

Own implementation rather than the ``grad-cam`` package: it is ~60 lines of forward hook and
``torch.autograd.grad``, while ``grad-cam`` 1.5.7 ships only as an sdist and pulls in opencv-python-headless
(61 MB), scipy (35 MB), scikit-learn (9 MB), ttach and tqdm for the one method used here; the ``viz`` extra
stays matplotlib alone (10 MB).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tl.errors import TLError
from tl.inference.commands import ArchOpt, CheckpointOpt, WeightsOpt

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

# The last convolutional stage of each torchvision family, by architecture name prefix.
TARGET_LAYERS = {
    "resnet": "layer4", "resnext": "layer4", "wide_resnet": "layer4", "regnet": "trunk_output",
    "alexnet": "features", "vgg": "features", "squeezenet": "features", "densenet": "features",
    "mobilenet": "features", "efficientnet": "features", "convnext": "features", "mnasnet": "layers",
    "shufflenet": "conv5", "googlenet": "inception5b", "inception": "Mixed_7c",
    "swin": "permute",  # the last stage's tokens put back in (batch, channels, height, width) order
    "maxvit": "blocks.3",
}
NO_FEATURE_MAP = ("vit_",)  # tokens from the first layer on: there is no convolutional stage to explain
OVERLAY = 0.45  # weight of the heat map over the image
SIZE = (8.0, 4.6)  # inches: the input and its overlay side by side, two title lines above


def _pooling(module: "nn.Module") -> bool:
    """Pooling, dropout, flatten: they pass features on without computing any, so they are never the target."""
    from torch import nn

    return isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Flatten))


def last_feature_map(model: "nn.Module", size: int) -> str:
    """For models outside the table (``module:callable`` archs, ``--cut-at`` models): the module that finishes
    last with a (batch, channels, height, width) output, outside the head and not a pooling layer."""
    import torch

    from tl.models.heads import get_head

    heads = get_head(model).all
    finished: list[str] = []
    def record(name: str):
        return lambda module, inputs, output: finished.append(name) if torch.is_tensor(output) and output.ndim == 4 else None

    hooks = [module.register_forward_hook(record(name)) for name, module in model.named_modules()
             if name and not _pooling(module) and not any(name == h or name.startswith(h + ".") for h in heads)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    if not finished:
        raise TLError("this model has no (batch, channels, height, width) feature map for Grad-CAM", "pass --layer NAME")
    return finished[-1]


def family(arch: str) -> str | None:
    """The TARGET_LAYERS key of a torchvision architecture (longest prefix: wide_resnet before resnet); None if unknown."""
    if ":" in arch:
        return None
    return next((prefix for prefix in sorted(TARGET_LAYERS, key=len, reverse=True) if arch.startswith(prefix)), None)


def refuse_transformers(arch: str) -> None:
    if arch.startswith(NO_FEATURE_MAP):
        raise TLError(f"{arch} is a vision transformer: no convolutional feature map to explain",
                      "Grad-CAM needs a convolutional network; --layer conv_proj shows only the patch embedding")


def target_layer(model: "nn.Module", arch: str, size: int) -> str:
    """The layer Grad-CAM looks at when ``--layer`` is not given."""
    from tl.models.architectures import CutModel

    refuse_transformers(arch)
    known = family(arch)
    if known and not isinstance(model, CutModel):
        return TARGET_LAYERS[known]
    return last_feature_map(model, size)


def check_layer(model: "nn.Module", layer: str) -> "nn.Module":
    """The module named ``layer``, or an error with the closest names."""
    names = [name for name, _ in model.named_modules() if name]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=4, cutoff=0.6)
        raise TLError(f"--layer: {layer!r} is not a layer of this model",
                      f"did you mean {', '.join(close)}?" if close else f"layers look like {', '.join(names[:4])}, ...")
    return model.get_submodule(layer)


def gradcam(model: "nn.Module", images: "torch.Tensor", layer: str,
            classes: "torch.Tensor | None" = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(maps (B, H, W) in [0, 1] at the input's size, logits (B, C)); the map of ``classes`` or of the predicted class."""
    import torch
    import torch.nn.functional as F

    from tl.models.heads import split_outputs

    module = check_layer(model, layer)
    kept: list[torch.Tensor] = []

    def keep(module, inputs, output):
        kept.append(output)
        # Later in-place ops (densenet's relu_, ``inplace=True`` activations) then change the copy, not the map kept.
        return output.clone() if torch.is_tensor(output) else output

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            # The input takes part in the graph, so the layer's output has a gradient even when every weight is frozen.
            logits = split_outputs(model.eval()(images.detach().requires_grad_(True)))[0]
            if not kept:
                raise TLError(f"--layer {layer} did not run in the forward pass",
                              "choose a layer the model calls, e.g. one of its children")
            features = kept[-1]
            if not torch.is_tensor(features) or features.ndim != 4:
                shape = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
                raise TLError(f"--layer {layer}: its output {shape} is not a (batch, channels, height, width) map",
                              "choose a convolutional layer, e.g. the last stage before the pooling")
            target = logits.argmax(1) if classes is None else classes.to(logits.device)
            score = logits.gather(1, target[:, None]).sum()  # images are independent: one backward gives every map
            grads = torch.autograd.grad(score, features)[0]
    finally:
        handle.remove()
    if features.shape[-2:] == (1, 1):
        logging.getLogger("tl").warning(f"warning: {layer} gives a 1x1 map at {images.shape[-1]} px, which cannot show where: "
                                        "pass --layer with an earlier stage")
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = (weights * features).sum(1, keepdim=True).relu().detach().float()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.amin(dim=(1, 2), keepdim=True)
    high = cam.amax(dim=(1, 2), keepdim=True)
    return ((cam - low) / (high - low).clamp_min(1e-12)).clamp(0, 1), logits.detach()


def blend(image: "np.ndarray", cam: "np.ndarray") -> "np.ndarray":
    """The heat map (jet colours) laid over an (H, W, 3) image in [0, 1]."""
    import numpy as np
    from matplotlib import colormaps

    return np.clip((1 - OVERLAY) * image + OVERLAY * colormaps["jet"](cam)[..., :3], 0, 1)  # float error must not warn


def class_index(name: str, class_names: list[str]) -> int:
    if name in class_names:
        return class_names.index(name)
    close = difflib.get_close_matches(name, class_names, n=4, cutoff=0.6)
    listed = ", ".join(class_names[:6]) + (", ..." if len(class_names) > 6 else "")
    raise TLError(f"--class: the model has no class {name!r}",
                  f"did you mean {', '.join(close)}?" if close else f"its classes are {listed}")


def draw(image: "np.ndarray", cam: "np.ndarray", title: str, path: Path) -> Path:
    from tl.viz import new_figure, save

    fig = new_figure(*SIZE)
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    right.imshow(blend(image, cam))
    for ax in (left, right):
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def command(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    out: Annotated[Path, typer.Option(help="Folder for the PNGs (one per image, named after it).")],
    checkpoint: CheckpointOpt = None,
    arch: ArchOpt = None,
    weights: WeightsOpt = "DEFAULT",
    class_name: Annotated[Optional[str], typer.Option("--class", help="Explain this class instead of the predicted one.")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Target layer (a module name such as layer3); default: the last convolutional stage.")] = None,
) -> None:
    """Heat maps of where each image's evidence for the predicted class (or --class) lies.

    Examples:

      tl gradcam photos/bee1.jpg photos/ant2.jpg --checkpoint runs/r18/best --out cams/

      tl gradcam cat.jpg --arch resnet50 --weights DEFAULT --class "tabby" --layer layer3 --out cams/
    """
    import torch

    from tl.data.decode import read_image
    from tl.data.transforms import decode_short_side
    from tl.inference.predictor import load_predictor, probabilities
    from tl.viz import require_matplotlib, to_image

    require_matplotlib()
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise TLError(f"no such file: {', '.join(missing[:3])}", "pass image files")
    if arch and not layer:
        refuse_transformers(arch)  # before any weights are read or downloaded
    predictor = load_predictor(checkpoint, arch, weights)
    model, names = predictor.model, predictor.class_names
    model_arch = arch or _checkpoint_arch(checkpoint)
    chosen = class_index(class_name, names) if class_name is not None else None
    layer = layer or target_layer(model, model_arch, predictor.size)
    check_layer(model, layer)
    transform, written = predictor.transform(), []
    for path in images:
        x = transform(read_image(path, decode_short_side(transform))).unsqueeze(0)
        classes = torch.tensor([chosen]) if chosen is not None else None
        cams, _ = gradcam(model, x, layer, classes)
        with torch.inference_mode():
            probs = probabilities(predictor, x)[0]
        top = probs.topk(min(3, len(names)))
        explained = names[chosen] if chosen is not None else names[int(top.indices[0])]
        ranking = ", ".join(f"{names[i]} {p:.2f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        target = _unique(out / f"{path.stem}.png", written)
        written.append(draw(to_image(x[0], predictor.mean, predictor.std), cams[0].numpy(),
                            f"{path.name}: evidence for {explained} ({layer})\ntop-3: {ranking}", target))
        print(f"{target}: {ranking}")


def _checkpoint_arch(checkpoint: Optional[Path]) -> str:
    from tl.models.checkpoint import read_meta

    return read_meta(checkpoint)["arch"] if checkpoint is not None else ""


def _unique(path: Path, taken: list[Path]) -> Path:
    """photos/a/x.jpg and photos/b/x.jpg must not overwrite each other's map."""
    candidate, number = path, 2
    while candidate in taken:
        candidate, number = path.with_name(f"{path.stem}-{number}{path.suffix}"), number + 1
    return candidate
