"""``tl train``'s options as one flat dict: from the flags, a recipe file (YAML or JSON) or Python keywords, to a TrainConfig.

Every option is named as its config field (``--head-hidden`` is ``head_hidden`` in ``ModelConfig``), so the CLI,
``tl.train(...)``, recipe files and a run's own ``config.json`` all speak the same names, and a new config field
is an option everywhere at once. Precedence: defaults < recipe file < what the user typed (or passed as keywords).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from enum import Enum
from pathlib import Path
from typing import Any

from tl.config import DataConfig, FinetuneConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from tl.data.infer import resolve_dataset
from tl.errors import TLError

SECTIONS = {"data": DataConfig, "model": ModelConfig, "finetune": FinetuneConfig, "optim": OptimConfig, "run": RunConfig}
SECTION_OF = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
RGB_OPTIONS = ("mean", "std")


def defaults() -> dict[str, Any]:
    """Every option with its default, in config order."""
    # From the field declarations, not TrainConfig(): that resolves `weights: auto` for its default dataset.
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            for cls in SECTIONS.values() for f in dataclasses.fields(cls)}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_names(names: list[str], where: str) -> None:
    """An unknown option is one line naming it, with the close matches."""
    for name in names:
        if name not in SECTION_OF:
            close = difflib.get_close_matches(name.replace("-", "_").lstrip("_"), list(SECTION_OF), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see `tl train --help` for the options"
            raise TLError(f"{where}: unknown option {name!r}", hint)


def parse_option(name: str, value: Any) -> Any:
    """A flag's value as the config stores it: enum members as their value, paths as strings, R,G,B as a tuple."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if name in RGB_OPTIONS and value is not None:
        if isinstance(value, str):
            try:
                value = tuple(float(v) for v in value.split(","))
            except ValueError:
                value = ()
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise TLError(f"{flag(name)}: expected three comma-separated numbers, got {value!r}", f"e.g. {flag(name)} 0.485,0.456,0.406")
        return tuple(float(v) for v in value)
    return value


def to_config(options: dict[str, Any], where: str = "tl train") -> TrainConfig:
    """A validated TrainConfig from flat options (missing ones take their defaults)."""
    check_names(list(options), where)
    sections: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for name, value in options.items():
        sections[SECTION_OF[name]][name] = coerce(name, parse_option(name, value), where)
    return TrainConfig(**{section: SECTIONS[section](**values) for section, values in sections.items()})



def read_recipe(path: Path) -> dict[str, Any]:
    """Options from a YAML or JSON file: flat (``lr: 0.01``), nested by section, or a run's ``config.json``."""
    import yaml

    if not path.is_file():
        from tl import shipped

        if (named := shipped.recipe(str(path))) is None:
            raise TLError(f"--config: no such file {path}", f"give a YAML or JSON recipe, a run's config.json, or one of tl's: {', '.join(shipped.recipe_names())}")
        path = named
    try:
        raw = yaml.safe_load(path.read_text()) if path.suffix.lower() in (".yaml", ".yml") else json.loads(path.read_text())
    except (yaml.YAMLError, ValueError, UnicodeDecodeError) as exc:
        raise TLError(f"--config: cannot read {path} ({' '.join(str(exc).split())[:200]})", "a recipe is a YAML or JSON mapping of option: value")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TLError(f"--config: {path} is not a mapping of option: value", "e.g. `lr: 0.01` on a line of its own")
    if isinstance(raw.get("config"), dict):  # a run's config.json: the options are under "config"
        raw = raw["config"]
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        pairs = value.items() if key in SECTIONS and isinstance(value, dict) else [(key, value)]
        for name, item in pairs:
            if not isinstance(name, str):
                raise TLError(f"--config {path}: {name!r} is not an option name", "keys are option names such as lr or head_hidden")
            flat[name.replace("-", "_")] = item
    check_names(list(flat), f"--config {path}")
    return {name: _typed(name, value, path) for name, value in flat.items()}


_FIELD_TYPES = {f.name: str(f.type) for cls in SECTIONS.values() for f in dataclasses.fields(cls)}


