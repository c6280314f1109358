"""``tl slurm submit``: fill slurm/*.sbatch with resources and training arguments, show the script, submit it.

Users should not edit a template by hand: the rendered script is written next to the run (``--out/slurm/``) so
the exact job can be read and resubmitted later. The templates stay plain sbatch files that also work alone.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from tl.errors import TLError

CHECKOUT = Path(__file__).resolve().parents[2]  # tl/cluster/slurm.py -> a clone's top folder, or site-packages
CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
RES, RUN = "Resources", "Job"

app = typer.Typer(help="Run tl on a SLURM cluster: render the sbatch script for your arguments and submit it.",
                  no_args_is_help=True, add_completion=False)


class Script(str, Enum):
    train = "train"
    predict = "predict"


def render(template: str, directives: dict[str, Optional[str]], exports: dict[str, str], args: list[str], note: str) -> str:
    """Replace or add ``#SBATCH --key=value`` lines (None drops one), then pin exports and arguments after them."""
    lines, seen, last = template.splitlines(), set(), -1
    out: list[str] = []
    for line in lines:
        if line.startswith("#SBATCH --"):
            key = line[len("#SBATCH --"):].split("=", 1)[0].split()[0]
            seen.add(key)
            if key in directives:
                if directives[key] is None:
                    continue
                line = f"#SBATCH --{key}={directives[key]}"
            out.append(line)
            last = len(out) - 1
            continue
        out.append(line)
    added = [f"#SBATCH --{k}={v}" for k, v in directives.items() if v is not None and k not in seen]
    pinned = [f"# {note}", *(f"export {k}={shlex.quote(v)}" for k, v in exports.items()),
              f"[ $# -gt 0 ] || set -- {shlex.join(args)}"]
    out[last + 1:last + 1] = added + pinned
    return "\n".join(out) + "\n"


def _option(args: list[str], name: str) -> Optional[str]:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def check_train_args(args: list[str]) -> None:
    """Parse them as `tl train` would, here and now, rather than after hours in the queue."""
    from tl.training import command as train_cli

    _check_args(train_cli.command, "tl train", "training", args)


def check_predict_args(args: list[str]) -> None:
    """The same for `tl predict-dir`: a bad flag must not fail N array tasks one after the other."""
    from tl.inference import commands as predict_cli

    _check_args(predict_cli.predict_dir_command, "tl predict-dir", "prediction", args)


def _check_args(command, name: str, what: str, args: list[str]) -> None:
    single = typer.Typer(add_completion=False)
    single.command()(command)
    try:
        typer.main.get_command(single).make_context(name, list(args))
    except Exception as error:  # typer bundles its own click: match its usage errors by their interface
        if not hasattr(error, "format_message"):
            raise
        raise TLError(f"{what} arguments: {error.format_message()}", f"see `{name} --help`") from None


def _sweep(sweep: Optional[str], args: list[str]) -> tuple[Optional[str], int]:
    if not sweep:
        return None, 0
    flag, *values = shlex.split(sweep)
    if not flag.startswith("--") or not values:
        raise TLError(f"--sweep {sweep!r}: expected a flag and its values", 'e.g. --sweep "--lr 0.1 0.03 0.01"')
    for value in values:
        check_train_args([*args, flag, value])
    return shlex.join([flag, *values]), len(values)


