"""tl from Python (notebooks, scripts): ``tl.train``, ``tl.load``, ``Classifier.predict``, ``tl.plot``.

The same code as the CLI underneath (``tl train`` is a thin layer over ``tl.training.api.train``; ``predict`` and
``predict_dir`` decode, preprocess, compute and calibrate exactly as ``tl predict-dir``), but values come back
instead of prints, and bad input raises ``tl.TLError`` instead of exiting. Model: fastai's
``learn.predict(img)`` for how few names are needed, transformers' ``pipeline`` for a prediction's shape.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence, Union

from tl.errors import TLError
from tl.training.api import Run, train

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.figure import Figure
    from PIL import Image

    from tl.inference.folder import Summary
    from tl.inference.predictor import Predictor

__all__ = ["Classifier", "Prediction", "Run", "load", "plot", "train"]

Input = Union[str, Path, "Image.Image", "np.ndarray", "torch.Tensor"]


@dataclass
class Prediction:
    """One input's answer. ``error`` is None, or why the input could not be used (then ``label`` is "")."""

    label: str
    confidence: float
    probs: dict[str, float] = field(repr=False)
    error: str | None = None
    source: str = ""  # the file's path, or a description of an in-memory image
    labels: list[str] | None = None  # a multi-label model's answer: every class over its threshold (``label`` joins them with ;)


