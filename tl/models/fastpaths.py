"""Speed-ups that leave results alone: channels_last memory for convolutional models, and torch.compile.

Precision is chosen with the accelerator (``tl.runtime.auto_precision``); features of a frozen backbone
are cached by ``tl.training.feature_cache``. Each is on where it is safe and has a flag to turn it off.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

import torch
from torch import nn

log = logging.getLogger("tl")


def is_convolutional(model: nn.Module) -> bool:
    """More 2-D convolutions than linear layers: CNNs (resnet, squeezenet, efficientnet) but not ViT/Swin,
    whose single patch-embedding convolution gains nothing from another memory layout."""
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    return convs > linears


def apply_channels_last(model: nn.Module, wanted: bool) -> bool:
    """Store the weights of a convolutional model in NHWC (in place); returns whether it did.

    oneDNN and cuDNN run convolutions in NHWC natively: in NCHW each one pays for a layout conversion. With
    NHWC weights, the first convolution's output is NHWC, and so is everything after it, so the inputs need no
    conversion. squeezenet1_0 inference at 224 px on this project's CPU: 36 images/s in NCHW, 60 in NHWC.
    """
    if not wanted or not is_convolutional(model):
        return False
    model.to(memory_format=torch.channels_last)
    return True


def compile_blocker(device: torch.device) -> str | None:
    """Why torch.compile's default backend (inductor) cannot work here, or None. Checked up front so the
    reason is one log line instead of a compiler traceback at the first step."""
    if sys.platform == "win32":
        return "torch.compile's inductor backend does not support Windows"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "inductor needs triton on the GPU (pip install triton)"
    elif device.type == "cpu":
        compiler = os.environ.get("CXX", "g++")
        if not (shutil.which(compiler) or shutil.which("c++") or shutil.which("clang++")):
            return "inductor needs a C++ compiler on the CPU (g++ or clang++), and none is on PATH"
    else:
        return f"torch.compile is not supported on {device.type}"
    return None


def compile_model(model: nn.Module, device: torch.device) -> bool:
    """``model.compile()`` in place (state-dict keys stay as they are), or a log line saying why not.

    Errors that only appear while compiling the first batch fall back to eager execution
    (``suppress_errors``) instead of ending the run: a slower run beats a failed one.
    """
    blocker = compile_blocker(device)
    if blocker:
        log.warning(f"--compile: {blocker}; running without it")
        return False
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    model.compile()
    log.info("--compile: the model is compiled at its first steps (slow), then runs compiled")
    return True
