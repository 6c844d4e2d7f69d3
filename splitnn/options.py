"""The click options that mean the same thing in every splitnn program, each with one range.

An orchestrator (`splitnn-sim`, `splitnn-experiments`) passes the victim's training settings on
to `splitnn-client`, so it takes them with the data holder's own types: a value the data holder
would refuse is a usage error before anything starts. Role-specific defaults (the attacker's
epochs and learning rate) stay with their program.

A command hands its options to its settings in one way: `config_from`, by field name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from splitnn.client.dp import DP_DELTA, DP_LR, DP_MAX_GRAD_NORM, DPError, DPSettings
from splitnn.client.guard import GUARD_ACTIONS, GUARDS, GuardSettings
from splitnn.common.credentials import CredentialError, Credentials
from splitnn.common.datasets import DATASETS
from splitnn.common.devices import DEVICE_HELP
from splitnn.common.models import DECODER_NAMES, NOPEEK_BATCH_SIZE, PLAIN_BATCH_SIZE
from splitnn.common.partitions import SCHEMES

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
# What an option factory returns: it adds its options to a command function.
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# One type per quantity: every program that takes it accepts exactly the same values.
SEED = click.IntRange(min=0)
NOISE = click.FloatRange(min=0.0, max=1e6)  # a Laplace scale b
NOPEEK = click.FloatRange(min=0.0, max=1e6)  # a NoPeek weight W
EPOCHS = click.IntRange(1, 10_000)
BATCH_SIZE = click.IntRange(2, 1024)
LEARNING_RATE = click.FloatRange(0.0, 1.0, min_open=True)
HOLDERS = click.IntRange(1, 64)
GUARD_START_AFTER = click.IntRange(0, 1_000_000)  # training steps
# More fake batches than regular ones would leave little training: at most one in two.
GUARD_FAKE_PROBABILITY = click.FloatRange(0.0, 0.5, min_open=True)
GUARD_MULTIPLIER = click.FloatRange(0.0, 100.0, min_open=True)
GUARD_EXPONENT = click.FloatRange(0.0, 10.0, min_open=True)
GUARD_THRESHOLD = click.FloatRange(0.0, 1.0, min_open=True, max_open=True)
DIRECTORY = click.Path(file_okay=False, path_type=Path)
EXISTING_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


def stack(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """One decorator applying `decorators` as if written one above the other, first on top."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


FLAG = "flag"  # the type of an `option_table` row that is an on/off flag


def option_table(*rows: tuple[str, Any, object, str | None]) -> Callable[[F], F]:
    """One click option per row ``(flag, type, default, help)``, first on top: options alike in
    shape, written as a table. A row of type `FLAG` is an on/off flag (its default is ignored)."""
    return stack(
        *(
            click.option(flag, is_flag=True, help=text)
            if kind == FLAG
            else click.option(flag, type=kind, default=default, help=text)
            for flag, kind, default, text in rows
        )
    )


def config_from(cls: type[T], options: Mapping[str, Any], **extra: Any) -> T:
    """The settings dataclass `cls` built from a command's options and `extra`, by field name.

    Raises:
        TypeError: an option is not a field of `cls` (a new flag the settings would drop).
    """
    fields = {f.name for f in dataclasses.fields(cast(Any, cls))}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field for the options {', '.join(unknown)}")
    return cls(**{**options, **extra})


def logging_options(function: F) -> F:
    """``-v/--verbose`` (a count) and ``-q/--quiet``, as every program that logs takes them."""
    return stack(
        click.option("-v", "--verbose", count=True, help="More logging (DEBUG)."),
        click.option(
            "-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars."
        ),
    )(function)


