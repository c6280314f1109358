"""Data: reading every dataset format (folders, CIFAR-10, Caltech-101, Hugging Face, synthetic), safe decoding,
splits, transforms, the decoded-image cache, and the check-data / split / stats commands.

May import: the shared modules (tl.config, tl.errors, tl.progress, tl.runtime). Never models, training, inference.
"""
