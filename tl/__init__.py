"""tl: fine-tune ImageNet-pretrained torchvision classifiers on your own images."""

__version__ = "0.1.0"
