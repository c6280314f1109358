"""Models: torchvision architectures, the heads tl puts on them, weight files, self-describing checkpoints,
speed-ups that leave results alone (channels_last, torch.compile), export, and the archs command.

May import: the shared modules (tl.config, tl.errors, tl.progress, tl.runtime). Never data, training, inference.
"""
