"""tl from Python (notebooks, scripts): ``tl.train``, ``tl.load``, ``Classifier.predict``, ``tl.plot``.

The same code as the CLI underneath (``tl train`` is a thin layer over ``tl.training.api.train``; ``predict`` and
``predict_dir`` decode, preprocess, compute and calibrate exactly as ``tl predict-dir``), but values come back
instead of prints, and bad input raises ``tl.TLError`` instead of exiting. Model: fastai's
``learn.predict(img)`` for how few names are needed, transformers' ``pipeline`` for a prediction's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

from tl.errors import TLError
from tl.training.api import Run, train

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from PIL import Image

    from tl.inference.folder import Summary
    from tl.inference.predictor import Predictor

__all__ = ["Classifier", "Prediction", "Run", "load", "plot", "train"]

Input = Union[str, Path, "Image.Image", "torch.Tensor"]


@dataclass
class Prediction:
    """One input's answer. ``error`` is None, or why the input could not be used (then ``label`` is "")."""

    label: str
    confidence: float
    probs: dict[str, float] = field(repr=False)
    error: str | None = None
    source: str = ""  # the file's path, or a description of an in-memory image


class Classifier:
    """A model that predicts from files, PIL images or uint8 (3, H, W) tensors; ``model`` is the torch module."""

    def __init__(self, predictor: "Predictor") -> None:
        import torch

        self._predictor = predictor
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._model_on_device = False

    @property
    def model(self) -> "torch.nn.Module":
        return self._predictor.model

    @property
    def class_names(self) -> list[str]:
        return list(self._predictor.class_names)

    def __repr__(self) -> str:
        names = self.class_names
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return f"Classifier({type(self.model).__name__}, {len(names)} classes: {shown})"

    def predict(self, inputs: Input | Sequence[Input], *, batch_size: int = 0, tta: bool = False,
                min_confidence: float = 0.0, unknown_label: str = "unknown") -> Prediction | list[Prediction]:
        """One input -> one Prediction; a list -> a list, in order. An unreadable input gives a Prediction whose
        ``error`` says why (label ""), never an exception. ``batch_size`` 0: predict-dir's default for the device.
        Below ``min_confidence`` the label is ``unknown_label`` (probabilities kept), as ``--min-confidence`` does."""
        from concurrent.futures import ThreadPoolExecutor

        from tl.data.transforms import decode_short_side
        from tl.inference.folder import default_batch_size
        from tl.inference.predictions_csv import check_unknown_label
        from tl.runtime import num_workers

        check_unknown_label(min_confidence, unknown_label, self.class_names)

        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        answers: list[Prediction | None] = [None] * len(items)
        pixels = self._predictor.pixels()
        short_side = decode_short_side(pixels)

        def prepare(item: Input):
            try:
                return pixels(_as_image(item, short_side)), None
            except Exception as exc:  # a TLError from the decoder, or a transform failing on a degenerate image
                return None, exc.message if isinstance(exc, TLError) else f"{type(exc).__name__}: {exc}"

        threads = max(1, num_workers(-1, 1)) if len(items) > 1 else 1  # decoders release the GIL, as in predict-dir
        with ThreadPoolExecutor(max_workers=threads) as pool:
            decoded = list(pool.map(prepare, items))
        ready = [(index, image) for index, (image, _) in enumerate(decoded) if image is not None]
        for index, (_, error) in enumerate(decoded):
            if error is not None:
                answers[index] = Prediction("", 0.0, {}, error, _describe(items[index]))
        batch_size = batch_size or default_batch_size(self._device)
        for start in range(0, len(ready), batch_size):
            chunk = ready[start:start + batch_size]
            for (index, _), probs in zip(chunk, self._probabilities([image for _, image in chunk], tta)):
                best = max(range(len(probs)), key=probs.__getitem__)
                label = self.class_names[best] if probs[best] >= min_confidence else unknown_label
                answers[index] = Prediction(label, probs[best], dict(zip(self.class_names, probs)), None, _describe(items[index]))
        return answers[0] if single else answers  # type: ignore[return-value]

    def predict_dir(self, folder: str | Path, out: str | Path, *, progress: bool = True, **options: Any) -> "Summary":
        """``tl predict-dir FOLDER --out OUT``: the same CSV; ``options`` are its flags (resume=True, top_k=5, ...)."""
        from tl.inference.folder import predict_dir
        from tl.progress import quiet

        with quiet(not progress):
            return predict_dir(self._predictor, Path(folder), Path(out), **options)

    def show_predictions(self, inputs: Sequence[Input], *, titles: Sequence[str] | None = None) -> "Figure":
        """A grid of the inputs titled with the predicted class and probability (needs the viz extra)."""
        from tl.viz import require_matplotlib
        from tl.viz.grids import grid_figure

        require_matplotlib()
        inputs = list(inputs)  # a generator is read once
        predictions = self.predict(inputs)
        images, labels = [], []
        for item, prediction, title in zip(inputs, predictions, titles or [None] * len(predictions)):
            try:
                images.append(_display(_as_image(item)))
            except Exception:  # unreadable: a grey square with its reason
                import numpy as np

                images.append(np.full((32, 32, 3), 0.5))
            head = title or Path(prediction.source).name
            labels.append(f"{head}\n{prediction.label} ({prediction.confidence:.2f})" if not prediction.error else f"{head}\nunreadable")
        return grid_figure(images, labels)

    def _probabilities(self, images: list["torch.Tensor"], tta: bool) -> list[list[float]]:
        import torch

        from tl.inference.predictor import Precision, autocast_dtype, probabilities

        if not self._model_on_device:  # as predict-dir runs it: channels_last on the device
            self._predictor.model = self._predictor.model.to(self._device, memory_format=torch.channels_last)
            self._model_on_device = True
        batch = torch.stack(images).to(self._device)
        normalized = self._predictor.normalizer()(batch, channels_last=True)
        with torch.inference_mode():
            probs = probabilities(self._predictor, normalized, tta=tta, dtype=autocast_dtype(Precision.auto, self._device))
        return probs.cpu().tolist()