class Classifier:
    """A model that predicts from files and in-memory images (PIL, numpy, torch: see ``predict``); ``model`` is the torch module."""

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

    def predict(self, inputs: Input | Iterable[Input], *, batch_size: int = 0, tta: bool = False,
                min_confidence: float = 0.0, unknown_label: str = "unknown") -> Prediction | list[Prediction]:
        """One input -> one Prediction; any other iterable (a list, a generator, ``Path.glob(...)``) -> a list, in order.

        An input is a file path (decoded as ``tl predict-dir`` decodes it, EXIF orientation applied), a PIL image
        (EXIF orientation applied as for files), a numpy array (H, W) or (H, W, C) or a tensor (H, W) or (C, H, W),
        C 1, 3 or 4 (alpha dropped). Pixel types: uint8; 16-bit (uint16 arrays, PIL modes I;16 and I) scaled to 8 bits
        as 16-bit PNG files are; float (arrays, tensors, PIL mode F) must hold 0..1. A tensor carries no EXIF: pass
        the file to have a sideways-stored photo turned. Anything else raises TLError before any work, naming the
        input; an unreadable file gives a Prediction whose ``error`` says why (label ""), never an exception.
        Inputs are decoded and predicted ``batch_size`` at a time (0: predict-dir's default for the device), so a
        long list costs the memory of a batch. Below ``min_confidence`` the label is ``unknown_label``
        (probabilities kept), as ``--min-confidence`` does."""
        from concurrent.futures import ThreadPoolExecutor

        from tl.data.transforms import decode_short_side
        from tl.inference.folder import default_batch_size
        from tl.inference.predictions_csv import check_unknown_label
        from tl.runtime import num_workers

        _check_batch_size(batch_size)
        _check_type("--tta", tta, (bool,), "True or False")
        _check_type("--min-confidence", min_confidence, (numbers.Real,), "a probability in [0, 1]")
        _check_type("--unknown-label", unknown_label, (str,), "a label")
        check_unknown_label(min_confidence, unknown_label, self.class_names)
        single, items = _as_inputs(inputs)
        for index, item in enumerate(items):
            _check_input(item, "" if single else f"inputs[{index}]: ")
        pixels = self._predictor.pixels()
        short_side = decode_short_side(pixels)
        batch_size = batch_size or default_batch_size(self._device)

        def prepare(item: Input):
            try:
                return pixels(_as_image(item, short_side)), None
            except Exception as exc:  # a TLError from the decoder, a lazily opened PIL image whose file is damaged, ...
                return None, exc.message if isinstance(exc, TLError) else f"{type(exc).__name__}: {exc}"

        answers: list[Prediction | None] = []
        ready: list[tuple[int, "torch.Tensor"]] = []  # decoded, waiting for a full batch: batches as if all were decoded first
        threads = max(1, num_workers(-1, 1)) if len(items) > 1 else 1  # decoders release the GIL, as in predict-dir
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for start in range(0, len(items), batch_size):
                for index, (image, error) in enumerate(pool.map(prepare, items[start:start + batch_size]), start):
                    answers.append(Prediction("", 0.0, {}, error, _describe(items[index])) if error else None)
                    if image is not None:
                        ready.append((index, image))
                while len(ready) >= batch_size or (ready and start + batch_size >= len(items)):
                    batch, ready = ready[:batch_size], ready[batch_size:]
                    for (index, _), probs in zip(batch, self._probabilities([image for _, image in batch], tta)):
                        if self._predictor.thresholds is not None:  # multi-label: the classes over their thresholds
                            from tl.inference.multilabel import labels_of

                            labels = labels_of(probs, self.class_names, self._predictor.thresholds)
                            answers[index] = Prediction(";".join(labels), max(probs), dict(zip(self.class_names, probs)), None,
                                                        _describe(items[index]), labels)
                            continue
                        best = max(range(len(probs)), key=probs.__getitem__)
                        label = self.class_names[best] if probs[best] >= min_confidence else unknown_label
                        answers[index] = Prediction(label, probs[best], dict(zip(self.class_names, probs)), None,
                                                    _describe(items[index]))
        return answers[0] if single else answers  # type: ignore[return-value]

    def predict_dir(self, folder: str | Path | None, out: str | Path, *, progress: bool = True, **options: Any) -> "Summary":
        """``tl predict-dir FOLDER --out OUT``: the same file (a CSV, or a .parquet); ``options`` are its flags
        (resume=True, top_k=5, shard="0/4", files="list.txt" with folder None, ...), checked as the command checks
        them. SIGTERM/SIGUSR1/Ctrl-C stop it after the batch in flight with ``tl.errors.Stopped``: resume=True continues."""
        from tl.inference.folder import predict_dir
        from tl.progress import quiet

        if folder is not None or options.get("files") is None:
            _check_type("predict_dir's folder", folder, (str, os.PathLike), "a folder path (or None with files=)")
        _check_type("--out", out, (str, os.PathLike), "a .csv or .parquet path")
        options = _predict_dir_options(options, predict_dir)
        with quiet(not progress):
            return predict_dir(self._predictor, None if folder is None else Path(folder), Path(out), **options)

    def show_predictions(self, inputs: Input | Iterable[Input], *, titles: Sequence[str] | None = None) -> "Figure":
        """A grid of the inputs (one, or an iterable: as ``predict`` takes them) titled with the predicted class and
        probability; ``titles``, one per input, replace the file names (needs the viz extra)."""
        from tl.viz import require_matplotlib
        from tl.viz.grids import grid_figure

        require_matplotlib()
        _, items = _as_inputs(inputs)
        if not items:
            raise TLError("show_predictions: no inputs to show", "pass an image (a path, a PIL image, ...) or a list of them")
        titles = [titles] if isinstance(titles, str) else titles
        if titles is not None and len(titles) != len(items):
            raise TLError(f"show_predictions: {len(titles)} titles for {len(items)} inputs", "give one title per input, or none")
        predictions = self.predict(items)
        images, labels = [], []
        for item, prediction, title in zip(items, predictions, titles or [None] * len(items)):
            try:
                images.append(_display(_as_image(item)))
            except Exception:  # unreadable: a grey square with its reason
                import numpy as np

                images.append(np.full((32, 32, 3), 0.5))
            head = title or (Path(item).name if isinstance(item, (str, os.PathLike)) else prediction.source)
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


ACCEPTED = ("pass a file path, a PIL image, a numpy array (H, W[, C]) or a tensor ([C,] H, W) of uint8, uint16 or "
            "float in 0..1 (C 1, 3 or 4), or any iterable of them")


def _as_inputs(inputs: Any) -> tuple[bool, list]:
    """(one input?, the inputs as a list): an image is one input, anything else iterable (list, generator, glob) many."""
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(inputs, (str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray, torch.Tensor)):
        return True, [inputs]
    try:
        return False, list(inputs)  # a generator is read once, here: its items, not their pixels
    except TypeError:  # not iterable: one input, which _check_input refuses by its type
        return True, [inputs]


