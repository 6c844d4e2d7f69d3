"""The settings of one `splitnn-experiments` invocation, built by the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from splitnn.client.dp import DP_LR
from splitnn.common.datasets import locally_available
from splitnn.common.models import DECODER_EPOCHS
from splitnn.experiments.grid import Setting

Executor = Literal["local", "slurm"]
SLURM_MIN_MINUTES = 3
"""submitit signals a job (USR2) 90 s before its time is up; under 3 minutes the signal can come
before the run has started, and the job ends early."""


@dataclass(frozen=True)
class SlurmOptions:
    """How each run is submitted to a Slurm cluster (``--executor slurm``).

    Attributes:
        partition: the partition of every job; None: the cluster's default.
        minutes: each job's time limit (sbatch ``--time``), at least `SLURM_MIN_MINUTES`.
        cpus_per_run: CPUs of each job (``--cpus-per-task``); the run's torch threads.
        mem_gb: memory of each job (``--mem``); None: the cluster's default.
        array_parallelism: jobs of one job array running at once.
        extra: further sbatch flags as (name, value) pairs, e.g. ``("account", "proj")``.
    """

    partition: str | None = None
    minutes: int = 60
    cpus_per_run: int = 4
    mem_gb: float | None = None
    array_parallelism: int = 64
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ExperimentConfig:
    """Settings of one invocation.

    Attributes:
        groups: the group names to run, in order, ``all`` already expanded.
        dataset: the victim's data set (a `splitnn.common.datasets` name).
        epochs: training epochs of every classifier.
        seeds: seeds 0..seeds-1 of every setting; tables give mean and standard error.
        jobs: training (or attack) runs at once, each a server + client pair of processes
            (with ``executor="slurm"``: the job array's parallelism).
        force: redo runs that are already done.
        max_steps: batches per epoch at most (smoke runs); None: whole epochs.
        lr: the data holder's learning rate (without DP-SGD).
        dp_lr: the data holder's learning rate with DP-SGD (the ``dp`` group): DP-SGD's own
            default, as `splitnn-client --dp-epsilon` without ``--lr``.
        attack_epochs: epochs of every attacker's decoder (`DECODER_EPOCHS` by default, as in
            every program).
        decoder: the attackers' decoder (`splitnn-attack run --decoder`).
        clean_comparison: also run the reference's noise-free attacker on the noise models.
        keep_wirelogs: keep the whole wire log of each run (training batches included) instead
            of only the deployment batches that the attacks use.
        only: shell patterns (`fnmatch`) on the run names of the ``multi`` and ``threats``
            groups: only the simulations whose name matches one of them run and are tabled;
            empty: all of them.
        model_dir: checkpoints (classifiers/, attackers/, validators/).
        data_dir: torchvision data sets.
        runs_dir: run records, wire logs and process logs of this tool.
        results_dir: CSV tables, and figures under figures/.
        progress: show progress bars.
        data_fingerprint: hash of the data set's splits (`records.fingerprint`), set by `run`.
        executor: ``local`` runs on this machine, `jobs` at once in threads of this process;
            ``slurm`` submits every run as one job of a Slurm job array (`executors`).
        slurm: the jobs' resources with ``executor="slurm"``.
    """

    groups: tuple[str, ...]
    dataset: str = "mnist5k"
    epochs: int = 10
    seeds: int = 1
    jobs: int = 1
    force: bool = False
    max_steps: int | None = None
    lr: float = 1e-4
    dp_lr: float = DP_LR
    attack_epochs: int = DECODER_EPOCHS
    decoder: str = "deep"
    clean_comparison: bool = True
    keep_wirelogs: bool = False
    only: tuple[str, ...] = ()
    model_dir: Path = Path("models")
    data_dir: Path = Path("data")
    runs_dir: Path = Path("runs/experiments")
    results_dir: Path = Path("results")
    progress: bool = True
    data_fingerprint: str = ""
    executor: Executor = "local"
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    @property
    def figures_dir(self) -> Path:
        return self.results_dir / "figures"

    def lr_for(self, setting: Setting) -> float:
        """The learning rate a classifier of `setting` trains with: `dp_lr` with DP-SGD."""
        return self.lr if setting.dp_epsilon is None else self.dp_lr

    def threads_per_job(self) -> int:
        """Torch threads for each of `jobs` concurrent runs: the cores shared out, at least 1;
        on Slurm, the CPUs each job has (the node's count says nothing of the job's share)."""
        if self.executor == "slurm":
            return self.slurm.cpus_per_run
        return max(1, (os.cpu_count() or 1) // self.jobs)


def default_dataset(data_dir: Path) -> str:
    """``mnist`` when its files are already in `data_dir`, else the embedded ``mnist5k``."""
    return "mnist" if locally_available("mnist", data_dir) else "mnist5k"