def _as_image(item: Input, min_short_side: int | None = None):
    """What ``read_image`` hands out: a file decoded as predict-dir decodes it (at a reduced size when the transform
    allows, ``min_short_side``), a PIL image as RGB, a uint8 tensor as is."""
    import torch
    from PIL import Image

    from tl.data.decode import read_image

    if isinstance(item, (str, Path)):
        return read_image(Path(item), min_short_side)
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, torch.Tensor):
        if item.dtype != torch.uint8 or item.ndim != 3 or item.shape[0] not in (1, 3):
            raise TLError(f"a tensor input must be uint8 (3, H, W), got {item.dtype} {tuple(item.shape)}",
                          "pass torchvision.io.decode_image's output, a PIL image or a file path")
        return item.expand(3, -1, -1) if item.shape[0] == 1 else item
    raise TLError(f"cannot predict a {type(item).__name__}", "pass a file path, a PIL image or a uint8 (3, H, W) tensor")


def _describe(item: Input) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    return f"<{type(item).__name__}>"


def _display(image) -> "Any":
    """An RGB image as an (H, W, 3) float array in [0, 1] for matplotlib."""
    import numpy as np
    import torch

    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0).numpy() / 255.0
    return np.asarray(image, dtype=np.float32) / 255.0


def load(path: str | Path | None = None, *, arch: str | None = None, weights: str = "DEFAULT",
         calibrated: bool = True) -> Classifier:
    """A Classifier from a checkpoint folder, a run folder (its best/) or a .safetensors file; or, with ``arch``,
    an ImageNet classifier (torchvision weights, or a local weights file) predicting the 1,000 ImageNet classes."""
    from tl.inference.predictor import load_predictor

    if path is None and arch is None:
        raise TLError("tl.load needs a checkpoint path or arch=", "e.g. tl.load('runs/r18/best') or tl.load(arch='resnet18')")
    checkpoint = None
    if path is not None:
        checkpoint = Path(path)
        if checkpoint.is_dir() and not (checkpoint / "model.safetensors").is_file() and (checkpoint / "best").is_dir():
            checkpoint = checkpoint / "best"  # a run folder
    return Classifier(load_predictor(checkpoint, arch, weights, calibrated=calibrated))


def plot(run: Run | str | Path) -> "Figure":
    """The run's loss, accuracy and learning-rate curves as a matplotlib figure (it displays inline in Jupyter)."""
    from tl.viz.curves import curves_figure, find_metrics, read_epochs

    return curves_figure(read_epochs(find_metrics(Path(run.out if isinstance(run, Run) else run))))
