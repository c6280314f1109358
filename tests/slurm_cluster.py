"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd started as children, stopped by pid.

The configuration and start order are the ones ENVIRONMENT.md records as working on the CI machines. Ports are
picked free so that a cluster started by someone else on the same machine is left alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONF = """\
ClusterName=tl
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
# A requeued job may start again only once the old job's credential expires (default 120 s); 10 s keeps the
# preemption test short without starting it early (an early start fails with 'Job credential revoked').
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmUser=root
SlurmdUser=root
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
JobRequeue=1
KillWait=5
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Unavailable(Exception):
    """SLURM cannot be installed or started here (the reason is the message)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_installed() -> None:
    """apt-get install slurm-wlm and munge when missing (root and the Debian registry needed; ~12 s)."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("slurmctld is not installed and apt-get as root is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            raise Unavailable(f"{' '.join(command)} failed: {result.stderr.strip()[-300:]}")


class LocalSlurm:
    """``with LocalSlurm(tmp) as slurm: slurm.run("sbatch", ...)``; only the daemons it started are stopped."""

    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root = Path(root)
        self.cpus = cpus
        self.procs: list[subprocess.Popen] = []
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def __enter__(self) -> "LocalSlurm":
        ensure_installed()
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONF.format(dir=self.root, cpus=self.cpus, ctld_port=_free_port(), slurmd_port=_free_port()))
        try:
            self._start_munge()
            self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld")
            self._spawn(["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)], "slurmd")
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start_munge(self) -> None:
        socket_path = Path("/run/munge/munge.socket.2")
        if socket_path.exists() and subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return  # someone's munged already answers: use it, and leave it running
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create"], check=True, capture_output=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(socket_path.parent, "munge", "munge")
        self._spawn(["/usr/sbin/munged", "--foreground"], "munged", user="munge")
        for _ in range(50):
            if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise Unavailable("munged did not start")

    def _spawn(self, command: list[str], name: str, user: str | None = None) -> None:
        log = open(self.root / f"{name}.out", "w")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, user=user)
        self.procs.append(proc)
        time.sleep(0.2)
        if proc.poll() is not None:
            raise Unavailable(f"{name} exited at start: {(self.root / f'{name}.out').read_text()[-300:]}")

    def _wait_idle(self, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state.startswith("idle"):
                return
            time.sleep(0.5)
        logs = "".join((self.root / f).read_text()[-400:] for f in ("slurmctld.log", "slurmd.log") if (self.root / f).exists())
        raise Unavailable(f"the node did not become idle in {timeout:.0f} s: {logs}")

    def run(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], capture_output=True, text=True, env={**self.env, **kwargs.pop("env", {})},
                              check=check, timeout=60, **kwargs)

    def job_state(self, job_id: str) -> str:
        out = self.run("scontrol", "show", "job", job_id, check=False).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def wait(self, job_id: str, timeout: float = 300, until: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                                              "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")) -> str:
        deadline = time.time() + timeout
        state = "UNKNOWN"
        while time.time() < deadline:
            state = self.job_state(job_id)
            if state in until:
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {state} after {timeout:.0f} s")

    def stop(self) -> None:
        """Cancel what is still queued, then stop our daemons in reverse start order, by pid."""
        if any(p.poll() is None for p in self.procs):
            self.run("scancel", "--user", "root", check=False)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
