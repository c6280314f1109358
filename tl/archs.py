"""``tl archs``: every supported architecture with its size, input size and where its head sits."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def describe(arch: str) -> dict:
    """Parameter count, default input size and head location, from a model built on the meta device (no memory, no init cost)."""
    from accelerate import init_empty_weights

    from tl.heads import find_original_head
    from tl.models import IMAGENET_CLASSES, build_base, default_sizes, parameter_count

    with init_empty_weights(include_buffers=False):  # parameters on the meta device; plain tensors (regnet builds some) stay real
        model = build_base(arch)
    head = find_original_head(model, IMAGENET_CLASSES)
    return {"arch": arch, "params": parameter_count(model), "input_size": default_sizes(arch)[0],
            "head": head.main, "aux_heads": list(head.aux)}


def command(
    filter: Annotated[Optional[str], typer.Argument(help="Only architectures whose name contains this, e.g. resnet.")] = None,
) -> None:
    """List the torchvision classifiers tl fine-tunes (build them with --arch NAME)."""
    from rich.table import Table

    from tl.models import available_archs
    from tl.progress import console

    names = [a for a in available_archs() if not filter or filter.lower() in a.lower()]
    if not names:
        from tl.errors import TLError

        raise TLError(f"no architecture name contains {filter!r}", "run `tl archs` without a filter for the whole list")
    table = Table(title=f"{len(names)} architectures", title_justify="left")
    for column in ("arch", "params", "input", "head"):
        table.add_column(column, justify="right" if column in ("params", "input") else "left")
    for name in names:
        info = describe(name)
        head = info["head"] + (f" (+ aux {', '.join(info['aux_heads'])})" if info["aux_heads"] else "")
        table.add_row(name, f"{info['params'] / 1e6:.1f}M", str(info["input_size"]), head)
    console.print(table)