def _check_input(item: Any, where: str) -> None:
    """Refuse, before any work and naming the input (``where``), an input ``_as_image`` cannot turn into pixels."""
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        return  # a file: whether it decodes is its row's ``error``
    if isinstance(item, Image.Image):
        if 0 in item.size:
            raise TLError(f"{where}the PIL image is empty ({item.width}x{item.height})", ACCEPTED)
        if item.mode == "F":
            _check_range(np.asarray(item), f"{where}a PIL image of mode F")
        return
    if isinstance(item, np.ndarray):
        kind, dims, channels = "numpy array", "(H, W[, C])", item.shape[2] if item.ndim == 3 else 1
        floating, sixteen = np.issubdtype(item.dtype, np.floating), item.dtype == np.uint16
    elif isinstance(item, torch.Tensor):
        kind, dims, channels = "tensor", "([C,] H, W)", item.shape[0] if item.ndim == 3 else 1
        floating, sixteen = item.is_floating_point(), item.dtype == torch.uint16
    else:
        hint = "decode the bytes first: PIL.Image.open(io.BytesIO(data))" if isinstance(item, (bytes, bytearray)) else ACCEPTED
        raise TLError(f"{where}cannot predict a {type(item).__name__}", hint)
    shape = "x".join(map(str, item.shape))
    if item.ndim not in (2, 3) or channels not in (1, 3, 4) or 0 in item.shape:
        hint = "for a batch pass list(batch)" if item.ndim == 4 else ACCEPTED
        raise TLError(f"{where}a {kind} image must be {dims} with C 1, 3 or 4, got shape {shape}", hint)
    if floating:
        _check_range(item, f"{where}a float {kind}")
    elif not sixteen and str(item.dtype).removeprefix("torch.") != "uint8":
        raise TLError(f"{where}a {kind} of {str(item.dtype).removeprefix('torch.')} is not an image type", ACCEPTED)


def _check_range(values: Any, what: str) -> None:
    low, high = float(values.min()), float(values.max())
    if not (low >= 0.0 and high <= 1.0):  # NaN fails too
        raise TLError(f"{what} must hold values in 0..1, got {low:g}..{high:g}",
                      "divide by the maximum (e.g. x / 255 for 0..255), or pass uint8")


def _as_image(item: Input, min_short_side: int | None = None):
    """What ``read_image`` hands out, an RGB PIL image or a uint8 (3, H, W) tensor, from an input ``_check_input``
    passed: a file decoded as predict-dir decodes it (at a reduced size when the transform allows,
    ``min_short_side``), a PIL image turned upright as files are, an array or tensor scaled to uint8."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms.v2.functional import to_dtype, to_image

    from tl.data.decode import orientation, read_image, to_rgb, to_upright

    if isinstance(item, (str, os.PathLike)):
        return read_image(Path(item), min_short_side)
    if isinstance(item, Image.Image):
        return to_upright(to_rgb(item), orientation(item))  # 16-bit and float pixels to 8 bits as for files
    if isinstance(item, np.ndarray):  # HWC -> CHW; torch.from_numpy wants writable memory without negative strides
        pixels = to_image(np.require(item, requirements=["C", "W"])).as_subclass(torch.Tensor)
    else:
        pixels = item.detach().cpu()
    pixels = pixels[None] if pixels.ndim == 2 else pixels[:3]  # grey gets a channel axis; alpha is dropped
    return to_dtype(pixels, torch.uint8, scale=True).expand(3, -1, -1)  # 16 bits: the top 8, as for 16-bit files


def _describe(item: Input) -> str:
    """A file's path; an in-memory image as its type and size, e.g. "<Image 640x480 RGB>", "<Tensor 3x224x224 uint8>"."""
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    from PIL import Image

    if isinstance(item, Image.Image):
        return f"<Image {item.width}x{item.height} {item.mode}>"
    return f"<{type(item).__name__} {'x'.join(map(str, item.shape))} {str(item.dtype).removeprefix('torch.')}>"


def _check_type(name: str, value: Any, types: tuple[type, ...], what: str, where: str = "tl.Classifier") -> None:
    """A keyword of the wrong type as one line naming it (a bool is no number: True would pass as 1)."""
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise TLError(f"{name}: expected {what}, got {value!r}", f"see help({where}) for the accepted values")


def _check_batch_size(batch_size: Any) -> None:
    from tl.inference.folder import check_counts

    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TLError(f"--batch-size: must be at least 1 (or 0 for the automatic size), got {batch_size!r}")
    check_counts(batch_size=batch_size)