@app.command("submit", context_settings=CONTEXT)
def submit(
    ctx: typer.Context,
    nodes: Annotated[int, typer.Option(min=1, help="Nodes; more than one uses slurm/train_multinode.sbatch.", rich_help_panel=RES)] = 1,
    gpus_per_node: Annotated[int, typer.Option(min=0, help="GPUs per node (one process each); 0: a CPU partition.", rich_help_panel=RES)] = 0,
    procs_per_node: Annotated[Optional[int], typer.Option(help="Processes per node without GPUs (default: cpu.yaml's 2 on one node, else 1).", rich_help_panel=RES)] = None,
    cpus_per_task: Annotated[int, typer.Option(min=1, help="CPUs per node for all processes and their DataLoader workers.", rich_help_panel=RES)] = 8,
    time_limit: Annotated[str, typer.Option("--time", help="Time limit, HH:MM:SS or D-HH:MM:SS.", rich_help_panel=RES)] = "04:00:00",
    partition: Annotated[Optional[str], typer.Option(help="Partition (default: the cluster's).", rich_help_panel=RES)] = None,
    account: Annotated[Optional[str], typer.Option(help="Account to charge.", rich_help_panel=RES)] = None,
    mem: Annotated[Optional[str], typer.Option(help="Memory per node, e.g. 64G.", rich_help_panel=RES)] = None,
    script: Annotated[Script, typer.Option(help="train, or predict (tl predict-dir IMAGES --out preds.csv --checkpoint RUN/best).", rich_help_panel=RUN)] = Script.train,
    accelerate_config: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="accelerate config (default: by the node's GPUs).", rich_help_panel=RUN)] = None,
    sweep: Annotated[Optional[str], typer.Option(help='Array job over one flag, one --out subfolder per value: "--lr 0.1 0.01".', rich_help_panel=RUN)] = None,
    shards: Annotated[int, typer.Option(min=1, help="With --script predict: an array job of N tasks, each predicting one contiguous block of the files into OUT.shard-K-of-N, then a job that merges them into --out.", rich_help_panel=RUN)] = 1,
    signal_seconds: Annotated[int, typer.Option(min=0, help="Seconds before the time limit when the run saves its state and requeues (0: off).", rich_help_panel=RUN)] = 300,
    job_name: Annotated[Optional[str], typer.Option(help="Job name.", rich_help_panel=RUN)] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the script and do not submit.", rich_help_panel=RUN)] = False,
) -> None:
    """Submit `tl train` (or `tl predict-dir`) to SLURM; every other argument goes to that command.

    Examples:

      tl slurm submit --gpus-per-node 4 --time 8:00:00 --arch resnet50 --dataset imagefolder --data-dir /data/pets --out runs/r50

      tl slurm submit --nodes 2 --gpus-per-node 8 --arch vit_b_16 --data-dir /data/x --out runs/vit --dry-run

      tl slurm submit --partition cpu --cpus-per-task 4 --sweep "--lr 0.1 0.01" --dataset synthetic --out runs/sweep
    """
    args = list(ctx.args)
    training = script is Script.train
    if training:
        check_train_args(args)
    elif sweep or nodes > 1:
        raise TLError("--sweep and --nodes apply to training", "predict-dir runs on one node per task: spread it with --shards N")
    else:
        check_predict_args(args)
    if training and shards > 1:
        raise TLError("--shards applies to --script predict", "spread a training run with --nodes and --gpus-per-node")
    sweep_spec, tasks = _sweep(sweep, args) if training else (None, 0)
    name = "train_multinode.sbatch" if training and nodes > 1 else "train.sbatch" if training else "predict_dir.sbatch"
    from tl import shipped
    from tl.config import RunConfig

    template = shipped.folder("slurm") / name
    if not template.is_file():
        raise TLError(f"tl's SLURM template {name} is missing ({template})", "reinstall tl: pip install --force-reinstall tl-finetune")

    out = Path(_option(args, "--out") or (RunConfig.out if training else "preds.csv"))
    logs = (out if training else out.resolve().parent) / "slurm"
    if any(c.isspace() for c in str(logs.resolve())):  # sbatch splits #SBATCH lines at white space
        raise TLError(f"the job log folder {logs.resolve()} has a space in its path, which an #SBATCH --output line cannot hold",
                      "give --out a path without spaces")
    overwrite = "--overwrite" in args
    if shards > 1 and out.exists() and not overwrite and "--resume" not in args:
        raise TLError(f"--out {out} exists: the merge job would refuse to replace it at the end",
                      "add --overwrite to replace it, or choose another --out")
    tasks = tasks or (shards if shards > 1 else 0)
    log_name = "%x-%A_%a.out" if tasks else "%x-%j.out"
    directives: dict[str, Optional[str]] = {
        "job-name": job_name, "nodes": str(nodes), "cpus-per-task": str(cpus_per_task), "time": time_limit,
        "partition": partition, "account": account, "mem": mem, "output": str(logs.resolve() / log_name),
        "gpus-per-node": str(gpus_per_node) if gpus_per_node else None,
        "array": f"0-{tasks - 1}" if tasks else None,
    }
    directives["signal"] = f"B:USR1@{signal_seconds}" if signal_seconds else None
    directives = {k: v for k, v in directives.items() if v is not None or k in ("gpus-per-node", "signal")}
    # The job runs the python that runs this command, and the accelerate configs shipped with it: a wheel install
    # needs no checkout. A checkout is still named, for a plain `sbatch` of the rendered file from elsewhere.
    exports = {"TL_BIN": str(Path(sys.executable).parent), "TL_CONFIG_DIR": str(shipped.folder("accelerate_configs"))}
    if (CHECKOUT / "pyproject.toml").is_file():
        exports["TL_ROOT"] = str(CHECKOUT)
    if accelerate_config:
        exports["TL_ACCELERATE_CONFIG"] = str(accelerate_config.resolve())
    if procs_per_node:
        exports["TL_PROCS_PER_NODE"] = str(procs_per_node)
    if sweep_spec:
        exports["TL_SWEEP"] = sweep_spec
    note = f"Rendered by `tl slurm submit` from slurm/{name} on {time.strftime('%Y-%m-%d %H:%M')}; change the command, not this file."
    text = render(template.read_text(), directives, exports, args, note)
    if dry_run:
        print(text, end="")
        return
    sbatch = shutil.which("sbatch")
    if not sbatch:
        raise TLError("sbatch not found: this machine is not a SLURM login node", "run it on the cluster, or add --dry-run to see the script")
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{Path(name).stem}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.write_text(text)
    print(text, end="")
    result = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise TLError(f"sbatch refused the job: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}",
                      f"the script is in {path}; adjust --partition/--time/--gpus-per-node")
    job = result.stdout.strip().split(";")[0]
    print(f"submitted job {job}: script {path}, log {logs.resolve() / log_name}" + (f", run in {out}" if training else f", predictions {out}"))
    if shards > 1:
        merge = submit_merge(sbatch, job, out, shards, logs, partition=partition, account=account,
                             overwrite=overwrite or "--resume" in args)
        print(f"submitted job {merge}: merges the {shards} shards into {out} once every task of job {job} has ended")