def _typed(name: str, value: Any, path: Path) -> Any:
    """A recipe value as its field's type (YAML reads ``1e-3``, with no dot, as a string)."""
    return coerce(name, value, f"--config {path}")


_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}
_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string"}


def coerce(name: str, value: Any, where: str) -> Any:
    """``value`` as option ``name``'s declared type, whatever it came from: a recipe file can hold anything and
    Python keywords are not typed, so ``epochs=1.5``, ``lr=None`` or ``overwrite="no"`` must not reach the run (a
    float epoch count failed in the epoch loop, after --out was written). Strings of the right form are converted,
    a whole float is an int, ``resume=True`` is ``"auto"``; anything else is one line naming the option."""
    kind = _FIELD_TYPES[name]
    base, optional = kind.split(" | ")[0], kind.endswith("| None")
    if name in RGB_OPTIONS or base not in _KINDS:
        return value
    if value is None:
        if optional:
            return None
        raise TLError(f"{where}: {name} has no value (None)", f"give {_KINDS[base]}, e.g. {name}: {defaults()[name]!r}")
    if name == "resume" and isinstance(value, bool):
        return "auto" if value else None
    converted = _convert(base, value, name)
    if converted is None:
        raise TLError(f"{where}: {name} must be {_KINDS[base]}, got {value!r}", f"e.g. {name}: {defaults()[name]!r}")
    return converted


_YAML_FALSE = {"cache_images": "off", "mixed_precision": "no"}  # YAML 1.1 reads a bare off / no as false


def _convert(base: str, value: Any, name: str = "") -> Any:
    """``value`` as ``base`` (int, float, bool or str), or None when it is not one. NumPy scalars count as numbers
    (``epochs=np.int64(2)`` from a sweep); a bare YAML ``off``/``no`` where a word is expected is that word."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # np.int64, np.float32, np.bool_ as the Python values they hold
    if isinstance(value, bool):  # before int: True is an int to Python, never a count or a rate here
        if base == "str" and value is False and name in _YAML_FALSE:
            return _YAML_FALSE[name]
        return value if base == "bool" else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return {"int": int, "float": float, "bool": lambda t: _BOOLS[t.lower()], "str": lambda t: value}[base](text)
        except (ValueError, KeyError):
            return None
    if isinstance(value, (int, float)):
        if base == "float":
            return float(value)
        if base == "int" and float(value).is_integer():
            return int(value)
        if base == "str":
            return str(value)  # arch: 5 is then an unknown architecture, said as such
    return None


def to_yaml(options: dict[str, Any]) -> str:
    """The options as a recipe file, grouped by section with a comment line each."""
    import yaml

    lines = []
    for section in SECTIONS:
        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items() if SECTION_OF[k] == section}
        lines.append(f"# {section}")
        lines.append(yaml.safe_dump(values, sort_keys=False, default_flow_style=False).rstrip())
    return "\n".join(lines) + "\n"


def resolve(explicit: dict[str, Any], recipe: Path | None = None) -> dict[str, Any]:
    """defaults < the recipe file < ``explicit`` (what the user typed, or passed as keywords). A ``data_dir`` with no
    dataset from either is read as the folder it is, not as the default synthetic set; the options (and so the run's
    config.json, which resume, ``tl eval`` and ``tl reproduce`` read) hold the dataset inferred."""
    check_names(list(explicit), "tl train")
    from_file = read_recipe(recipe) if recipe else {}
    options = {**defaults(), **from_file, **explicit}
    chosen = explicit.get("dataset") or from_file.get("dataset")
    if not explicit.get("dataset") and from_file.get("dataset") == "synthetic" and explicit.get("data_dir"):
        chosen = None  # a recipe's synthetic (--print-config's default, a demo run's config.json) and a folder given now
    if not explicit.get("dataset") and explicit.get("labels"):
        chosen = None  # a label file given now wins over a recipe's dataset (scripts/recipes/*.yaml name imagefolder)
    options["dataset"] = resolve_dataset(chosen, options["data_dir"], labels=options.get("labels"))
    return options
