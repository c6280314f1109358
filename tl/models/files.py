"""The names of what a run writes, and which weight file a checkpoint path stands for.

Its own module so that reading weights (``weights``) and rebuilding models from checkpoints (``checkpoint``, which
builds architectures, which read weights) share it without importing each other in a circle.
"""

from __future__ import annotations

from pathlib import Path

from tl.errors import TLError

MODEL_FILE = "model.safetensors"
META_FILE = "tl.json"
ONNX_FILE = "model.onnx"  # tl export --format onnx
PROGRESS_FILE = "progress.json"  # in a training state folder (OUT/state/step-N): epoch, step, best metric
# What save_checkpoint and tl export write into a checkpoint folder: a folder holding only these may be replaced.
CHECKPOINT_FILES = frozenset({MODEL_FILE, META_FILE, ONNX_FILE})


def model_file(path: Path) -> Path:
    """The model.safetensors a checkpoint folder, run folder (its best/) or file path stands for."""
    for candidate in (path, path / MODEL_FILE, path / "best" / MODEL_FILE):
        if candidate.is_file():
            return candidate
    raise TLError(f"no checkpoint at {path}", "pass a checkpoint folder such as RUN/best, or its model.safetensors")