def shard_files(out: Path, shards: int) -> list[Path]:
    """The files the array tasks of slurm/predict_dir.sbatch write for --out ``out`` (the script names them so)."""
    return [out.with_name(f"{out.stem}.shard-{k}-of-{shards}{out.suffix}") for k in range(shards)]


def submit_merge(sbatch: str, job: str, out: Path, shards: int, logs: Path, *, partition: Optional[str], account: Optional[str],
                 overwrite: bool) -> str:
    """A one-CPU job that runs `tl merge-predictions` once every task of the array ``job`` has ended. afterany, not
    afterok: a task with unreadable files exits 1 with its file complete; the merge itself refuses unfinished shards."""
    command = shlex.join([str(Path(sys.executable)), "-m", "tl.cli", "merge-predictions",
                          *map(str, shard_files(out.resolve(), shards)), "--out", str(out.resolve()),
                          *(["--overwrite"] if overwrite else [])])
    flags = [f"--dependency=afterany:{job}", "--job-name=tl-merge", "--ntasks=1", "--cpus-per-task=1", "--time=01:00:00",
             f"--output={logs.resolve() / '%x-%j.out'}", *([f"--partition={partition}"] if partition else []),
             *([f"--account={account}"] if account else [])]
    result = subprocess.run([sbatch, "--parsable", *flags, "--wrap", command], capture_output=True, text=True)
    if result.returncode != 0:
        raise TLError(f"sbatch refused the merge job: {result.stderr.strip()[-300:] or result.returncode}",
                      f"when job {job} has ended, run: {command}")
    return result.stdout.strip().split(";")[0]
