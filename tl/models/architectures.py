"""Build a classifier for N classes: look up the architecture, load weights, put the new head in place.

Model: timm's ``_builder.load_pretrained``: weights made for another class count are welcome, their head is
dropped on purpose and the drop is said in one line.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from tl.errors import TLError
from tl.models.heads import HeadLocation, HeadSpec, find_original_head, get_head, replace_head
from tl.models.weights import is_torchvision_weights_name, load_weights_into, read_state_dict

log = logging.getLogger("tl")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000


@dataclass
class ModelInfo:
    """What preprocessing and inspection need to know about a built model."""

    arch: str
    num_classes: int
    input_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    head: HeadLocation = field(default_factory=lambda: HeadLocation(""))
    weights_note: str = ""


def available_archs() -> list[str]:
    """Every image-classification builder torchvision has (segmentation, video etc. live in submodules)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _import_builder(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise TLError(f"--arch {spec}: cannot import it ({exc})",
                      "use module.path:callable, with the module importable from the current directory or PYTHONPATH")


def check_arch(arch: str) -> None:
    """Fail with the close matches when ``arch`` is neither a torchvision classifier nor ``module:callable``."""
    if ":" in arch:
        return
    names = available_archs()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "`tl archs` lists every architecture"
        raise TLError(f"--arch: unknown architecture {arch!r}", hint)


def default_sizes(arch: str) -> tuple[int, int]:
    """(crop, resize) the architecture's pretrained weights were evaluated at; (224, 256) if unknown."""
    if ":" in arch:
        return 224, 256
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        return 224, 256
    preset = weights.transforms.keywords
    crop = int(preset.get("crop_size", 224))
    resize = preset.get("resize_size", round(crop / 0.875))
    resize = resize[0] if isinstance(resize, (list, tuple)) else resize
    return crop, int(resize)


def input_sizes(arch: str, *, image_size: int | None = None, dataset: str = "", synthetic_size: int = 32,
                cut_at: str | None = None) -> tuple[int, int]:
    """(crop, resize) a run feeds the model: ``--image-size``, else the synthetic set's own size (small on purpose:
    upscaling it to 224 px would only cost time; the smallest the architecture takes if that is smaller), else the
    architecture's pretrained size. A ``--image-size`` the architecture cannot take is a TLError here, before any work
    (not checked for a network cut at ``cut_at``: its first layers take smaller inputs than the whole does)."""
    check_arch(arch)
    if image_size:
        if not cut_at:
            check_image_size(arch, image_size)
    elif dataset == "synthetic":
        image_size = synthetic_size if cut_at or not _size_problem(arch, synthetic_size) else max(synthetic_size, smallest_training_size(arch))
    return (image_size, round(image_size / 0.875)) if image_size else default_sizes(arch)


def smallest_size(arch: str) -> int:
    """The smallest input side any of torchvision's weights for ``arch`` declares (``meta["min_size"]``); 1 if none."""
    import torchvision

    try:
        return min(min(w.meta["min_size"]) for w in torchvision.models.get_model_weights(arch))
    except (ValueError, KeyError):
        return 1


def trains_at_size(arch: str, size: int) -> bool:
    """Whether ``arch`` trains on ``size``-pixel inputs (``_size_problem``). False for a custom ``module:callable``,
    whose sizes cannot be told without building it: the default recipe then keeps the size given or the default."""
    return ":" not in arch and not _size_problem(arch, size)


@functools.lru_cache(maxsize=64)
def smallest_training_size(arch: str) -> int:
    """The smallest side ``arch`` trains at: torchvision's ``min_size`` (which is for inference), raised where a part
    that runs only in training needs more (inception_v3's auxiliary head: 75 px infers, ~300 px trains)."""
    floor = smallest_size(arch)
    if not _size_problem(arch, floor):
        return floor
    high = floor
    while _size_problem(arch, high) and high < 4096:
        high *= 2
    if _size_problem(arch, high):
        return floor  # no size found: check_image_size reports the size's own problem
    low = high // 2  # fails (or is below the floor)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _size_problem(arch, middle) else (low, middle)
    return high


def check_image_size(arch: str, size: int) -> None:
    """A TLError (exit 2) when ``arch`` cannot take ``size``-pixel inputs, which would otherwise crash the first
    forward pass mid-run. A forward pass on the meta device (no memory, no arithmetic) decides; torchvision's
    ``min_size`` gives the size to suggest. ViT and MaxViT take that one size only."""
    problem = _size_problem(arch, size)
    if not problem:
        return
    floor, pretrained = smallest_training_size(arch), default_sizes(arch)[0]
    if _size_problem(arch, 2 * floor):  # bigger does not help either: one size only
        raise TLError(f"--image-size {size} does not fit {arch}: it takes exactly {floor} px", f"pass --image-size {floor}")
    if size < floor:
        raise TLError(f"--image-size {size} is too small for {arch} (at least {floor})",
                      f"pass --image-size {floor} or more, or leave it out for the pretrained {pretrained} px")
    raise TLError(f"--image-size {size} does not fit {arch} ({problem})", f"leave it out for the pretrained {pretrained} px")


@functools.lru_cache(maxsize=64)
def _size_problem(arch: str, size: int) -> str:
    """Why a 2-image ``size`` batch fails in ``arch``'s training-mode forward pass, or "" (always "" for a custom
    ``module:callable``). Training mode: parts that run only there (inception_v3's auxiliary head) need larger inputs;
    two images: BatchNorm in training refuses one value per channel."""
    if ":" in arch:
        return ""
    try:
        with torch.no_grad():
            _meta_model(arch).train()(torch.zeros(2, 3, size, size, device="meta"))
    except NotImplementedError:  # an operation without a meta kernel says nothing about the size
        return ""
    except (RuntimeError, AssertionError, ValueError) as error:  # too-small kernels, ViT's size assertion, ...
        return (str(error).splitlines() or [type(error).__name__])[0][:160]
    return ""


@functools.lru_cache(maxsize=2)
def _meta_model(arch: str) -> nn.Module:
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # parameters on the meta device: no memory, no initialisation
        return build_base(arch).to("meta")


def build_base(arch: str, num_classes: int | None = None) -> nn.Module:
    """The architecture as its builder makes it: ImageNet's 1,000 outputs for torchvision models."""
    check_arch(arch)
    if ":" in arch:
        if num_classes is None:
            raise TLError("a custom --arch needs the class count", "it is taken from the dataset")
        return _import_builder(arch)(num_classes=num_classes)
    import torchvision

    kwargs: dict[str, Any] = {}
    if arch in ("inception_v3", "googlenet"):
        kwargs["init_weights"] = False  # scipy-based truncated normal init is slow and overwritten anyway
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def cut_model(model: nn.Module, layer: str, sample_size: int) -> nn.Module:
    """Keep the network up to ``layer`` (a torchvision FX node name); the head goes on its pooled output."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    train_nodes, eval_nodes = get_graph_node_names(model)
    # A module name ("layer3") stands for the last node inside it, as in torchvision's docs.
    if layer not in eval_nodes and not any(n.startswith(layer + ".") for n in eval_nodes):
        modules = sorted({n.split(".")[0] for n in eval_nodes} | set(eval_nodes))
        close = difflib.get_close_matches(layer, modules, n=4, cutoff=0.5)
        raise TLError(f"--cut-at: {layer!r} is not a layer of this model",
                      f"did you mean {', '.join(close)}?" if close else f"layers look like {', '.join(eval_nodes[1:6])}, ...")
    trunk = create_feature_extractor(model, return_nodes={layer: "features"})
    return CutModel(trunk, sample_size)


class CutModel(nn.Module):
    """An early-stage feature extractor, global-pooled, with a head on top."""

    def __init__(self, trunk: nn.Module, sample_size: int) -> None:
        super().__init__()
        self.trunk = trunk
        with torch.no_grad():
            was_training = trunk.training
            trunk.eval()
            probe = trunk(torch.zeros(1, 3, sample_size, sample_size))["features"]
            trunk.train(was_training)
        self.features_dim = probe.shape[1]
        self.fc = nn.Linear(self.features_dim, IMAGENET_CLASSES)  # placeholder, replaced like any head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)["features"]
        if features.ndim == 4:
            features = torch.nn.functional.adaptive_avg_pool2d(features, 1)
        return self.fc(features.flatten(1))


def build_model(
    arch: str,
    num_classes: int,
    *,
    weights: str = "none",
    head: HeadSpec = HeadSpec(),
    cut_at: str | None = None,
    image_size: int | None = None,
    trust_pickle: bool = False,
    imagenet_inputs: bool | None = None,
) -> tuple[nn.Module, ModelInfo]:
    """Build ``arch`` with a ``num_classes``-way head and the requested weights loaded.

    ``weights``: ``none``, ``DEFAULT`` or a torchvision enum name (downloaded and cached by torchvision),
    or a local ``.safetensors`` / ``.pth`` file or tl checkpoint folder. A head of another size in the
    weights is dropped and a new one is initialised. ``imagenet_inputs``: whether inception/googlenet transform
    their inputs as ImageNet weights expect (default: when weights are loaded; a checkpoint says how it was trained).
    """
    model = build_base(arch, num_classes)
    crop, resize = default_sizes(arch)
    if image_size is not None:
        crop, resize = image_size, round(image_size / 0.875)
    out_features = num_classes if ":" in arch else IMAGENET_CLASSES
    base_keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    pretrained_state = None
    weights_note = "random initialisation"
    if weights.lower() != "none":
        if is_torchvision_weights_name(weights) and ":" not in arch:
            pretrained_state, weights_note = torchvision_state(arch, weights, training=True)
        else:
            pretrained_state, weights_note = read_state_dict(weights, trust_pickle=trust_pickle), f"weights from {weights}"
    if hasattr(model, "transform_input") and (pretrained_state is not None if imagenet_inputs is None else imagenet_inputs):
        model.transform_input = True  # inception/googlenet weights expect torchvision's input transform (set before a cut traces it)

    if cut_at:
        model = cut_model(model, cut_at, sample_size=min(crop, 64))
        location = HeadLocation("fc")
    else:
        location = find_original_head(model, out_features)
    replace_head(model, location, num_classes, head)

    if pretrained_state is not None:
        note = load_weights_into(model, pretrained_state, base_keys=base_keys, source=weights)
        if note:
            log.info(note)
    return model, ModelInfo(arch, num_classes, crop, resize, head=get_head(model), weights_note=weights_note)


def torchvision_state(arch: str, name: str, *, training: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's weights ``name`` for ``arch``, downloaded once and cached. ``training``: the offline hint may
    offer random weights, which would make predictions meaningless."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    try:
        weights = enum.DEFAULT if name.upper() == "DEFAULT" else enum[name]
    except KeyError:
        raise TLError(f"--weights: {arch} has no weights named {name!r}",
                      f"choose DEFAULT or one of {', '.join(w.name for w in enum)}, or give a local file")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torch.hub prints "Downloading: ..." on stdout: keep it for answers
            state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # urllib/ssl/socket errors differ by platform; all mean "no download"
        reason = str(exc).splitlines()[0][:160]
        raise TLError(f"could not download the {arch} {weights.name} weights ({type(exc).__name__}: {reason})",
                      "offline? copy the weights file here and pass --weights PATH (.pth or .safetensors)"
                      + (", or --weights none to train from random weights" if training else ""))
    return state, f"torchvision {arch} {weights.name}"


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def backbone_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's top-level stages in forward order, without the heads; ``features`` is opened up.

    This is what ``--freeze-depth K`` counts: resnet gives conv1, bn1, layer1..layer4; vgg, mobilenet,
    efficientnet, densenet and convnext give the blocks inside ``features``.
    """
    heads = get_head(model).all
    root = model.trunk if isinstance(model, CutModel) else model
    prefix = "trunk." if isinstance(model, CutModel) else ""
    stages: list[tuple[str, nn.Module]] = []
    for name, child in root.named_children():
        full = prefix + name
        if full in heads or not any(True for _ in child.parameters()):
            continue
        if name == "features" and isinstance(child, nn.Sequential):
            stages += [(f"{full}.{n}", c) for n, c in child.named_children() if any(True for _ in c.parameters())]
        else:
            stages.append((full, child))
    return stages
