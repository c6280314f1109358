"""The PyTorch transfer-learning tutorial's fine-tuning loop, as a whole program: a baseline of ``bench.py recipe``.

    python scripts/benchmarks/tutorial_finetune.py DATA WEIGHTS ARCH [--epochs 3] [--seed 0]

As the tutorial writes it: ``ImageFolder`` + ``RandomResizedCrop(224)``/flip and ``Resize(256)``/``CenterCrop(224)``,
the ImageNet weights loaded into a torchvision model, its last layer swapped for one with the new class count
(squeezenet: ``classifier[1]``, a 1x1 conv), SGD lr 0.001 momentum 0.9, ``StepLR(7, 0.1)``, batch 4, fp32,
every parameter trained; the best epoch's val top-1 is kept. Prints one JSON line.
"""

import argparse
import json
import time

START = time.perf_counter()

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402


def new_head(model: nn.Module, classes: int) -> None:
    """The tutorial's head swap: the last layer, for the architectures this bench uses."""
    if hasattr(model, "fc"):
        model.fc = nn.Linear(model.fc.in_features, classes)
    elif isinstance(model.classifier[1], nn.Conv2d):  # squeezenet
        model.classifier[1] = nn.Conv2d(model.classifier[1].in_channels, classes, kernel_size=1)
    else:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, classes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("weights")
    parser.add_argument("arch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    tfs = {"train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]),
           "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm])}
    sets = {split: datasets.ImageFolder(f"{args.data}/{split}", tfs[split]) for split in ("train", "val")}
    loaders = {split: torch.utils.data.DataLoader(sets[split], batch_size=4, shuffle=split == "train", num_workers=2)
               for split in ("train", "val")}
    model = torchvision.models.get_model(args.arch)
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    new_head(model, len(sets["train"].classes))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    best = 0.0
    for _ in range(args.epochs):
        model.train()
        for images, labels in loaders["train"]:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in loaders["val"]:
                correct += int((model(images).argmax(1) == labels).sum())
        best = max(best, correct / len(sets["val"]))
    print(json.dumps({"tool": "tutorial", "val_top1": best, "seconds": time.perf_counter() - START}))


if __name__ == "__main__":
    main()
