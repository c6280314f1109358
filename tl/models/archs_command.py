"""``tl archs``: every supported architecture with its size, input size and where its head sits."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def describe(arch: str) -> dict:
    """Parameter count, default input size and head location, from a model built on the meta device (no memory, no init cost)."""
    from accelerate import init_empty_weights

    from tl.models.architectures import IMAGENET_CLASSES, build_base, default_sizes, parameter_count
    from tl.models.heads import find_original_head

    with init_empty_weights(include_buffers=False):  # parameters on the meta device; plain tensors (regnet builds some) stay real
        model = build_base(arch)
    head = find_original_head(model, IMAGENET_CLASSES)
    return {"arch": arch, "params": parameter_count(model), "input_size": default_sizes(arch)[0],
            "head": head.main, "aux_heads": list(head.aux)}


def command(
    filter: Annotated[Optional[str], typer.Argument(help="Only architectures whose name contains this, e.g. resnet.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list (name, params, input_size, head, aux_heads) instead of the table.")] = False,
) -> None:
    """List the torchvision classifiers tl fine-tunes (build them with --arch NAME).

    Examples:

      tl archs resnet

      tl archs --json > archs.json
    """
    from rich.table import Table

    from tl.models.architectures import available_archs
    from tl.progress import out_console

    names = [a for a in available_archs() if not filter or filter.lower() in a.lower()]
    if not names:
        from tl.errors import TLError

        raise TLError(f"no architecture name contains {filter!r}", "run `tl archs` without a filter for the whole list")
    infos = [describe(name) for name in names]
    if as_json:
        import json

        print(json.dumps([{"name": i["arch"], "params": i["params"], "input_size": i["input_size"], "head": i["head"],
                           "aux_heads": i["aux_heads"]} for i in infos], indent=2))
        return
    table = Table(title=f"{len(names)} architectures", title_justify="left")
    for column in ("arch", "params", "input", "head"):
        table.add_column(column, justify="right" if column in ("params", "input") else "left")
    for info in infos:
        head = info["head"] + (f" (+ aux {', '.join(info['aux_heads'])})" if info["aux_heads"] else "")
        table.add_row(info["arch"], f"{info['params'] / 1e6:.1f}M", str(info["input_size"]), head)
    out_console().print(table)
