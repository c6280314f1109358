"""fastai's transfer-learning recipe as its users write it, as a whole program: a baseline of ``bench.py recipe``.

    python scripts/benchmarks/fastai_finetune.py DATA WEIGHTS [--epochs 2] [--seed 0]

``ImageDataLoaders.from_folder`` with ``Resize(256)`` per item, ``aug_transforms(size=224)`` and ImageNet
normalisation per batch, batch 32; ``vision_learner(dls, squeezenet1_0)`` and ``fine_tune(epochs)``: one epoch with
the body frozen, then ``epochs`` with discriminative rates and one-cycle. Offline, the ImageNet weights are loaded
from a local torchvision state dict into the body fastai cut from the model (``model_meta``: squeezenet's
``features``). fastai keeps the last epoch's model; its val top-1 is printed as one JSON line. Needs fastai
(the bench says so and skips it when the interpreter has none); tl itself never imports it.
"""

import argparse
import json
import time

START = time.perf_counter()

import torch  # noqa: E402
from fastai.vision.all import (  # noqa: E402
    ImageDataLoaders,
    Normalize,
    Resize,
    accuracy,
    aug_transforms,
    imagenet_stats,
    set_seed,
    vision_learner,
)
from torchvision.models import squeezenet1_0  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("weights")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_seed(args.seed, reproducible=True)
    dls = ImageDataLoaders.from_folder(args.data, train="train", valid="val", item_tfms=Resize(256),
                                       batch_tfms=[*aug_transforms(size=224), Normalize.from_stats(*imagenet_stats)], bs=32)
    learn = vision_learner(dls, squeezenet1_0, pretrained=False, metrics=accuracy)
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    learn.model[0][0].load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(args.epochs)
    _, top1 = learn.validate()
    print(json.dumps({"tool": "fastai", "val_top1": float(top1), "seconds": time.perf_counter() - START}))


if __name__ == "__main__":
    main()
