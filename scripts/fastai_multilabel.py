"""The comparison run for README's multi-label recipe: fastai's own multi-label recipe (``ImageDataLoaders.from_df``
with a label delimiter, ``vision_learner`` + ``fine_tune``, as fastai's documentation trains its multi-label
planet set) on the same images, split and ImageNet squeezenet1_0 weights as ``tl train --labels``; its mAP is
computed with tl's own function, so both figures are measured the same way.

    python scripts/fastai_multilabel.py LABELS.csv WEIGHTS.safetensors [--epochs 3 --batch-size 8 --json out.json]

Needs fastai (not a dependency of tl: run it with a Python that has fastai and tl importable, e.g.
``PYTHONPATH=. /path/to/fastai-venv/bin/python scripts/fastai_multilabel.py ...``). Its wall time is the whole
process, imports included, as ``time tl train`` measures tl's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", type=Path, help="path,labels,is_valid CSV (scripts/make_multilabel_set.py)")
    parser.add_argument("weights", type=Path, help="squeezenet1_0 ImageNet weights (.safetensors or .pth)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import pandas as pd
    import torchvision
    from fastai.vision.all import (
        ImageDataLoaders,
        Normalize,
        Resize,
        accuracy_multi,
        aug_transforms,
        imagenet_stats,
        set_seed,
        vision_learner,
    )

    from tl.inference.multilabel import mean_ap
    from tl.models.weights import read_state_dict

    set_seed(args.seed, reproducible=True)
    state = {k: v.float() for k, v in read_state_dict(str(args.weights)).items()}

    def squeezenet(*_, **__):  # the same ImageNet weights tl starts from; fastai cuts the body and adds its own head
        model = torchvision.models.squeezenet1_0()
        model.load_state_dict(state)
        return model

    frame = pd.read_csv(args.labels)
    frame["is_valid"] = frame["is_valid"].astype(str).str.lower() == "true"
    dls = ImageDataLoaders.from_df(frame, path=args.labels.parent, fn_col="path", label_col="labels", label_delim=";",
                                   valid_col="is_valid", item_tfms=Resize(224), bs=args.batch_size, num_workers=0,
                                   batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)])
    learn = vision_learner(dls, squeezenet, pretrained=False, metrics=[accuracy_multi])
    learn.fine_tune(args.epochs)
    probs, targets = learn.get_preds()  # sigmoid probabilities of the validation set, in its order
    result = {"map": mean_ap(probs.float(), targets.float()), "val_images": len(targets), "classes": list(dls.vocab),
              "epochs": args.epochs, "batch_size": args.batch_size, "wall_seconds": time.perf_counter() - START}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