def _predict_dir_options(options: dict[str, Any], engine: Any) -> dict[str, Any]:
    """``tl predict-dir``'s checks of its flags (tl/inference/commands.py), for the same keywords from Python."""
    import difflib
    import inspect

    from tl.inference.folder import check_counts
    from tl.inference.predictor import Precision

    valid = [name for name, p in inspect.signature(engine).parameters.items() if p.kind is p.KEYWORD_ONLY]
    for name in options:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            raise TLError(f"predict_dir: unknown option {name!r}",
                          (f"did you mean {close[0]}? " if close else "") + f"options: {', '.join(valid)}")
    for name in ("tta", "resume", "overwrite", "compile"):
        _check_type("--" + name, options.get(name, False), (bool,), "True or False")
    _check_batch_size(options.get("batch_size", 0))
    _check_type("--num-workers", options.get("num_workers", -1), (numbers.Integral,), "an int: -1 (automatic) or >= 0")
    _check_type("--min-confidence", options.get("min_confidence", 0.0), (numbers.Real,), "a probability in [0, 1]")
    _check_type("--unknown-label", options.get("unknown_label", "unknown"), (str,), "a label")
    if options.get("files") is not None:
        _check_type("--files", options["files"], (str, os.PathLike), "a list file's path")
        options = {**options, "files": Path(options["files"])}
    if options.get("shard") is not None:
        _check_type("--shard", options["shard"], (str,), "'K/N' or 'auto'")
    if options.get("top_k") is not None:
        _check_type("--top-k", options["top_k"], (numbers.Integral,), "an int or None")
    check_counts(**{name: options[name] for name in ("batch_size", "top_k", "num_workers") if name in options})  # as the command
    precision = options.get("precision", Precision.auto)
    if precision not in [p.value for p in Precision]:
        raise TLError(f"--precision: {precision!r} is not one of {', '.join(p.value for p in Precision)}",
                      "auto picks bf16/fp16 where the device computes it natively, else fp32")
    return {**options, "precision": Precision(precision)} if "precision" in options else options


def _display(image) -> "Any":
    """An RGB image as an (H, W, 3) float array in [0, 1] for matplotlib."""
    import numpy as np
    import torch

    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0).numpy() / 255.0
    return np.asarray(image, dtype=np.float32) / 255.0


def load(path: str | Path | None = None, *, arch: str | None = None, weights: str | Path = "DEFAULT",
         calibrated: bool = True, threshold: float | None = None) -> Classifier:
    """A Classifier from a checkpoint folder, a run folder (its best/) or a .safetensors file; or, with ``arch``,
    an ImageNet classifier (torchvision weights, or a local weights file) predicting the 1,000 ImageNet classes.
    ``threshold``: a multi-label model's one threshold for every class (default: each class's, fit on val)."""
    from tl.inference.predictor import load_predictor

    if path is None and arch is None:
        raise TLError("tl.load needs a checkpoint path or arch=", "e.g. tl.load('runs/r18/best') or tl.load(arch='resnet18')")
    _check_type("--weights", weights, (str, os.PathLike), "'DEFAULT', a torchvision weights name or a file path", "tl.load")
    if arch is not None and str(weights).lower() == "none" and not Path(weights).exists():  # tl train's "none" is no ImageNet model
        raise TLError("--weights none: tl.load(arch=...) predicts ImageNet classes, which random weights cannot",
                      "weights='DEFAULT' (torchvision's), a torchvision weights name, or a local .safetensors/.pth file")
    checkpoint = None
    if path is not None:
        checkpoint = Path(path)
        if checkpoint.is_dir() and not (checkpoint / "model.safetensors").is_file() and (checkpoint / "best").is_dir():
            checkpoint = checkpoint / "best"  # a run folder
    return Classifier(load_predictor(checkpoint, arch, str(weights), calibrated=calibrated, threshold=threshold))


def plot(run: Run | str | Path) -> "Figure":
    """The run's loss, accuracy and learning-rate curves as a matplotlib figure (it displays inline in Jupyter)."""
    from tl.viz.curves import curves_figure, find_metrics, read_epochs

    return curves_figure(read_epochs(find_metrics(Path(run.out if isinstance(run, Run) else run))))
