"""``tl doctor``: what a job will run with, and a fast one-line failure on the classic multi-node mistakes.

Run it where the job runs: ``srun tl doctor`` in an allocation, ``accelerate launch -m tl.doctor`` to see the rank
mapping, or as the pre-flight step of slurm/*.sbatch (``--preflight`` with the values given to ``accelerate launch``).
A wrong multi-node launch otherwise shows up as a rendezvous that hangs for half an hour; each check here names
the mistake instead. The checks are pure functions of the environment so that the tests can feed them broken ones.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Annotated, Mapping, Optional

import typer

from tl.errors import TLError

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST", "SLURM_NNODES",
              "SLURM_NODEID", "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS",
              "SLURM_CPUS_PER_TASK", "SLURM_GPUS_ON_NODE", "SLURM_JOB_PARTITION")
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
               "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


@dataclass
class Problem:
    message: str
    hint: str
    fatal: bool = True


@dataclass
class Plan:
    """What ``accelerate launch`` is (or will be) told on this node; None where unknown."""

    machine_rank: Optional[int] = None
    num_machines: Optional[int] = None
    num_processes: Optional[int] = None  # over all machines, as accelerate counts
    main_ip: Optional[str] = None
    main_port: Optional[int] = None
    num_workers: Optional[int] = None
    gpus: int = 0
    cpus: int = 1
    env: Mapping[str, str] = field(default_factory=dict)


def _int(env: Mapping[str, str], name: str) -> Optional[int]:
    value = env.get(name)
    return int(value) if value not in (None, "") and value.lstrip("-").isdigit() else None


def check_layout(plan: Plan) -> list[Problem]:
    """Ranks, node ids and process counts against what SLURM and the launcher say about this node."""
    env, problems = plan.env, []
    node_id, nnodes = _int(env, "SLURM_NODEID"), _int(env, "SLURM_NNODES")
    machines = plan.num_machines or _int(env, "GROUP_WORLD_SIZE") or nnodes or 1
    in_job = "SLURM_JOB_ID" in env
    if in_job and (nnodes or 1) > 1 and "SLURM_STEP_ID" not in env:
        problems.append(Problem(f"running in the batch script of a {nnodes}-node job, not under srun: only the first node would train",
                                "start one task per node: srun --ntasks-per-node 1 bash -c '... accelerate launch ...'"))
    if in_job and nnodes and machines != nnodes:
        problems.append(Problem(f"--num_machines {machines} but the job has {nnodes} node(s)", "use --num_machines $SLURM_NNODES"))
    rank = plan.machine_rank if plan.machine_rank is not None else _int(env, "GROUP_RANK")
    if rank is not None and node_id is not None and rank != node_id and "SLURM_STEP_ID" in env:
        problems.append(Problem(f"machine rank {rank}, but this is node {node_id} of the job: $SLURM_NODEID was expanded on the "
                                "head node, so every node claims the same rank",
                                "expand it on each node: srun bash -c '... --machine_rank $SLURM_NODEID' (single quotes)"))
    tasks = _int(env, "SLURM_STEP_NUM_TASKS")
    if tasks and nnodes and tasks > nnodes and "LOCAL_RANK" not in env and plan.machine_rank is not None:
        problems.append(Problem(f"srun started {tasks} tasks on {nnodes} node(s), and each runs a launcher for the whole node",
                                "srun --ntasks-per-node 1: accelerate launch starts the processes of its node"))
    if plan.num_processes is not None:
        if plan.num_processes % machines:
            problems.append(Problem(f"--num_processes {plan.num_processes} is not a multiple of {machines} machines",
                                    "--num_processes counts all machines: nodes x processes per node"))
        per_node = plan.num_processes // machines
        if plan.gpus and per_node > plan.gpus:
            problems.append(Problem(f"{per_node} processes per node but {plan.gpus} GPU(s) here",
                                    f"--num_processes {plan.gpus * machines} (one per GPU), or ask SLURM for more GPUs"))
    world, local_world = _int(env, "WORLD_SIZE"), _int(env, "LOCAL_WORLD_SIZE")
    if world and local_world and world != local_world * machines:
        problems.append(Problem(f"WORLD_SIZE {world} but {machines} machine(s) x {local_world} local processes",
                                "every node must start the same number of processes"))
    global_rank = _int(env, "RANK")
    if global_rank is not None and world and not 0 <= global_rank < world:
        problems.append(Problem(f"RANK {global_rank} outside WORLD_SIZE {world}", "let the launcher set RANK; do not export it"))
    return problems


def check_address(plan: Plan, *, connect_timeout: float = 3.0) -> list[Problem]:
    """The main address must resolve, must not be loopback across machines, and node 0 must own it."""
    ip, port = plan.main_ip or plan.env.get("MASTER_ADDR"), plan.main_port or _int(plan.env, "MASTER_PORT")
    machines = plan.num_machines or _int(plan.env, "SLURM_NNODES") or 1
    if not ip:
        return [Problem("no main address", "pass --main_process_ip (the first node: scontrol show hostnames | head -n1)")] if machines > 1 else []
    try:
        address = socket.getaddrinfo(ip, port, type=socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror as error:
        return [Problem(f"main address {ip!r} does not resolve here ({error.strerror})", "use a hostname or IP every node can reach")]
    if machines > 1 and ipaddress.ip_address(address).is_loopback and "SLURM_JOB_ID" in plan.env:
        return [Problem(f"main address {ip} is loopback but the job spans {machines} nodes",
                        "use the first node's hostname: scontrol show hostnames $SLURM_JOB_NODELIST | head -n1")]
    rank = plan.machine_rank if plan.machine_rank is not None else _int(plan.env, "GROUP_RANK")
    launched = "LOCAL_RANK" in plan.env  # the store is up once the launcher has started the workers
    if port and rank == 0 and not launched:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as sock:
            try:
                sock.bind((address, port))
            except OSError as error:
                if error.errno == errno.EADDRNOTAVAIL:
                    return [Problem(f"main address {ip} ({address}) is not an address of this node, which is machine rank 0",
                                    "the first node of the allocation must be both --main_process_ip and --machine_rank 0")]
                if error.errno == errno.EADDRINUSE:
                    return [Problem(f"port {port} is already in use on the main node", "choose another --main_process_port")]
    if port and launched and _int(plan.env, "RANK") not in (None, 0):
        try:
            socket.create_connection((address, port), timeout=connect_timeout).close()
        except OSError as error:
            return [Problem(f"cannot reach the main process at {ip}:{port} ({error.strerror or error})",
                            "check that node 0 runs, that the port is open between nodes, and the address is its network one")]
    return []


def check_workers(plan: Plan, per_node: int) -> list[Problem]:
    """DataLoader workers of all local processes against the CPUs SLURM gave this task."""
    if plan.num_workers is None or plan.num_workers < 0:
        return []
    need = per_node * (plan.num_workers + 1)
    if need > plan.cpus:
        return [Problem(f"{per_node} process(es) x ({plan.num_workers} workers + 1) = {need} busy threads on {plan.cpus} CPU(s)",
                        f"--cpus-per-task {need}, or --num-workers {max(0, plan.cpus // per_node - 1)}", fatal=False)]
    return []


def _num_workers(train_args: list[str]) -> Optional[int]:
    from tl.cluster.slurm import _option

    value = _option(train_args, "--num-workers")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise TLError(f"--num-workers: {value!r} is not a whole number", "e.g. --num-workers 4 (-1: automatic)")


def _facts(plan: Plan) -> list[tuple[str, str]]:
    import platform

    import accelerate
    import torch
    import torchvision

    import tl

    rows = [("host", socket.gethostname()), ("versions", f"python {platform.python_version()}, torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}, accelerate {accelerate.__version__}, tl {tl.__version__}")]
    if plan.gpus:
        names = sorted({torch.cuda.get_device_name(i) for i in range(plan.gpus)})
        rows.append(("devices", f"{plan.gpus} GPU(s): {', '.join(names)}"))
    else:
        rows.append(("devices", "no GPU: processes run on the CPU and form a gloo group"))
    rows.append(("cpus", f"{plan.cpus} usable by this task"))
    if plan.num_machines or plan.num_processes:
        machines = plan.num_machines or 1
        per_node = (plan.num_processes or machines) // machines
        rows.append(("world", f"{plan.num_processes} process(es) = {machines} machine(s) x {per_node}; this is machine rank "
                              f"{plan.machine_rank}, ranks {plan.machine_rank * per_node if plan.machine_rank is not None else '?'}"
                              f"..{(plan.machine_rank + 1) * per_node - 1 if plan.machine_rank is not None else '?'}"))
        rows.append(("main", f"{plan.main_ip}:{plan.main_port}"))
    if plan.num_workers is not None:
        rows.append(("workers", f"--num-workers {plan.num_workers} per process"))
    rows += [(name, plan.env[name]) for name in (*LAUNCH_VARS, *SLURM_VARS) if name in plan.env]
    return rows


def _collective() -> str:
    """A real all-reduce over the group the launcher built: the honest test of matching ranks."""
    import torch
    from accelerate import PartialState

    from tl.runtime import has_accelerator_device

    state = PartialState(cpu=not has_accelerator_device())
    total = torch.ones(1, device=state.device)
    if state.num_processes > 1:
        torch.distributed.all_reduce(total)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if int(total.item()) != world:
        raise TLError(f"all-reduce counted {int(total.item())} processes, WORLD_SIZE says {world}", "every node must join one group")
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    return f"rank {state.process_index}/{state.num_processes} local {state.local_process_index} on {socket.gethostname()} {device}: all-reduce ok"


def command(
    ctx: typer.Context,
    preflight: Annotated[bool, typer.Option(help="Check the values below before `accelerate launch` runs on this node (slurm/*.sbatch do).")] = False,
    machine_rank: Annotated[Optional[int], typer.Option(help="--machine_rank given to accelerate launch on this node.")] = None,
    num_machines: Annotated[Optional[int], typer.Option(help="--num_machines given to accelerate launch.")] = None,
    num_processes: Annotated[Optional[int], typer.Option(help="--num_processes given to accelerate launch (all machines).")] = None,
    main_process_ip: Annotated[Optional[str], typer.Option(help="--main_process_ip given to accelerate launch.")] = None,
    main_process_port: Annotated[Optional[int], typer.Option(help="--main_process_port given to accelerate launch.")] = None,
    num_workers: Annotated[Optional[int], typer.Option(help="DataLoader workers per process (also read from trailing tl train arguments).")] = None,
) -> None:
    """Print what a job will run with and stop on the classic multi-node mistakes.

    Examples:

      srun --ntasks-per-node 1 tl doctor --num-workers 4

      accelerate launch --multi_gpu --num_processes 2 -m tl.doctor
    """
    import torch

    env = dict(os.environ)
    gpus = torch.cuda.device_count()
    cpus = _int(env, "SLURM_CPUS_PER_TASK") or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    plan = Plan(machine_rank=machine_rank, num_machines=num_machines, num_processes=num_processes, main_ip=main_process_ip,
                main_port=main_process_port, num_workers=num_workers if num_workers is not None else _num_workers(list(ctx.args)),
                gpus=gpus, cpus=cpus, env=env)
    machines = num_machines or _int(env, "GROUP_WORLD_SIZE") or 1
    per_node = (num_processes // machines) if num_processes else (_int(env, "LOCAL_WORLD_SIZE") or 1)
    problems = check_layout(plan)
    if not [p for p in problems if p.fatal]:
        problems += check_address(plan)
    problems += check_workers(plan, per_node)

    main_here = _int(env, "LOCAL_RANK") in (None, 0)
    if main_here:  # the facts are the answer, on stdout; warnings and the fatal error go to stderr
        tag = "[tl doctor]" + (f" node {env['SLURM_NODEID']}" if "SLURM_NODEID" in env else "")
        for key, value in _facts(plan):
            print(f"{tag} {key}: {value}", flush=True)
    for problem in problems:
        if not problem.fatal and main_here:
            print(f"[tl doctor] warning: {problem.message} (hint: {problem.hint})", file=sys.stderr, flush=True)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise TLError(fatal[0].message, fatal[0].hint)
    if not preflight and _int(env, "WORLD_SIZE"):
        print(f"[tl doctor] {_collective()}", flush=True)


CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
