"""tl: fine-tune ImageNet-pretrained torchvision classifiers on your own images.

From Python: ``tl.train(...)`` -> ``Run``, ``tl.load(path)`` -> ``Classifier`` (``.predict``, ``.predict_dir``),
``tl.plot(run)``; bad input raises ``tl.TLError``. They are imported on first use, so ``import tl`` (and the
``tl`` command's start-up) stays light.
"""

from tl.errors import TLError

__version__ = "0.2.0"
__all__ = ["TLError", "train", "load", "plot", "Classifier", "Prediction", "Run"]

_API = ("train", "load", "plot", "Classifier", "Prediction", "Run")


def __getattr__(name: str):
    if name in _API:
        from tl import api

        return getattr(api, name)
    raise AttributeError(f"module 'tl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))
