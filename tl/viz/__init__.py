"""Pictures of runs, data and models, written as PNG files: the optional extra ``pip install 'tl[viz]'`` (matplotlib).

Every figure is a ``matplotlib.figure.Figure`` saved by the Agg renderer, never a pyplot window: nothing needs a
display (clusters, CI), so no backend has to be selected, none is switched under a notebook that imports tl, and
a figure is freed when it goes out of scope instead of piling up in pyplot's registry. In a Jupyter kernel a
returned figure still shows inline (``show_inline_in_jupyter``). Importing this package costs nothing:
matplotlib and torch are imported inside the functions, so ``tl --help`` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tl.errors import TLError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.figure import Figure

DPI = 100  # figure inches x DPI = PNG pixels, so a figure's size in pixels is known before it is drawn


def require_matplotlib() -> type["Figure"]:
    """The Figure class, or a one-line error naming the extra to install (checked before any slow work starts)."""
    try:
        import matplotlib  # noqa: F401  (first, so that a missing package is reported here and nowhere else)
        from matplotlib.figure import Figure
    except ImportError:
        raise TLError("plotting needs matplotlib", "pip install 'tl[viz]'") from None
    return Figure


def new_figure(width: float, height: float, **kwargs: Any) -> "Figure":
    """A figure of ``width`` x ``height`` inches (x DPI pixels) with constrained layout, so labels are never cut off."""
    figure_class = require_matplotlib()
    show_inline_in_jupyter()
    return figure_class(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)


def show_inline_in_jupyter() -> None:
    """In a Jupyter kernel, let a Figure returned by a cell show as an image, as one made with pyplot does.

    IPython learns to render a Figure (its image/png formatter) only when the kernel's matplotlib backend,
    matplotlib_inline (ipykernel sets MPLBACKEND to it), is loaded: pyplot loads it on its first figure, and
    ``%matplotlib inline`` does. tl's figures are made without pyplot, so in a fresh kernel ``tl.plot(run)``
    printed "<Figure size 900x900 with 3 Axes>". Loading that backend module here does what pyplot would: it
    configures IPython only where the inline backend is the one selected, so a user's ``%matplotlib widget``, a
    terminal IPython and the command line (no IPython imported) are left as they are.
    """
    ipython = sys.modules.get("IPython")  # never imported here: a script or the CLI never pays for it
    if ipython is None or ipython.get_ipython() is None or "matplotlib_inline.backend_inline" in sys.modules:
        return
    try:
        import matplotlib_inline.backend_inline  # noqa: F401  (its import registers the formatters)
    except ImportError:  # IPython without ipykernel: no inline display to set up
        pass


def save(fig: "Figure", path: Path) -> Path:
    """Write ``fig`` as a PNG of exactly its figure size (no tight bounding box: sizes stay predictable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def to_image(tensor: "torch.Tensor", mean: Sequence[float], std: Sequence[float]) -> "np.ndarray":
    """A normalised (3, H, W) model input as the (H, W, 3) picture it came from, in [0, 1]."""
    import torch

    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor.detach().float().cpu() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()
