"""SLURM: the scripts run on a real one-node SLURM started here; multi-node rendezvous on loopback; doctor's checks.

The SLURM tests install Debian's slurm-wlm and munge when missing (root and the Debian registry, ~12 s) and skip with
the reason where that or the daemons' start fails. The daemons they start are stopped by pid at the end.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli, read_metrics
from tests.slurm_cluster import LocalSlurm, Unavailable
from tl.cluster.doctor import Plan, check_address, check_layout, check_workers

BODY = "# ---- body:"
# 2 processes x batch 4; 3 classes x 24 images: 9 steps per epoch, a few seconds each epoch on 2 cores.
RUN_ARGS = ("--arch", "resnet18", "--image-size", "32", "--dataset", "synthetic", "--synthetic-classes", "3",
            "--synthetic-per-class", "24", "--batch-size", "4", "--num-workers", "0", "--log-every", "1000", "--seed", "5",
            "--optimizer", "sgd", "--augment", "none")


def _tl() -> str:
    return str(Path(sys.executable).with_name("tl"))


def _load(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ------------------------------------------------------------------------------------------------------------------
# The scripts themselves (no SLURM needed)
# ------------------------------------------------------------------------------------------------------------------
def test_one_node_and_multinode_scripts_share_one_body():
    bodies = [(ROOT / "slurm" / name).read_text().split(BODY, 1) for name in ("train.sbatch", "train_multinode.sbatch")]
    assert all(len(parts) == 2 for parts in bodies)
    assert bodies[0][1] == bodies[1][1], "edit both: the part below '# ---- body:' must stay identical"
    for name in ("train.sbatch", "train_multinode.sbatch", "predict_dir.sbatch"):
        assert subprocess.run(["bash", "-n", str(ROOT / "slurm" / name)]).returncode == 0


def test_submit_dry_run_renders_resources_arguments_and_sweep(tmp_path):
    out = tmp_path / "sweep"
    result = cli("slurm", "submit", "--dry-run", "--nodes", "2", "--gpus-per-node", "4", "--time", "1:00:00",
                 "--partition", "gpu", "--sweep", "--lr 0.1 0.01", "--arch", "resnet18", "--epochs", "3", "--out", out)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "train_multinode.sbatch" in text and text.startswith("#!/usr/bin/env bash")
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --time=1:00:00", "#SBATCH --partition=gpu",
                 "#SBATCH --array=0-1", "#SBATCH --signal=B:USR1@300", "#SBATCH --requeue",
                 f"#SBATCH --output={out}/slurm/%x-%A_%a.out", "export TL_SWEEP='--lr 0.1 0.01'",
                 f"set -- --arch resnet18 --epochs 3 --out {out}"):
        assert line in text, line
    assert text.count("#SBATCH --nodes=") == 1
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_submit_refuses_bad_training_arguments_before_queueing():
    result = cli("slurm", "submit", "--dry-run", "--arch", "resnet18", "--epochz", "3")
    from tl.errors import TLError

    assert isinstance(result.exception, TLError) and "--epochz" in result.exception.message  # the CLI prints it, exit 2


# ------------------------------------------------------------------------------------------------------------------
# tl doctor: the classic multi-node mistakes, each from the environment it leaves behind
# ------------------------------------------------------------------------------------------------------------------
STEP = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}


def test_doctor_names_a_node_rank_expanded_on_the_head_node():
    plan = Plan(machine_rank=0, num_machines=2, num_processes=2, env={**STEP, "SLURM_NODEID": "1"})
    [problem] = check_layout(plan)
    assert "expanded on the head node" in problem.message and "single quotes" in problem.hint


def test_doctor_names_a_multinode_job_without_srun():
    plan = Plan(env={"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_NODEID": "0"})
    assert any("not under srun" in p.message for p in check_layout(plan))


def test_doctor_names_mismatched_ranks():
    assert any("not a multiple" in p.message for p in check_layout(Plan(num_machines=2, num_processes=3, env=STEP | {"SLURM_NODEID": "0"})))
    assert any("processes per node but 2 GPU" in p.message
               for p in check_layout(Plan(num_machines=2, num_processes=8, gpus=2, env=STEP | {"SLURM_NODEID": "0"})))
    launched = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "1", "GROUP_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    assert any("WORLD_SIZE 4" in p.message for p in check_layout(Plan(env=launched)))
    many = STEP | {"SLURM_NODEID": "0", "SLURM_STEP_NUM_TASKS": "16"}
    assert any("tasks on 2 node" in p.message for p in check_layout(Plan(machine_rank=0, num_machines=2, env=many)))
    assert check_layout(Plan(machine_rank=1, num_machines=2, num_processes=16, gpus=8, env=STEP | {"SLURM_NODEID": "1"})) == []


def test_doctor_names_an_unusable_main_address():
    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    assert "does not resolve" in check_address(Plan(main_ip="no-such-host.invalid", main_port=1234))[0].message
    loop = check_address(Plan(main_ip="127.0.0.1", main_port=port(), num_machines=2, env={"SLURM_JOB_ID": "7"}))
    assert "loopback" in loop[0].message
    foreign = check_address(Plan(main_ip="192.0.2.1", main_port=port(), machine_rank=0, num_machines=2))
    assert "not an address of this node" in foreign[0].message
    unreachable = check_address(Plan(main_ip="127.0.0.1", main_port=port(), env={"LOCAL_RANK": "0", "RANK": "1"}),
                                connect_timeout=1)
    assert "cannot reach" in unreachable[0].message
    assert check_address(Plan(main_ip="127.0.0.1", main_port=port(), machine_rank=0, num_machines=1)) == []


def test_doctor_warns_when_workers_outnumber_cpus_and_prints_the_plan():
    [warning] = check_workers(Plan(num_workers=4, cpus=4), per_node=2)
    assert not warning.fatal and "10 busy threads on 4 CPU" in warning.message and "--num-workers 1" in warning.hint
    result = cli("doctor", "--machine-rank", "0", "--num-machines", "1", "--num-processes", "2", "--main-process-ip",
                 "127.0.0.1", "--main-process-port", "0", "--num-workers", "0")
    assert result.exit_code == 0, result.output
    assert "versions: python" in result.output and "2 process(es) = 1 machine(s) x 2" in result.output


# ------------------------------------------------------------------------------------------------------------------
# Multi-node on loopback, and what a second process must not change
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_machines_on_loopback_train_one_model_equal_to_one_process_with_the_double_batch(tmp_path):
    """Two launchers, --num_machines 2, machine ranks 0 and 1 on 127.0.0.1, one process each, batch B; against one
    process with batch 2B. Same seed -> same sampler permutation; accelerate gives rank r the batches r, r+2, ... of
    size B, so each global step sees exactly the 2B images of the single process's step, and DDP's mean of the two
    per-process means is the mean over 2B. What would break it, and is switched off: BatchNorm statistics per process
    (--freeze-bn keeps them at their running values), the head's feature standardiser (--head-norm none), augmentation."""
    args = ["--arch", "resnet18", "--image-size", "32", "--dataset", "synthetic", "--synthetic-classes", "2",
            "--synthetic-per-class", "16", "--epochs", "2", "--num-workers", "0", "--augment", "none", "--head-norm", "none",
            "--freeze-bn", "--optimizer", "sgd", "--seed", "3", "--log-every", "1000"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launchers = [subprocess.Popen(
        [accelerate, "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
         "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--rdzv_backend", "static", "--same_network",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tl.train", *args, "--mixed-precision", "no", "--batch-size", "4",
         "--out", str(tmp_path / "two")], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)]
    # fp32 on both sides: tl's default, auto, would pick bf16 on a CPU with AVX512-BF16, whatever the launcher says
    one = cli("train", *args, "--mixed-precision", "no", "--batch-size", "8", "--out", tmp_path / "one")  # runs while the launchers import
    outputs = [p.communicate(timeout=300)[0] for p in launchers]
    assert one.exit_code == 0, one.output
    assert all(p.returncode == 0 for p in launchers), "\n".join(o[-2000:] for o in outputs)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["resolved"]["num_processes"] == 2
    two_metrics, one_metrics = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    assert len(two_metrics) == 2 and two_metrics[0]["train_loss"] != two_metrics[1]["train_loss"]  # it did train
    assert [m["step"] for m in two_metrics] == [m["step"] for m in one_metrics]
    diff = _max_diff(_load(tmp_path / "one" / "last" / "model.safetensors"), _load(tmp_path / "two" / "last" / "model.safetensors"))
    assert diff < 1e-5, f"weights differ by {diff}"
    for a, b in zip(one_metrics, two_metrics):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


# ------------------------------------------------------------------------------------------------------------------
# A real SLURM
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        with LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=os.cpu_count() or 2) as cluster:
            yield cluster
    except Unavailable as reason:
        pytest.skip(f"no SLURM here: {reason}")


