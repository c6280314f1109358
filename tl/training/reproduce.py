"""``tl reproduce RUN``: run a training again from the config.json it wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer

from tl.errors import TLError


def command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (it holds config.json).")],
    out: Annotated[Optional[Path], typer.Option(help="Where the new run goes; default RUN/reproduce.")] = None,
) -> None:
    """Re-run a training with the exact configuration it recorded; warns when the data have changed."""
    from tl.config import TrainConfig
    from tl.data.splits import MANIFEST, pin
    from tl.entry import stop_codes
    from tl.training import recipe
    from tl.training.run import run

    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise TLError(f"no config.json in {run_dir}", "pass the --out folder of a tl train run")
    record = json.loads(config_file.read_text())
    cfg = recipe.recorded(TrainConfig.from_dict(record["config"]), record)  # an older run: its recipe, not today's
    cfg.run.out = str(out or run_dir / "reproduce")
    cfg.run.resume, cfg.run.overwrite = None, False
    done = Path(cfg.run.out) / "metrics.jsonl"
    if done.is_file() and done.stat().st_size:  # before its split.json is replaced by the copy below
        raise TLError(f"--out: {cfg.run.out} already holds a run", "choose another --out")
    manifest = run_dir / MANIFEST
    if manifest.is_file():  # the same train/val/test split, not a new one
        Path(cfg.run.out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(manifest, Path(cfg.run.out) / MANIFEST)
        pin(Path(cfg.run.out) / MANIFEST, "tl reproduce")
    with stop_codes(f"continue with: tl train --config {cfg.run.out}/config.json --out {cfg.run.out} --resume auto"):
        run(cfg, expect_fingerprint=record.get("data_fingerprint"))
