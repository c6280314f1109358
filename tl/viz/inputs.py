"""What the model is fed, resolved as ``tl train`` resolves it, for the commands that show or sweep data."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tl.config import DataConfig

MODEL = "Model"
Arch = Annotated[str, typer.Option(help="Architecture whose input size the images are cropped to (as tl train --arch).", rich_help_panel=MODEL)]
ImageSize = Annotated[Optional[int], typer.Option(help="Input size (as tl train --image-size); default: the architecture's, or the synthetic set's own.", rich_help_panel=MODEL)]


def input_sizes(data: DataConfig, arch: str) -> tuple[int, int]:
    """(crop, resize): ``--image-size``, else the synthetic set's own size, else the architecture's pretrained size.

    The same rule as ``tl.train.run`` (which keeps it inline): the synthetic set is small on purpose.
    """
    from tl.models import check_arch, default_sizes

    check_arch(arch)
    size, resize = default_sizes(arch)
    image_size = data.image_size or (data.synthetic_size if data.dataset == "synthetic" else None)
    if image_size:
        size, resize = image_size, round(image_size / 0.875)
    return size, resize