def json_option(function: F) -> F:
    """``--json``, received as `as_json`."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the results as one JSON object."
    )(function)


def device_option(function: F) -> F:
    """``--device``: where the program computes. Checked when the command starts (a device this
    machine lacks ends it with exit 2 and one line, see `splitnn.common.devices`)."""
    return click.option(
        "--device", metavar="DEVICE", default="cpu", help=f"Where to compute: {DEVICE_HELP}"
    )(function)


def seed_option(*, help: str = "Seeds weights, shuffling and noise.") -> Decorator:
    return click.option("--seed", type=SEED, default=0, help=help)


_DATASET_HELP = "mnist5k is embedded (offline); the others download to --data-dir."


def dataset_option(*, default: str | None = "mnist5k", help: str = _DATASET_HELP) -> Decorator:
    return click.option("--dataset", type=click.Choice(DATASETS), default=default, help=help)


def dir_option(flag: str, default: str, *, help: str | None = None) -> Decorator:
    """A folder option (``--model-dir``, ``--data-dir``...), created when written to."""
    return click.option(flag, type=DIRECTORY, default=Path(default), help=help)


def noise_option(flag: str = "--noise", *, default: float | None = 0.0, help: str) -> Decorator:
    """A Laplace scale b (the data holder's, the colluder's, the attacker's oracle's)."""
    return click.option(flag, type=NOISE, default=default, help=help)


def nopeek_option(flag: str = "--nopeek", *, help: str) -> Decorator:
    return click.option(flag, type=NOPEEK, default=0.0, help=help)


def epochs_option(*, help: str = "Training epochs.") -> Decorator:
    return click.option("--epochs", type=EPOCHS, default=10, help=help)


def lr_option(*, help: str = "The data holder's learning rate.") -> Decorator:
    return click.option("--lr", type=LEARNING_RATE, default=1e-4, help=help)


def max_steps_option(function: F) -> F:
    return click.option(
        "--max-steps",
        type=click.IntRange(1),
        default=None,
        help="Batches per epoch at most (smoke runs).",
    )(function)


def training_options(*, whose: str, batch_size: int | None) -> Decorator:
    """The data holder's training settings, with its ranges: ``--noise``, ``--nopeek``,
    ``--epochs``, ``--batch-size``, ``--max-steps``, ``--seed``.

    Args:
        whose: how the help names the data holder, e.g. "Victim's" ("" for the holder itself).
        batch_size: the default batch size; None leaves it to the study's rule.
    """
    who = f"{whose} " if whose else ""

    def sentence(text: str) -> str:
        return text[:1].upper() + text[1:]

    study = f"The study used {PLAIN_BATCH_SIZE}, and {NOPEEK_BATCH_SIZE} with NoPeek."
    return stack(
        noise_option(help=sentence(f"{who}Laplace scale b on the cut tensor.")),
        nopeek_option(help=sentence(f"{who}NoPeek weight W (distance correlation).")),
        epochs_option(help=sentence(f"{who}training epochs.")),
        click.option(
            "--batch-size",
            type=BATCH_SIZE,
            default=batch_size,
            help=study if batch_size is not None else f"{study} Default: the study's.",
        ),
        max_steps_option,
        seed_option(),
    )


def attacker_options(function: F) -> F:
    """What the colluding attacker trains its decoder with: ``--aux``, ``--aux-fraction``,
    ``--set-noise``, ``--decoder`` (its epochs and learning rate stay with its program)."""
    return stack(
        click.option(
            "--aux",
            type=click.Choice(DATASETS),
            default=None,
            help="Attacker's auxiliary data set. Default: the victim's (its aux slice).",
        ),
        click.option(
            "--aux-fraction",
            type=click.FloatRange(0, 1, min_open=True),
            default=1.0,
            help="Fraction of the auxiliary slice to use.",
        ),
        noise_option(
            "--set-noise",
            default=None,
            help="Query part 1 with this noise instead of the deployed noise.",
        ),
        click.option(
            "--decoder",
            type=click.Choice(DECODER_NAMES),
            default="deep",
            help="Attacker's inversion decoder.",
        ),
    )(function)


def partition_options(*, holders_help: str) -> Decorator:
    """``--holders K``, ``--partition`` and ``--alpha``: how the training set is shared out.

    The command receives `holders`, `partition` and `alpha`; ``--alpha`` without
    ``--partition dirichlet`` is a usage error.
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def command(*args: Any, **kwargs: Any) -> Any:
            if kwargs["alpha"] is not None and kwargs["partition"] != "dirichlet":
                raise click.UsageError("--alpha needs --partition dirichlet")
            return function(*args, **kwargs)

        return stack(
            click.option("--holders", type=HOLDERS, default=1, help=holders_help),
            click.option(
                "--partition",
                type=click.Choice(SCHEMES),
                default="iid",
                help="How the training set is shared out among the holders (dirichlet: "
                "non-IID by label).",
            ),
            click.option(
                "--alpha",
                type=click.FloatRange(0, min_open=True),
                default=None,
                help="Dirichlet concentration (--partition dirichlet; small: skewed). "
                "Default: 0.5.",
            ),
        )(cast(F, command))

    return decorate