def _submit(slurm: LocalSlurm, cwd: Path, *args: str, env: dict | None = None) -> str:
    result = slurm.run(_tl(), "slurm", "submit", "--cpus-per-task", "2", "--time", "00:10:00", *args, cwd=cwd, env=env or {})
    match = re.search(r"submitted job (\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return match.group(1)


def _log(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((out / "slurm").glob("*.out")))


@pytest.fixture(scope="module")
def reference_run(slurm, tmp_path_factory):
    """slurm/train.sbatch (through `tl slurm submit`), cpu.yaml, 2 processes, 3 epochs, not interrupted."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    start = time.perf_counter()
    job = _submit(slurm, out.parent, "--accelerate-config", str(ROOT / "accelerate_configs" / "cpu.yaml"),
                  *RUN_ARGS, "--epochs", "3", "--out", str(out))
    state = slurm.wait(job, timeout=300)
    return out, state, time.perf_counter() - start


@pytest.mark.slow
def test_train_sbatch_runs_two_processes_on_a_real_slurm(reference_run):
    out, state, seconds = reference_run
    log = _log(out)
    assert state == "COMPLETED", log[-4000:]
    assert "node 0/1" in log and "2 process(es)" in log and "versions: python" in log
    assert json.loads((out / "config.json").read_text())["resolved"]["num_processes"] == 2
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2, 3]
    assert (out / "best" / "model.safetensors").is_file() and (out / "last" / "model.safetensors").is_file()
    assert list((out / "slurm").glob("train-*.sbatch")), "the rendered script is kept next to the run"
    print(f"SLURM job: {seconds:.1f} s from submit to COMPLETED")


def _has_resume() -> bool:
    from tl.training import command as train_cli

    return "resume" in inspect.signature(train_cli.command).parameters


@pytest.mark.slow
@pytest.mark.skipif(not _has_resume(), reason="needs --resume (issue 4)")
def test_usr1_saves_requeues_and_resumes_to_the_same_weights(slurm, reference_run):
    """What SLURM does at --signal=B:USR1@N, done by hand: USR1 to the batch shell mid-run. The script passes it to
    every training process, the run saves its state and exits 75, the script requeues the job, and the requeued job
    resumes (--resume auto) and ends with the weights of the run that was never interrupted."""
    reference, _, _ = reference_run
    out = reference.parent / "preempted"
    job = _submit(slurm, out.parent, "--accelerate-config", str(ROOT / "accelerate_configs" / "cpu.yaml"),
                  *RUN_ARGS, "--epochs", "3", "--out", str(out))
    deadline = time.time() + 240
    while not ((out / "metrics.jsonl").is_file() and read_metrics(out)) and time.time() < deadline:
        assert slurm.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), _log(out)[-3000:]
        time.sleep(0.2)
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    # The requeued job waits until the old credential expires (cred_expire, 10 s in this test cluster), as on a real
    # cluster; forcing an earlier start makes slurmd refuse it ("Job credential revoked").
    state = slurm.wait(job, timeout=300)
    log = _log(out)
    assert state == "COMPLETED", log[-4000:]
    assert "requeueing job" in log and f"job {job} restart 1" in log, log[-4000:]
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2, 3]
    diff = _max_diff(_load(reference / "last" / "model.safetensors"), _load(out / "last" / "model.safetensors"))
    assert diff < 1e-5, f"the resumed run ends {diff} away from the uninterrupted one"
