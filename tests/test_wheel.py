"""tl as users on a cluster install it: the sdist and a wheel built from it, installed into a fresh venv that is not
the checkout, run from another folder. The wheel must carry what tl reads at run time (the SLURM templates, the
accelerate configs, the recipes) as package data, and the installed tl must not reach back into the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

BUILD_FILES = ("pyproject.toml", "README.md", "tl", "slurm", "accelerate_configs", "scripts/recipes")
SHIPPED = {"slurm": "*.sbatch", "accelerate_configs": "*.yaml", "scripts/recipes": "*.yaml"}


def _run(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _build(hook: str, source: Path, dist: Path) -> Path:
    """A PEP 517 hook of setuptools run in ``source`` (the declared backend, without an isolated env: offline)."""
    dist.mkdir(exist_ok=True)
    code = f"from setuptools import build_meta; print(build_meta.{hook}({str(dist)!r}))"
    name = _run(sys.executable, "-c", code, cwd=source).stdout.strip().splitlines()[-1]
    return dist / name


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """sdist from a copy of the files the build needs (links kept), a wheel from the unpacked sdist, a fresh venv."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in BUILD_FILES:
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, target)
    sdist = _build("build_sdist", source, root / "dist")
    with tarfile.open(sdist) as archive:
        archive.extractall(root / "unpacked", filter="data")
    wheel = _build("build_wheel", next((root / "unpacked").iterdir()), root / "dist")
    # A fresh venv; torch and the other dependencies come from the suite's own environment through a .pth file (a
    # second 6 GB install is no test of tl). Paths a .pth adds are not site dirs: the checkout's editable install of
    # tl, a .pth there itself, stays out.
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    site = Path(_run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=root).stdout.strip())
    (site / "tl-test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--quiet", wheel, cwd=root)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return {"sdist": sdist, "wheel": wheel, "venv": venv, "site": site, "env": env, "cwd": elsewhere}


def test_distribution_name_is_not_the_unrelated_pypi_tl(installed):
    assert installed["wheel"].name.startswith("tl_finetune-") and installed["sdist"].name.startswith("tl_finetune-")


def test_wheel_and_sdist_carry_the_shipped_files_as_package_data(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    with tarfile.open(installed["sdist"]) as archive:
        sdist_names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for folder, pattern in SHIPPED.items():
        expected = sorted(p.name for p in (ROOT / folder).glob(pattern))
        assert expected, folder
        shipped = f"tl/shipped/{Path(folder).name}"
        for name in expected:
            assert f"{shipped}/{name}" in names, f"{shipped}/{name} missing from the wheel"
            assert f"{shipped}/{name}" in sdist_names, f"{shipped}/{name} missing from the sdist"
            # the same bytes as the top-level file: the links make one source, nothing to drift
            assert zipfile.ZipFile(installed["wheel"]).read(f"{shipped}/{name}") == (ROOT / folder / name).read_bytes()


def test_installed_tl_runs_from_another_folder_without_the_checkout(installed):
    env, cwd, venv = installed["env"], installed["cwd"], installed["venv"]
    where = _run(venv / "bin" / "python", "-c", "import tl, tl.shipped; print(tl.__file__); print(tl.shipped.folder('slurm'))",
                 cwd=cwd, env=env).stdout.split()
    assert all(Path(p).is_relative_to(installed["site"]) for p in where), f"not the wheel's files: {where}"
    import tl

    version = _run(venv / "bin" / "tl", "--version", cwd=cwd, env=env).stdout
    assert version.strip() == f"tl {tl.__version__}"
    _run(venv / "bin" / "tl", "train", "--arch", "resnet18", "--dataset", "synthetic", "--synthetic-classes", "2",
         "--synthetic-per-class", "8", "--image-size", "16", "--epochs", "1", "--batch-size", "8", "--num-workers", "0",
         "--out", "run", cwd=cwd, env=env)
    assert (cwd / "run" / "best" / "model.safetensors").is_file() and (cwd / "run" / "config.json").is_file()
    recipe = _run(venv / "bin" / "tl", "train", "--config", "linear-probe", "--data-dir", ".", "--print-config", cwd=cwd, env=env).stdout
    assert "strategy: linear" in recipe


def test_installed_slurm_submit_renders_with_the_wheels_own_files(installed):
    env, cwd, venv, site = installed["env"], installed["cwd"], installed["venv"], installed["site"]
    train = _run(venv / "bin" / "tl", "slurm", "submit", "--dry-run", "--dataset", "synthetic", "--out", "runs/x",
                 cwd=cwd, env=env).stdout
    predict = _run(venv / "bin" / "tl", "slurm", "submit", "--dry-run", "--script", "predict", "--shards", "4", "images",
                   "--out", "preds.csv", "--checkpoint", "runs/x/best", cwd=cwd, env=env).stdout
    for text in (train, predict):
        assert f"export TL_CONFIG_DIR={site / 'tl' / 'shipped' / 'accelerate_configs'}" in text
        assert f"export TL_BIN={venv / 'bin'}" in text
        assert "TL_ROOT=" not in text.split("set -euo pipefail")[0], "an installed tl has no checkout to name"
    assert "#SBATCH --array=0-3" in predict and "#SBATCH --requeue" in predict and "#SBATCH --signal=B:USR1@" in predict
    assert (site / "tl" / "shipped" / "accelerate_configs" / "cpu.yaml").is_file()
