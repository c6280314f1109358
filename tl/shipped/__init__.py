"""Files tl ships beside its code: the SLURM templates, the accelerate configs and the YAML recipes.

In a checkout they are the top-level ``slurm/``, ``accelerate_configs/`` and ``scripts/recipes/``: this folder holds
links to them, so there is one copy to edit; a wheel carries them as package data (the build follows the links).
They are found with ``importlib.resources``, so an installed tl needs no checkout. Imports only ``tl.errors``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from tl.errors import TLError

KINDS = ("slurm", "accelerate_configs", "recipes")


def folder(kind: str) -> Path:
    """The folder of shipped ``kind`` files as a real path: sbatch, bash and accelerate read files on disk."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of shipped files {kind!r}; one of {KINDS}")
    path = Path(str(files(__name__) / kind))
    if not path.is_dir():
        raise TLError(f"tl's {kind} files are missing ({path})", "reinstall tl: pip install --force-reinstall tl-finetune")
    return path.resolve()  # in a checkout: the top-level folder itself


def recipe(name: str) -> Path | None:
    """A shipped recipe by name (``finetune`` or ``finetune.yaml``), or None when tl ships none of that name."""
    if "/" in name or "\\" in name:
        return None
    path = folder("recipes") / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    return path if path.is_file() else None


def recipe_names() -> list[str]:
    return sorted(p.stem for p in folder("recipes").glob("*.yaml"))
