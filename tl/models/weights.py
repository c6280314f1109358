"""Read weight files safely and fit them into a model whose head may differ.

Nothing here unpickles arbitrary objects: ``.safetensors`` is read with safetensors, everything else with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from tl.errors import TLError
from tl.models.heads import ClassifierHead, get_head

_ENUM_NAME = re.compile(r"^(DEFAULT|[A-Z0-9]+(_[A-Z0-9]+)*_V\d+)$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile add these
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
# What torch says when weights_only refused a real pickle for a class or function it names (not damage: that is
# "Unsupported operand", "invalid load key", ...). The match is the reason shown to the user.
_REFUSED_PICKLE = re.compile(r"(Unsupported global|Trying to load unsupported GLOBAL|Trying to call reduce for|"
                             r"Can only (build|create)[^\n]*?allowlisted)[^\n]*")


def is_torchvision_weights_name(weights: str) -> bool:
    """``DEFAULT`` or an enum member name such as ``IMAGENET1K_V1``, unless a file of that name exists."""
    return bool(_ENUM_NAME.match(weights.upper() if weights.lower() == "default" else weights)) and not Path(weights).exists()


def read_state_dict(path_like: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors``, a ``.pth``/``.pt``/``.bin`` state dict, or a tl checkpoint.

    A file holding pickled objects (a whole ``torch.save(model)``) is refused unless ``trust_pickle``:
    unpickling runs whatever code the file's author put in it.
    """
    path = Path(path_like)
    if not path.exists():
        raise TLError(f"--weights: no such file {path}",
                      "give a local .safetensors/.pth file, DEFAULT for torchvision's weights, or none")
    if path.is_dir():
        from tl.models.files import model_file

        path = model_file(path)  # a tl checkpoint folder (RUN/best) or run folder stands for its model file
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise TLError(f"--weights: {path} is not a readable safetensors file ({exc})",
                          "re-download or re-export the file")
    else:
        state = _torch_load(path, trust_pickle)
    for key in _NESTED_KEYS:
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TLError(f"--weights: {path} does not hold a state dict of tensors",
                      "save it with torch.save(model.state_dict(), PATH) or safetensors")
    return strip_wrapper_prefixes(dict(state))


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _torch_load(path: Path, trust_pickle: bool) -> object:
    """``torch.load`` without running the file's code; with ``trust_pickle`` a file of pickled objects too."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # garbage makes the unpickler raise anything (KeyError, EOFError, ...): all mean "unreadable"
        refused = _REFUSED_PICKLE.search(str(error)) if isinstance(error, pickle.UnpicklingError) else None
        if refused is None:
            raise _unreadable(path, error) from error
    if not trust_pickle:  # a real pickle that weights_only refused because it names a class or function
        raise TLError(f"--weights: {path} holds pickled Python objects, not just tensors ({refused[0].split('. Please')[0][:160]})",
                      "save model.state_dict() instead of the model, or pass --trust-pickle if you trust the file's author")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # the file's own code runs here: it may raise anything
        raise _unreadable(path, error) from error
    return state.state_dict() if isinstance(state, nn.Module) else state


def _unreadable(path: Path, error: BaseException) -> TLError:
    text = str(error).partition("WeightsUnpickler error:")[2] or str(error)  # torch's own reason, past its advice
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    reason = f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__
    return TLError(f"--weights: cannot read {path}: not a PyTorch/safetensors weights file, or damaged ({reason})",
                   "re-download or re-export it: tl reads torch.save(model.state_dict(), PATH) files and .safetensors")


def describe_misfit(*, missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    """'2 missing (e.g. fc.weight, fc.bias); 1 of another shape (e.g. ...)', or "" when every list is empty."""
    return "; ".join(f"{len(keys)} {what} (e.g. {_examples(sorted(keys))})"
                     for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)) if keys)


def _align(state: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Map keys of a full model's file onto a cut model (whose layers sit under ``trunk.``)."""
    return {("trunk." + k if k not in target_keys and "trunk." + k in target_keys else k): v for k, v in state.items()}


def _examples(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def load_weights_into(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    base_keys: Mapping[str, tuple[int, ...]],
    source: str,
) -> str:
    """Copy ``state`` into ``model``; heads are copied only when they fit, else left as initialised.

    ``base_keys`` are the keys of the architecture as built (before the head was replaced or the model
    cut): a file may carry those even where the final model has none (the old head, the cut-off layers).
    Returns a one-line note when the file's head was dropped, else "".
    """
    target = model.state_dict()
    state = _align(state, set(target))
    head_prefixes = tuple(p + "." for p in get_head(model).all)

    def is_head(key: str) -> bool:
        return key.startswith(head_prefixes)

    unexpected = sorted(k for k in state if k not in target and k not in base_keys)
    missing = sorted(k for k in target if not is_head(k) and k not in state and not k.endswith("num_batches_tracked"))
    mismatched = sorted(k for k in target if not is_head(k) and k in state and state[k].shape != target[k].shape)
    if misfit := describe_misfit(missing=missing, unexpected=unexpected, mismatched=mismatched):
        raise TLError(f"the weights in {source} do not fit this architecture: {misfit}",
                      "is the file for another --arch? pass the architecture it was trained with")

    head_keys = [k for k in target if is_head(k)]
    head_fits = all(k in state and state[k].shape == target[k].shape for k in head_keys if not k.endswith("num_batches_tracked"))
    keep = {k: v for k, v in state.items() if k in target and (head_fits or not is_head(k))}
    model.load_state_dict(keep, strict=False)
    if head_fits:
        return ""
    num_classes = next(m.num_classes for m in model.modules() if isinstance(m, ClassifierHead))
    return f"weights: the head in {source} does not fit {num_classes} classes; it was dropped and a new head initialised"
