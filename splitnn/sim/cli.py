"""`splitnn-sim`: server, victim data holder and attacker as three processes on loopback."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from splitnn.client.dp import NOPEEK_REFUSAL
from splitnn.common.devices import export_device
from splitnn.common.logs import configure_logging
from splitnn.common.models import DECODER_EPOCHS
from splitnn.common.processes import raise_on_sigterm
from splitnn.common.reports import MultiSummary, VictimSummary
from splitnn.common.threats import THREATS
from splitnn.common.topology import DEFAULT, NAMES, describe
from splitnn.options import (
    DIRECTORY,
    attacker_options,
    config_from,
    dataset_option,
    device_option,
    dir_option,
    dp_options,
    guard_options,
    json_option,
    logging_options,
    noise_option,
    nopeek_option,
    option_table,
    partition_options,
    training_options,
)
from splitnn.programs import program
from splitnn.sim.app import SimConfig, SimSummary, run
from splitnn.sim.cross_holder import MultiConfig, run_multi
from splitnn.sim.seeds import SeedsSummary, seed_list, seeded

_MULTI_ONLY = ("topology", "partition", "alpha", "colluder", "colluder_noise", "colluder_nopeek")


@program("splitnn-sim", example_option="NOISE=0.5")
@option_table(
    ("--threat", click.Choice(list(THREATS)), "colluding",
     "The threat model: colluding (a data holder lends the server its part 1), fsha (a "
     "malicious server hijacks the victim's training), passive (the server alone, from the "
     "wire and public data)."),
)  # fmt: skip
@dataset_option()
@training_options(whose="Victim's", batch_size=None)
@attacker_options
@option_table(
    ("--attack-epochs", click.IntRange(1), DECODER_EPOCHS, None),
    ("--validator-epochs", click.IntRange(1), 5, None),
    ("--hijack-pretrain-steps", click.IntRange(0), 300,
     "With --threat fsha: the server's autoencoder steps before it serves."),
    ("--hijack-snapshot-every", click.IntRange(1), 10,
     "With --threat fsha: score the server's decoder every N victim steps (the curve)."),
    ("--substitute-epochs", click.IntRange(1), None,
     "With --threat passive: epochs of the substitute part 1 (default: splitnn-attack's)."),
)  # fmt: skip
@click.option(
    "--seeds",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Run the whole simulation N times, with seeds --seed .. --seed + N - 1 (0..N-1 by "
    "default), and report every score as its mean over the seeds with its standard error "
    "(<score>_se), each seed's files apart (WORKDIR/seed<k>, figure <stem>_seed<k>).",
)
@dir_option("--workdir", "runs/sim", help="Holds the wire log of this simulation.")
@dir_option("--model-dir", "models")
@click.option(
    "--validator-dir",
    type=DIRECTORY,
    default=None,
    help="Where the attacker keeps its validation classifier (trained there if missing), e.g. "
    "one folder that simulations of the same data set and seed share. Default: --model-dir.",
)
@click.option(
    "--figure",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("results/figures/sim_reconstructions.png"),
)
@partition_options(
    holders_help="Data holders K. With K >= 2 they train one model in a group of --topology, "
    "and the server colludes with holder --colluder to invert every other holder's tensors."
)
@click.option(
    "--topology",
    type=click.Choice(NAMES),
    default=DEFAULT.name,
    help=f"With --holders K >= 2: {describe()}.",
)
@click.option(
    "--colluder", type=click.IntRange(0), default=0, help="With --holders: the colluding holder."
)
@noise_option(
    "--colluder-noise",
    help="With --holders: the colluder's Laplace b (--noise and --nopeek are the victims').",
)
@nopeek_option("--colluder-nopeek", help="The colluder's NoPeek W.")
@guard_options
@dp_options
@device_option
@json_option
@logging_options
def main(*, as_json: bool, quiet: bool, verbose: int, **options: Any) -> None:
    """Run the three parties of the threat model as separate processes on loopback.

    \b
    1. splitnn-server in collusion mode, logging every received batch to WORKDIR/wire.log
    2. splitnn-client, the victim, trains with --noise/--nopeek and then runs its
       deployment-time images (the attack-evaluation slice) through the split model
    3. splitnn-attack inverts the intercepted deployment tensors and scores them
    Then prints victim accuracy and attack scores and writes the reconstruction figure.

    --threat picks the threat model; the victim's program is the same in all three:
    colluding (default) as above, through the victim's part 1 lent by a colluding holder;
    fsha: the server hijacks the victim's training (splitnn-server --hijack fsha) and scores
    its decoder every --hijack-snapshot-every steps (--json: `attack_curve`); passive: the
    server alone trains a substitute part 1 from its wire log and head (splitnn-attack run
    --oracle substitute). --json adds `threat` and the trivial baselines' MSE
    (`attack_baseline_mean_mse`, `attack_baseline_class_mse`).
    Server and victim speak mutual TLS with development certificates made under
    WORKDIR/certs (see splitnn-certs).

    With --holders K (K >= 2), K data holders train one model in a training group of the
    server (--topology), each on its share of the training set (--partition) and each with its
    own certificate. The server colludes with holder --colluder: the attacker gets its part 1
    as deployed and inverts every other holder's deployment tensors from the wire. --noise and
    --nopeek are the victims' defences; --json prints one object with `topology`, `holders`,
    `members` and a list `victims` (holder, test_accuracy, attack_ssim, attack_psnr,
    attack_validator_accuracy, ...). Each victim is scored twice by the one decoder: attack_*
    on its deployment tensors (the attack-evaluation images, which every holder deploys alike:
    where all end with one part 1, round-robin and splitfed, victims score alike), and
    own_attack_mse, own_attack_psnr, own_attack_ssim on its own training share as the server
    received it (each image's last tensor, from the victim's part 1 of then;
    own_attack_images of them); beside them the trivial baselines on its deployment tensors
    (attack_baseline_mean_mse, attack_baseline_class_mse).

    --dp-epsilon E (or --dp-noise-multiplier S) trains the victim's part 1 with DP-SGD (see
    splitnn-client --help; a lone victim, without --nopeek); --json adds `dp_epsilon` (spent,
    from the accountant), `dp_delta`, `dp_noise_multiplier` and `dp_max_grad_norm`.

    Every accuracy comes with `test_samples`, the test images it was measured on. Every party's
    random streams derive from --seed (the server's too).

    --seeds N runs the whole simulation for the seeds --seed, ..., --seed + N - 1, one after the
    other, each seed's wire log, certificates and curve under WORKDIR/seed<k> and its figure at
    <figure stem>_seed<k> (checkpoints, attackers and validators carry the seed in their
    names). With N >= 2, --json gives every score (test_accuracy, attack_mse, ..., for several
    holders every member's and victim's too) as the mean over the seeds, its standard error
    (sample standard deviation over sqrt(N)) as <score>_se, the settings the runs share,
    `seeds`, the total `seconds` and `runs`, each seed's own summary. A seed that fails stops
    the simulation with that failure's exit status.

    --guard splitguard gives the victim SplitGuard (see splitnn-client --help); --json adds
    `guard`, `guard_detected_at_step` (the training step of its alarm, null: none) and
    `guard_lowest_score`, the scores (`guard_scores`) and, with --threat fsha, the curve's row
    at the alarm (`attack_at_alarm`: how well the server inverted by then). With
    --guard-action stop an alarm stops the victim (exit 4) and the simulation with it (exit 4).

    \b
    Examples:
      splitnn-sim --holders 4 --noise 0.5 --epochs 5
      splitnn-sim --threat fsha --guard splitguard --json
      splitnn-sim --dp-epsilon 3 --json
    """
    configure_logging(verbose=verbose, quiet=quiet or as_json)
    raise_on_sigterm()  # SIGTERM unwinds as Ctrl-C does: the parties started are stopped
    export_device(options.pop("device"))  # every party it starts computes there
    multi_options = {k: options.pop(k) for k in _MULTI_ONLY}
    holders = options.pop("holders")
    seeds = seed_list(options["seed"], options.pop("seeds"))
    several = len(seeds) > 1
    if holders >= 2 and options["guard"] is not None:
        raise click.UsageError("--guard watches a lone victim: not with --holders K >= 2")
    _check_threat(options, holders=holders)
    dp = options.pop("dp")
    if dp is not None and holders >= 2:
        raise click.UsageError("--dp-* trains a lone victim with DP-SGD: not with --holders K >= 2")
    if dp is not None and options["nopeek"] > 0:
        raise click.UsageError(NOPEEK_REFUSAL)
    if holders == 1:
        if multi_options["alpha"] is not None or multi_options["colluder"] != 0:
            raise click.UsageError("--alpha and --colluder need --holders K >= 2")
        single = config_from(SimConfig, options, dp=dp, quiet=quiet or as_json)
        runs: list[SimSummary] | list[MultiSummary] = [
            run(seeded(single, seed, several=several)) for seed in seeds
        ]
    else:
        if multi_options["colluder"] >= holders:
            raise click.BadParameter(
                f"holder {multi_options['colluder']} of {holders}", param_hint="--colluder"
            )
        if options["set_noise"] is not None:
            raise click.UsageError("--set-noise is for a single holder")
        multi = config_from(
            MultiConfig, {**options, **multi_options}, holders=holders, quiet=quiet or as_json
        )
        runs = [run_multi(seeded(multi, seed, several=several)) for seed in seeds]
    if several:
        summary = SeedsSummary(seeds=seeds, runs=runs)
        if as_json:
            click.echo(json.dumps(summary.to_json()))
        else:
            _print_seeds(summary)
        return
    (one,) = runs
    if as_json:
        click.echo(json.dumps(one.to_json()))
    elif isinstance(one, MultiSummary):
        _print_multi(one)
    else:
        _print_table(one)


_THREAT_ONLY = {
    "hijack_pretrain_steps": ("fsha", "--hijack-pretrain-steps"),
    "hijack_snapshot_every": ("fsha", "--hijack-snapshot-every"),
    "substitute_epochs": ("passive", "--substitute-epochs"),
}


def _check_threat(options: dict[str, Any], *, holders: int) -> None:
    """Refuses settings that the threat model given does not use."""
    threat = options["threat"]
    if holders >= 2 and threat != "colluding":
        raise click.UsageError(f"--threat {threat} attacks a lone victim: not with --holders")
    context = click.get_current_context()
    for name, (owner, flag) in _THREAT_ONLY.items():
        given = context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        if given and threat != owner:
            raise click.UsageError(f"{flag} needs --threat {owner}")
    if threat == "fsha" and options["set_noise"] is not None:
        raise click.UsageError("--set-noise queries a part 1; the hijacking server has its decoder")


def _print_multi(s: MultiSummary) -> None:
    alpha = f" alpha {s.alpha:g}" if s.alpha is not None else ""
    click.echo(
        f"{s.holders} holders, {s.topology}, {s.partition}{alpha} partition, {s.dataset}, "
        f"{s.epochs} epochs, seed {s.seed}; the server colludes with holder {s.colluder} "
        f"(b={s.colluder_noise:g})"
    )
    click.echo(f"{'holder':>6}  {'samples':>7}  {'b':>5}  {'W':>5}  {'test %':>6}  "
               f"{'MSE':>7}  {'PSNR':>6}  {'SSIM':>6}  {'validator %':>11}")  # fmt: skip
    victims = {v.holder: v for v in s.victims}
    for m in s.members:
        v = victims.get(m.holder)
        attack = (
            f"{v.attack_mse:7.4f}  {v.attack_psnr:6.2f}  {v.attack_ssim:6.3f}  "
            f"{v.attack_validator_accuracy:11.1f}"
            if v is not None
            else f"{'(colluder)':>7}"
        )
        click.echo(f"{m.holder:>6}  {m.samples:>7}  {m.noise:>5g}  {m.nopeek:>5g}  "
                   f"{m.test_accuracy:>6.2f}  {attack}")  # fmt: skip
    if s.victims:
        originals = s.victims[0].validator_accuracy_originals
        click.echo(f"validator on the original images: {originals:.1f}%")
        own = [v for v in s.victims if v.own_attack_mse is not None]
        if own:
            click.echo("on each victim's own training tensors (its part 1 of then):")
        for v in own:
            click.echo(f"  holder {v.holder}: MSE {v.own_attack_mse:.4f}  PSNR "
                       f"{v.own_attack_psnr:.2f}  SSIM {v.own_attack_ssim:.3f}  "
                       f"({v.own_attack_images} images)")  # fmt: skip
        based = [v for v in s.victims if v.attack_baseline_mean_mse is not None]
        if based:
            click.echo("trivial baselines on the deployment tensors (MSE; margin = baseline - "
                       "attack, > 0: the attack does better):")  # fmt: skip
        for v in based:
            click.echo(f"  holder {v.holder}: {_baselines(v)}")
    if s.test_samples is not None:
        click.echo(f"test accuracies on {s.test_samples} test images")
    click.echo(f"wire log: {s.wire_log}; wall time {s.seconds:.0f} s")


def _baselines(v: VictimSummary) -> str:
    """A victim's trivial baselines and the attack's margins over them."""
    parts = []
    for name, mse in (
        ("mean image", v.attack_baseline_mean_mse),
        ("class-mean image", v.attack_baseline_class_mse),
    ):
        if mse is not None:
            parts.append(f"{name} {mse:.4f} (margin {mse - v.attack_mse:+.4f})")
    return ", ".join(parts)


def _dp(s: SimSummary) -> str:
    """The victim's DP-SGD as the table says it ("" without)."""
    if s.dp_epsilon is None:
        return ""
    return (
        f", DP-SGD epsilon {s.dp_epsilon:.2f} spent at delta {s.dp_delta:g} "
        f"(sigma {s.dp_noise_multiplier:.3f}, C {s.dp_max_grad_norm:g})"
    )


def _print_table(s: SimSummary) -> None:
    originals = f"(originals {s.validator_accuracy_originals:.1f}%)"
    rows = [
        ("threat", s.threat),
        ("data set", s.dataset),
        ("victim defence", f"noise b={s.noise:g}, NoPeek W={s.nopeek:g}{_dp(s)}"),
        ("seed", str(s.seed)),
        (
            "victim test accuracy",
            f"{s.test_accuracy:.2f}%{_of(s.test_samples)} (best epoch {s.best_epoch})",
        ),
        ("attack images", str(s.attack_images)),
        ("attack MSE", f"{s.attack_mse:.4f}"),
        ("attack PSNR", f"{s.attack_psnr:.2f} dB"),
        ("attack SSIM", f"{s.attack_ssim:.3f}"),
        ("attack dCor(x, x_hat)", f"{s.attack_dcor:.3f}"),
        ("validator on reconstructions", f"{s.attack_validator_accuracy:.1f}% {originals}"),
        *(
            (f"baseline {name}", f"MSE {mse:.4f}")
            for name, mse in (
                ("mean image", s.attack_baseline_mean_mse),
                ("class-mean image", s.attack_baseline_class_mse),
            )
            if mse is not None
        ),
        ("figure", s.figure),
        ("wire log", s.wire_log),
        ("wall time", f"{s.seconds:.0f} s"),
    ]
    if s.guard is not None:
        lowest = "no score" if s.guard_lowest_score is None else f"{s.guard_lowest_score:.3f}"
        alarm = s.guard_detected_at_step
        flagged = "no alarm" if alarm is None else f"ALARM at training step {alarm}"
        rows.insert(4, ("victim guard", f"{s.guard}: {flagged}, lowest score {lowest}"))
    if s.attack_at_alarm is not None:
        at = s.attack_at_alarm
        rows.insert(5, ("attack at the alarm", f"step {int(at['step'])}: training tensors "
                        f"MSE {at['train_mse']:.4f}, SSIM {at['train_ssim']:.3f}"))  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def _print_seeds(s: SeedsSummary) -> None:
    """Each seed's summary as a single run prints it, then the scores over the seeds."""
    summaries: list[SimSummary | MultiSummary] = [*s.runs]
    for seed, one in zip(s.seeds, summaries, strict=True):
        click.echo(f"--- seed {seed} ---")
        if isinstance(one, MultiSummary):
            _print_multi(one)
        else:
            _print_table(one)
    data = s.to_json()
    seeds = ", ".join(map(str, s.seeds))
    click.echo(f"--- {len(s.seeds)} seeds ({seeds}): mean ± standard error ---")
    samples = data.get("test_samples")
    if samples is not None:
        click.echo(f"test accuracies on {samples} test images")
    _print_means(data, indent="")
    for key in ("members", "victims"):
        for entry in data.get(key, []):
            click.echo(f"{key[:-1]} {entry['holder']}:")
            _print_means(entry, indent="  ")
    click.echo(f"wall time {data['seconds']:.0f} s")


def _print_means(data: Mapping[str, Any], *, indent: str) -> None:
    """`key  mean ± se` for every score of `data` measured in every seed."""
    rows = [(k, v, data[f"{k}_se"]) for k, v in data.items() if data.get(f"{k}_se") is not None]
    width = max((len(k) for k, _, _ in rows), default=0)
    for key, mean, se in rows:
        click.echo(f"{indent}{key:<{width}}  {mean:.4g} ± {se:.2g}")


def _of(test_samples: int | None) -> str:
    return "" if test_samples is None else f" of {test_samples} test images"