def connect_timeout_option(function: F) -> F:
    return click.option(
        "--connect-timeout",
        type=click.FloatRange(0.1),
        default=30.0,
        help="Seconds to wait for the server before giving up (exit 3).",
    )(function)


_CREDENTIALS = (
    ("--tls-ca", EXISTING_FILE, "CA certificate (PEM) that signed the server's: use TLS."),
    ("--tls-cert", EXISTING_FILE, "This party's certificate (PEM), for mutual TLS."),
    ("--tls-key", EXISTING_FILE, "This party's private key (PEM), for mutual TLS."),
    ("--tls-server-name", None, "Name the server's certificate must carry. Default: the host."),
    ("--token-file", EXISTING_FILE, "File whose first line is this party's bearer token."),
)


def credential_options(function: F) -> F:
    """Adds the TLS and token options of every program that calls the server; the command
    receives them as one argument, ``credentials: Credentials`` (a usage error if unusable)."""

    @functools.wraps(function)
    def command(*args: Any, **kwargs: Any) -> Any:
        given = [kwargs.pop(flag[2:].replace("-", "_")) for flag, _, _ in _CREDENTIALS]
        try:
            credentials = Credentials(*given)
        except CredentialError as error:
            raise click.UsageError(str(error)) from None
        return function(*args, credentials=credentials, **kwargs)

    options = [click.option(flag, type=kind, help=text) for flag, kind, text in _CREDENTIALS]
    return stack(*options)(cast(F, command))


_GUARD_DEFAULTS = GuardSettings()
# The guard's settings: (flag, type, default, help); the command receives them as guard_<name>.
_GUARD_SETTINGS: tuple[tuple[str, Any, object, str], ...] = (
    ("--guard-start-after", GUARD_START_AFTER, _GUARD_DEFAULTS.start_after,
     "Training steps before the guard's first fake batch (N)."),
    ("--guard-fake-probability", GUARD_FAKE_PROBABILITY, _GUARD_DEFAULTS.fake_probability,
     "Chance that a step after N is a fake batch (shifted labels, no update of part 1)."),
    ("--guard-multiplier", GUARD_MULTIPLIER, _GUARD_DEFAULTS.multiplier,
     "The score's multiplier m: SG = sigmoid(m x) ** e."),
    ("--guard-exponent", GUARD_EXPONENT, _GUARD_DEFAULTS.exponent, "The score's exponent e."),
    ("--guard-threshold", GUARD_THRESHOLD, _GUARD_DEFAULTS.threshold,
     "A score below this is the alarm (an honest server scores near 1)."),
    ("--guard-action", click.Choice(GUARD_ACTIONS), _GUARD_DEFAULTS.action,
     "At the alarm: warn (one loud line, training goes on) or stop (save the state, exit 4)."),
)  # fmt: skip


