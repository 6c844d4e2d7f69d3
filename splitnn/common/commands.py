"""The command lines the orchestrators (`splitnn-sim`, `splitnn-experiments`) give the data
holder and the attacker, and their typed reports back: one home for each.

A field left None is not passed, so the program's own default applies. Every run asks for the
program's JSON report, which is parsed into `RunReport` / `AttackReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TypeVar

from splitnn.common.credentials import Credentials
from splitnn.common.processes import ProcessError, run_json
from splitnn.common.reports import AttackReport, ReportError, RunReport

__all__ = [
    "AttackCommand",
    "ClientCommand",
    "HijackedCommand",
    "run_attacker",
    "run_client",
    "run_hijacked",
]

_Report = TypeVar("_Report", RunReport, AttackReport)


def _flags(pairs: list[tuple[str, object]]) -> list[str]:
    """``--flag value`` for every value that is not None (floats as ``repr``: exact)."""
    out = []
    for flag, value in pairs:
        if value is not None:
            out += [flag, repr(value) if isinstance(value, float) else str(value)]
    return out


@dataclass(frozen=True)
class ClientCommand:
    """A `splitnn-client` command line: a training run, or with `from_checkpoint` a trained
    model served again (its settings come from its manifest)."""

    server: str
    dataset: str | None = None
    noise: float | None = None
    nopeek: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    max_steps: int | None = None
    threads: int | None = None
    from_checkpoint: Path | None = None
    eval_noise: float | None = None
    model_dir: Path | None = None
    data_dir: Path | None = None
    deploy: bool = False
    # An orchestrator starts its runs over, whatever an interrupted one left behind, and, as an
    # evaluation harness, has the data holder send the sample indices that score the attack.
    restart: bool = False
    send_indices: bool = False
    quiet: bool = False
    credentials: Credentials = field(default_factory=Credentials)
    # A member of a training group: the group, this holder's index, K and the partition.
    group: str | None = None
    holder: int | None = None
    holders: int | None = None
    partition: str | None = None
    alpha: float | None = None
    run: str | None = None
    # The hijack detector (`--guard NAME`) and its settings; None: the program's default.
    guard: str | None = None
    guard_start_after: int | None = None
    guard_fake_probability: float | None = None
    guard_multiplier: float | None = None
    guard_exponent: float | None = None
    guard_threshold: float | None = None
    guard_action: str | None = None
    # DP-SGD on part 1 (`--dp-epsilon` or `--dp-noise-multiplier`); None: the program's default.
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_noise_multiplier: float | None = None
    dp_max_grad_norm: float | None = None

    def as_harness(self) -> ClientCommand:
        """This run as the evaluation harness: started afresh, it then sends the attack slice's
        deployment-time tensors with their sample indices, so that attacks can be scored."""
        return replace(self, deploy=True, restart=True, send_indices=True)

    def args(self) -> list[str]:
        args = ["--server", self.server]
        args += _flags(
            [
                ("--dataset", self.dataset),
                ("--noise", self.noise),
                ("--nopeek", self.nopeek),
                ("--epochs", self.epochs),
                ("--batch-size", self.batch_size),
                ("--lr", self.lr),
                ("--seed", self.seed),
                ("--max-steps", self.max_steps),
                ("--threads", self.threads),
                ("--from-checkpoint", self.from_checkpoint),
                ("--eval-noise", self.eval_noise),
                ("--model-dir", self.model_dir),
                ("--data-dir", self.data_dir),
                ("--group", self.group),
                ("--holder", self.holder),
                ("--holders", self.holders),
                ("--partition", self.partition),
                ("--alpha", self.alpha),
                ("--run", self.run),
                ("--guard", self.guard),
                ("--guard-start-after", self.guard_start_after),
                ("--guard-fake-probability", self.guard_fake_probability),
                ("--guard-multiplier", self.guard_multiplier),
                ("--guard-exponent", self.guard_exponent),
                ("--guard-threshold", self.guard_threshold),
                ("--guard-action", self.guard_action),
                ("--dp-epsilon", self.dp_epsilon),
                ("--dp-delta", self.dp_delta),
                ("--dp-noise-multiplier", self.dp_noise_multiplier),
                ("--dp-max-grad-norm", self.dp_max_grad_norm),
            ]
        )
        switches = [
            ("--deploy", self.deploy),
            ("--restart", self.restart),
            ("--send-indices", self.send_indices),
            ("-q", self.quiet),
        ]
        args += [flag for flag, on in switches if on]
        return [*args, *self.credentials.args(), "--json"]


@dataclass(frozen=True)
class AttackCommand:
    """A `splitnn-attack run` command line attacking a wire log."""

    classifier: Path | None  # None: no part 1 lent (oracle "substitute")
    from_log: Path
    oracle: str | None = None  # "lent" (the program's default) or "substitute"
    head: Path | None = None  # the server's head checkpoint (a substitute's label term)
    dataset: str | None = None
    aux: str | None = None
    aux_fraction: float | None = None
    set_noise: float | None = None
    decoder: str | None = None
    protocol: str | None = None
    epochs: int | None = None
    seed: int | None = None
    model_dir: Path | None = None
    data_dir: Path | None = None
    figure: Path | None = None
    validator_epochs: int | None = None
    validator_dir: Path | None = None  # None: model_dir
    run: str | None = None  # the victim's run in the log; None: the log's latest run
    substitute_epochs: int | None = None  # with oracle "substitute": its training epochs
    quiet: bool = False

    def args(self) -> list[str]:
        args = [*(["-q"] if self.quiet else []), "run"]
        args += _flags(
            [
                ("--oracle", self.oracle),
                ("--classifier", self.classifier),
                ("--head", self.head),
                ("--from-log", self.from_log),
                ("--dataset", self.dataset),
                ("--aux", self.aux),
                ("--aux-fraction", self.aux_fraction),
                ("--set-noise", self.set_noise),
                ("--decoder", self.decoder),
                ("--protocol", self.protocol),
                ("--epochs", self.epochs),
                ("--seed", self.seed),
                ("--model-dir", self.model_dir),
                ("--data-dir", self.data_dir),
                ("--figure", self.figure),
                ("--validator-epochs", self.validator_epochs),
                ("--validator-dir", self.validator_dir),
                ("--run", self.run),
                ("--substitute-epochs", self.substitute_epochs),
            ]
        )
        return [*args, "--json"]


@dataclass(frozen=True)
class HijackedCommand:
    """A `splitnn-attack hijacked` command line: a hijacking server's decoder snapshots
    (`decoders`) scored on its wire log."""

    from_log: Path
    decoders: Path
    run: str | None = None
    dataset: str | None = None
    data_dir: Path | None = None
    model_dir: Path | None = None
    seed: int | None = None
    validator_epochs: int | None = None
    curve: Path | None = None
    figure: Path | None = None
    quiet: bool = False

    def args(self) -> list[str]:
        args = [*(["-q"] if self.quiet else []), "hijacked"]
        args += _flags(
            [
                ("--from-log", self.from_log),
                ("--decoders", self.decoders),
                ("--run", self.run),
                ("--dataset", self.dataset),
                ("--data-dir", self.data_dir),
                ("--model-dir", self.model_dir),
                ("--seed", self.seed),
                ("--validator-epochs", self.validator_epochs),
                ("--curve", self.curve),
                ("--figure", self.figure),
            ]
        )
        return [*args, "--json"]


def run_client(
    command: ClientCommand, *, log: IO[str] | None = None, env: dict[str, str] | None = None
) -> RunReport:
    """Runs `splitnn-client` to completion; its report.

    Raises:
        ProcessError: it failed, or its report is not a run report of this version.
    """
    return _parsed(RunReport, run_json("splitnn-client", command.args(), log=log, env=env))


def run_attacker(
    command: AttackCommand, *, log: IO[str] | None = None, env: dict[str, str] | None = None
) -> AttackReport:
    """Runs `splitnn-attack run` to completion; its report.

    Raises:
        ProcessError: it failed, or its report is not an attack report of this version.
    """
    return _parsed(AttackReport, run_json("splitnn-attack", command.args(), log=log, env=env))


def run_hijacked(
    command: HijackedCommand, *, log: IO[str] | None = None, env: dict[str, str] | None = None
) -> tuple[AttackReport, list[dict[str, float]]]:
    """Runs `splitnn-attack hijacked` to completion; the final snapshot's report and the curve
    (one row per snapshot: step, mse, psnr, ssim, validator_accuracy, train_mse, train_ssim).

    Raises:
        ProcessError: it failed, or printed no report of this version, or no curve.
    """
    data = run_json("splitnn-attack", command.args(), log=log, env=env)
    curve = data.pop("curve", None)
    if not isinstance(curve, list) or not all(isinstance(row, dict) for row in curve):
        raise ProcessError("splitnn-attack hijacked printed no curve")
    return _parsed(AttackReport, data), curve


def _parsed(kind: type[_Report], data: dict[str, object]) -> _Report:
    try:
        return kind.from_json(data)
    except ReportError as error:
        raise ProcessError(f"unexpected report: {error}") from None
