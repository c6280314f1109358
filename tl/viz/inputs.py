"""What the model is fed, resolved as ``tl train`` resolves it, for the commands that show or sweep data."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tl.config import DataConfig

MODEL = "Model"
Arch = Annotated[str, typer.Option(help="Architecture whose input size the images are cropped to (as tl train --arch).", rich_help_panel=MODEL)]
ImageSize = Annotated[Optional[int], typer.Option(help="Input size (as tl train --image-size); default: the architecture's, or the synthetic set's own.", rich_help_panel=MODEL)]


def input_sizes(data: DataConfig, arch: str) -> tuple[int, int]:
    """(crop, resize) as ``tl train`` resolves them (``tl.models.architectures.input_sizes``) for these data flags:
    without ``--image-size``, the architecture's size, not the smaller one ``tl train``'s recipe may choose for small
    photos once it has read them (``tl.training.recipe.photo_input_size``)."""
    from tl.models.architectures import input_sizes as resolve

    return resolve(arch, image_size=data.image_size, dataset=data.dataset, synthetic_size=data.synthetic_size)