def guard_options(function: F) -> F:
    """``--guard NAME|none`` and its settings ``--guard-start-after`` ... ``--guard-action``:
    the data holder's test of whether the server's gradients follow the labels (SplitGuard).

    The command receives `guard` (a name in `GUARDS`, None for ``none``) and `guard_settings` (a
    `GuardSettings` of the ``--guard-*`` flags); a ``--guard-*`` setting given on the command line
    without a guard is a usage error (it would change nothing).
    """

    @functools.wraps(function)
    def command(*args: Any, **kwargs: Any) -> Any:
        if kwargs["guard"] == "none":
            kwargs["guard"] = None
            context = click.get_current_context()
            given = [
                flag
                for flag, _, _, _ in _GUARD_SETTINGS
                if context.get_parameter_source(_flag_name(flag))
                is click.core.ParameterSource.COMMANDLINE
            ]
            if given:
                raise click.UsageError(f"{', '.join(given)} needs --guard {', '.join(GUARDS)}")
        settings = {_flag_name(flag): kwargs.pop(_flag_name(flag)) for flag, *_ in _GUARD_SETTINGS}
        kwargs["guard_settings"] = GuardSettings(
            **{name.removeprefix("guard_"): value for name, value in settings.items()}
        )
        return function(*args, **kwargs)

    return option_table(
        ("--guard", click.Choice(["none", *GUARDS]), "none",
         "The data holder's hijack detector. splitguard: fake batches with shifted labels, "
         "whose gradients an honest server makes differ from the regular ones."),
        *_GUARD_SETTINGS,
    )(cast(F, command))  # fmt: skip


# DP-SGD's flags: (flag, type, default, help); the command receives them as one `dp`.
_DP_FLAGS: tuple[tuple[str, Any, object, str], ...] = (
    ("--dp-epsilon", click.FloatRange(0.0, min_open=True), None,
     "DP-SGD on part 1 with this (epsilon, delta) budget for the whole run: the noise "
     "multiplier is found for the run's epochs and sampling rate (RDP accountant)."),
    ("--dp-delta", click.FloatRange(0.0, 1.0, min_open=True, max_open=True), DP_DELTA,
     "DP-SGD's delta."),
    ("--dp-noise-multiplier", click.FloatRange(0.0, min_open=True), None,
     "DP-SGD with this noise multiplier sigma instead of a target epsilon (epsilon is then "
     "what the accountant reports)."),
    ("--dp-max-grad-norm", click.FloatRange(0.0, min_open=True), DP_MAX_GRAD_NORM,
     "DP-SGD's clipping norm C of each sample's gradient."),
)  # fmt: skip


def dp_options(function: F) -> F:
    """``--dp-epsilon E`` or ``--dp-noise-multiplier S``, with ``--dp-delta`` and
    ``--dp-max-grad-norm``: DP-SGD on part 1 (`splitnn.client.dp`).

    The command receives `dp`: a `DPSettings`, or None without DP-SGD. With DP-SGD and no
    ``--lr`` on the command line, `lr` becomes DP-SGD's own default (`DP_LR`). A ``--dp-delta``
    or ``--dp-max-grad-norm`` without DP-SGD, or both an epsilon and a noise multiplier, is a
    usage error.
    """

    @functools.wraps(function)
    def command(*args: Any, **kwargs: Any) -> Any:
        values = {flag: kwargs.pop(_flag_name(flag)) for flag, *_ in _DP_FLAGS}
        context = click.get_current_context()
        given = [
            flag
            for flag, *_ in _DP_FLAGS
            if context.get_parameter_source(_flag_name(flag))
            is click.core.ParameterSource.COMMANDLINE
        ]
        epsilon, sigma = values["--dp-epsilon"], values["--dp-noise-multiplier"]
        if epsilon is None and sigma is None:
            if given:
                raise click.UsageError(
                    f"{', '.join(given)} needs --dp-epsilon or --dp-noise-multiplier"
                )
            kwargs["dp"] = None
            return function(*args, **kwargs)
        try:
            kwargs["dp"] = DPSettings(
                epsilon=epsilon,
                delta=values["--dp-delta"],
                noise_multiplier=sigma,
                max_grad_norm=values["--dp-max-grad-norm"],
            )
        except DPError as error:
            raise click.UsageError(str(error)) from None
        lr_given = context.get_parameter_source("lr") is click.core.ParameterSource.COMMANDLINE
        if "lr" in kwargs and not lr_given:
            kwargs["lr"] = DP_LR
        return function(*args, **kwargs)

    return option_table(*_DP_FLAGS)(cast(F, command))


def _flag_name(flag: str) -> str:
    """The parameter of a flag: ``--dp-max-grad-norm`` → ``dp_max_grad_norm``."""
    return flag[2:].replace("-", "_")
