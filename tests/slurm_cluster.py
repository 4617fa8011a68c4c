"""A throwaway SLURM cluster (munged + slurmctld + one slurmd per node) for integration tests.

Everything lives in one temporary directory: slurm.conf, gres.conf, two fake GPU character
devices, state, spool, logs and pid files. Commands see the cluster through the SLURM_CONF
environment variable (`LocalSlurm.env`); commands inside jobs, whose SLURM_* variables the
Snakemake executor removes, through /run/slurm/conf/slurm.conf (a symlink, removed on stop).
A munged already running is used; else one is started as user munge. Needs root (slurmd starts
jobs as their user) and the Debian packages slurm-wlm and munge. `stop()` cancels the jobs, then
ends the daemons it started, by pid.

Several nodes run as several slurmd on this one machine (`slurmd -N NAME`, each node its own
port, spool, log and pid file: Debian's SLURM is built with multiple-slurmd support), so a
job can span 2 nodes and srun spread its tasks over them. The first node is named
after the machine, so that the first host of a job's node list resolves (the rendezvous address).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from hang_guard import HANG_GUARD_S

COMMANDS = (
    "munged",
    "munge",
    "unmunge",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "scontrol",
    "scancel",
    "sinfo",
)
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_KEY = Path("/etc/munge/munge.key")
# Where SLURM clients look for slurm.conf when SLURM_CONF is unset, after /etc/slurm/slurm.conf.
# The SLURM executor's job step drops SLURM_* variables before its inner `srun`: that srun finds
# this cluster only through RUN_CONF, as on a node of a real configless cluster.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
RUN_CONF = Path("/run/slurm/conf/slurm.conf")
NODE = "localhost"


def node_names(nodes: int) -> list[str]:
    """One node: `localhost`. Several: this machine's host name, then `{host}-2`, `{host}-3`,
    ... (the first host of a job's node list is distributed.py's rendezvous address, so it must
    resolve; SLURM refuses a node `localhost` beside others)."""
    if nodes == 1:
        return [NODE]
    host = socket.gethostname().split(".")[0]
    return [host] + [f"{host}-{i}" for i in range(2, nodes + 1)]


def unavailable_reason() -> str | None:
    """Why a local SLURM cluster cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd needs root"
    missing = [name for name in COMMANDS if shutil.which(name) is None]
    if missing:
        return f"SLURM/munge not installed (apt-get install slurm-wlm munge): {', '.join(missing)}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalSlurm:
    """`nodes` nodes (node_names), each with `cpus` CPUs, `memory_mb` memory
    and `gpus` GPUs (gres 'gpu'), in partitions `cpu` (the default) and `gpu`. The GPUs are
    /dev/null-like character devices: SLURM allocates them and sets CUDA_VISIBLE_DEVICES;
    programs still run on the CPU. A task prolog records the GPUs and node of each job step's
    tasks (`step_gpus`, `step_nodes`)."""

    def __init__(
        self, root: Path, cpus: int = 8, memory_mb: int = 64000, gpus: int = 2, nodes: int = 1
    ):
        self.root = Path(root)
        self.cpus, self.memory_mb, self.gpus = cpus, memory_mb, gpus
        self.nodes = node_names(nodes)
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = HANG_GUARD_S) -> None:
        self._write_config()
        self._publish_config()
        self._start_munge()
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        for node in self.nodes:
            self._spawn(f"slurmd-{node}", ["slurmd", "-D", "-N", node])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False).stdout
            states = dict(line.split() for line in out.splitlines() if line.strip())
            if all(states.get(n) in ("idle", "mixed", "allocated") for n in self.nodes):
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM nodes not idle after {timeout_s} s\n{self.logs()}")

    def stop(self) -> None:
        """Cancel remaining jobs, then end the daemons this object started (by pid)."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self.run(["scancel", f"--user={os.getuid()}"], check=False)
            deadline = time.monotonic() + 20
            while (
                time.monotonic() < deadline
                and self.run(
                    ["squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING"], check=False
                ).stdout.strip()
            ):
                time.sleep(0.5)
        for name in [*(f"slurmd-{node}" for node in self.nodes), "slurmctld", "munged"]:
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if RUN_CONF.is_symlink() and os.readlink(RUN_CONF) == str(self.conf):
            RUN_CONF.unlink()  # only our own link

    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries
    def run(
        self, cmd: list[str], check: bool = True, timeout_s: float = HANG_GUARD_S
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, check=check, timeout=timeout_s
        )

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller still knows (MinJobAge=600 keeps finished ones), as the
        key=value fields of `scontrol show job --details --oneliner`."""
        out = self.run(["scontrol", "show", "job", "--details", "--oneliner"]).stdout
        jobs = []
        for line in out.splitlines():
            if not line.startswith("JobId="):
                continue
            fields = {}
            for token in line.split():
                key, sep, value = token.partition("=")
                if sep and key not in fields:  # first occurrence: job-level, not a step's
                    fields[key] = value
            jobs.append(fields)
        return jobs

    def _task_records(self) -> list[tuple[str, str, str, str]]:
        """(job id, step id, CUDA_VISIBLE_DEVICES or 'none', node) of every task started, as
        the TaskProlog recorded them."""
        path = self.root / "task_gpus.txt"
        lines = path.read_text().splitlines() if path.exists() else []
        return [tuple(line.split()) for line in lines]

    def step_gpus(self) -> dict[tuple[str, str], str]:
        """CUDA_VISIBLE_DEVICES ('none' if unset) of every task of every job step, keyed by
        (job id, step id), as the TaskProlog recorded it when the task started."""
        return {(job, step): gpus for job, step, gpus, _ in self._task_records()}

    def step_nodes(self) -> dict[tuple[str, str], list[str]]:
        """The node of every task of every job step, keyed by (job id, step id), sorted."""
        nodes: dict[tuple[str, str], list[str]] = {}
        for job, step, _, node in self._task_records():
            nodes.setdefault((job, step), []).append(node)
        return {key: sorted(value) for key, value in nodes.items()}

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld", *(f"slurmd-{node}" for node in self.nodes)):
            path = self.root / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"--- {name}.log (tail)\n" + "\n".join(text.splitlines()[-30:]))
        return "\n".join(parts)

    # ------------------------------------------------------------------ internals
    def _write_config(self) -> None:
        for sub in ("state", "dev", *(f"spool-{node}" for node in self.nodes)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # SLURM >= 22.05 rejects GPUs whose File= is not a character device: /dev/null's numbers.
        devices = []
        for i in range(self.gpus):
            dev = self.root / "dev" / f"gpu{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
            devices.append(str(dev))
        (self.root / "gres.conf").write_text(
            "AutoDetect=off\n"
            + "".join(f"NodeName={n} Name=gpu File={d}\n" for n in self.nodes for d in devices)
        )
        r = self.root
        prolog = r / "task_prolog.sh"
        record = (
            "$SLURM_JOB_ID ${SLURM_STEP_ID:-batch} ${CUDA_VISIBLE_DEVICES-none} $SLURMD_NODENAME"
        )
        prolog.write_text(f'#!/bin/sh\necho "{record}" >> {r}/task_gpus.txt\n')
        prolog.chmod(0o755)
        host = socket.gethostname().split(".")[0]
        # one line per node: same host and address, a port of its own (one slurmd each)
        node_lines = "".join(
            f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} "
            f"CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN\n"
            for node in self.nodes
        )
        nodes = ",".join(self.nodes)
        # config_overrides: the node may declare more CPUs and memory than the machine has, so
        # jobs can ask what the workflow's rules ask (e.g. 32000 MB for feature extraction).
        self.conf.write_text(
            f"""ClusterName=pytest
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool-%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
GresTypes=gpu
TaskProlog={r}/task_prolog.sh
{node_lines}PartitionName=cpu Nodes={nodes} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={nodes} Default=NO MaxTime=INFINITE State=UP
"""
        )

    def _publish_config(self) -> None:
        if SYSTEM_CONF.exists():
            raise RuntimeError(
                f"{SYSTEM_CONF} exists: job steps would talk to that cluster, not the test's"
            )
        if RUN_CONF.is_symlink() and not RUN_CONF.exists():  # left by a killed test run
            RUN_CONF.unlink()
        if RUN_CONF.exists():
            raise RuntimeError(f"{RUN_CONF} exists: another SLURM (configless) runs here")
        RUN_CONF.parent.mkdir(parents=True, exist_ok=True)
        RUN_CONF.symlink_to(self.conf)

    def _munge_works(self) -> bool:
        try:
            token = subprocess.run(
                ["munge", "-n"], capture_output=True, timeout=5, check=True
            ).stdout
            subprocess.run(["unmunge"], input=token, capture_output=True, timeout=5, check=True)
            return True
        except (subprocess.SubprocessError, OSError):
            return False

    def _start_munge(self) -> None:
        """Use a running munged if there is one; else start one as user munge."""
        if MUNGE_SOCKET.exists() and self._munge_works():
            return
        user = pwd.getpwnam("munge")
        for directory in (MUNGE_SOCKET.parent, Path("/var/lib/munge"), Path("/var/log/munge")):
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, user.pw_uid, user.pw_gid)
        if not MUNGE_KEY.exists():
            MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
            MUNGE_KEY.write_bytes(secrets.token_bytes(1024))
            os.chown(MUNGE_KEY, user.pw_uid, user.pw_gid)
            MUNGE_KEY.chmod(0o400)
        self._spawn(
            "munged",
            ["munged", "--foreground", "--force"],
            cwd="/",
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
        )
        deadline = time.monotonic() + HANG_GUARD_S
        while not (MUNGE_SOCKET.exists() and self._munge_works()):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not come up within {HANG_GUARD_S} s")
            time.sleep(0.2)

    def _spawn(self, name: str, cmd: list[str], **kwargs) -> None:
        log = open(self.root / f"{name}.stderr", "w")
        self._procs[name] = subprocess.Popen(
            cmd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
        log.close()

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                stderr = (self.root / f"{name}.stderr").read_text(errors="replace")
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}:\n{stderr}\n{self.logs()}"
                )
