"""What every splitnn program shares: its command (``--version``, environment variables, exit
codes in ``--help``), the one exception → exit-code map around it, and its console script.

Each role's ``cli.py`` declares its command with `program`; ``[project.scripts]`` points at the
launchers at the bottom, which set the process defaults before any of splitnn is imported.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, ClassVar

import click

from splitnn.common import exits
from splitnn.common.processes import CHILDREN

# Which exit codes each program can end with (their meanings are `exits.MEANINGS`).
EXIT_CODES: dict[str, tuple[int, ...]] = {
    "splitnn-server": (exits.OK, exits.FAILED, exits.USAGE),
    "splitnn-client": (
        exits.OK,
        exits.FAILED,
        exits.USAGE,
        exits.UNREACHABLE,
        exits.ALARM,
        exits.INTERRUPTED,
    ),
    "splitnn-attack": (exits.OK, exits.FAILED, exits.USAGE, exits.UNREACHABLE, exits.INTERRUPTED),
    "splitnn-sim": (exits.OK, exits.FAILED, exits.USAGE, exits.ALARM, exits.INTERRUPTED),
    "splitnn-experiments": (exits.OK, exits.FAILED, exits.USAGE, exits.INTERRUPTED),
    "splitnn-certs": (exits.OK, exits.FAILED, exits.USAGE),
}
# The orchestrators stop the programs they started before they end.
_STOPPED = (
    "interrupted (Ctrl-C or SIGTERM) before the work finished; the programs it started are stopped"
)
_NOTES = {
    "splitnn-server": {exits.OK: "success, also after a graceful SIGTERM/SIGINT shutdown"},
    "splitnn-client": {
        exits.USAGE: "bad usage, or a state to resume (--resume or --restart)",
        exits.UNREACHABLE: "the server could not be reached (--connect-timeout), or was lost "
        "for longer than --reconnect-timeout",
        exits.ALARM: "--guard-action stop: the guard flagged the server; the state is saved "
        "(--resume continues past the alarm)",
    },
    "splitnn-sim": {
        exits.ALARM: "--guard splitguard --guard-action stop: the victim's guard flagged the "
        "server and the victim stopped",
        exits.INTERRUPTED: _STOPPED,
    },
    "splitnn-experiments": {exits.INTERRUPTED: _STOPPED},
}


def env_prefix(name: str) -> str:
    """The environment-variable prefix of program `name`: ``splitnn-sim`` → ``SPLITNN_SIM``."""
    return name.upper().replace("-", "_")


def epilog(name: str, *, example_option: str, subcommands: bool = False) -> str:
    """The end of `name`'s ``--help``: its environment variables and exit codes."""
    prefix = env_prefix(name)
    where = f"{prefix}_<COMMAND>_<OPTION>" if subcommands else f"{prefix}_<OPTION>"
    notes = _NOTES.get(name, {})
    codes = [f"  {code:<4} {notes.get(code, exits.MEANINGS[code])}" for code in EXIT_CODES[name]]
    return "\n".join(
        [
            "\b",
            f"Environment: {where} sets an option not given on the command line,",
            f"  e.g. {prefix}_{example_option}",
            "Exit codes:",
            *codes,
        ]
    )


def _invoke_mapped(name: str, invoke: Callable[[], Any]) -> Any:
    """Runs a command's body; an exception of a known kind ends the program with its code."""
    try:
        return invoke()
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):  # Ctrl-C, or an orchestrator's SIGTERM
            # None of the programs it started outlives it (the orchestrators').
            CHILDREN.stop_all(refuse_new=False)
        code = exits.exit_code(error)
        if code is None:
            raise
        exits.fail(name, exits.describe(error), code)


class ProgramCommand(click.Command):
    """A program with no subcommands; its name is the program's."""

    def invoke(self, ctx: click.Context) -> Any:
        return _invoke_mapped(str(self.name), lambda: super(ProgramCommand, self).invoke(ctx))


def with_implied_subcommand(
    args: list[str], group_flags: set[str], implied: dict[str, str]
) -> list[str]:
    """`args` with a subcommand inserted where an option implies it.

    The group's own flags (`group_flags`, e.g. ``-q``, ``-vv``) may come first; the first other
    token decides: an option of `implied` (``--from-log`` or ``--from-log=LOG``) is preceded by
    its subcommand, anything else (a subcommand, ``--help``) leaves `args` as they are.
    """
    for at, token in enumerate(args):
        name = token.split("=", 1)[0]
        if name in implied:
            return [*args[:at], implied[name], *args[at:]]
        short = name.startswith("-") and not name.startswith("--")
        if name not in group_flags and not (short and {f"-{c}" for c in name[1:]} <= group_flags):
            break
    return list(args)


class ProgramGroup(click.Group):
    """A program with subcommands (``splitnn-attack``); the map covers them all.

    `implied` maps an option to the subcommand it belongs to, so that ``splitnn-attack
    --from-log LOG ...`` runs ``splitnn-attack run --from-log LOG ...``.
    """

    implied: ClassVar[dict[str, str]] = {}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags = {
            opt
            for param in self.params
            if isinstance(param, click.Option) and (param.is_flag or param.count)
            for opt in param.opts
        }
        return super().parse_args(ctx, with_implied_subcommand(args, flags, self.implied))

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_usage(ctx, formatter)
        by_command: dict[str, list[str]] = {}
        for option, command in self.implied.items():
            by_command.setdefault(command, []).append(option)
        for command, options in by_command.items():
            formatter.write_usage(
                ctx.command_path,
                f"[OPTIONS] {{{'|'.join(options)}}} ... (short for: {command} ...)",
                prefix="   or: ",
            )

    def invoke(self, ctx: click.Context) -> Any:
        return _invoke_mapped(str(self.name), lambda: super(ProgramGroup, self).invoke(ctx))


def _declare(
    name: str, *, cls: type[click.Command], example_option: str, epilog_head: str
) -> Callable[[Callable[..., Any]], Any]:
    group = issubclass(cls, click.Group)
    tail = epilog(name, example_option=example_option, subcommands=group)
    settings = {"auto_envvar_prefix": env_prefix(name), "show_default": True}

    def declare(function: Callable[..., Any]) -> click.Command:
        versioned = click.version_option(package_name="splitnn", prog_name=name)(function)
        return click.command(
            name,
            cls=cls,
            context_settings=settings,
            epilog=f"{epilog_head}\n\n{tail}" if epilog_head else tail,
        )(versioned)

    return declare


def program(
    name: str, *, example_option: str, epilog_head: str = ""
) -> Callable[[Callable[..., Any]], click.Command]:
    """Declares the command of program `name` (e.g. ``splitnn-client``).

    It answers ``--version``, reads every option from ``SPLITNN_<PROGRAM>_<OPTION>`` when not
    given, shows defaults, ends its help with the environment prefix and exit codes, and ends
    with the exit code of `exits.exit_code` on an exception of a known kind.

    Args:
        example_option: an option's variable suffix and value for the help, e.g. ``SEED=1``.
        epilog_head: text of the program's own to put before that ending.
    """
    return _declare(
        name, cls=ProgramCommand, example_option=example_option, epilog_head=epilog_head
    )


def program_group(
    name: str, *, example_option: str, implied: dict[str, str] | None = None
) -> Callable[[Callable[..., Any]], click.Group]:
    """`program` for a program with subcommands (``splitnn-attack``).

    Args:
        implied: options that may be given without their subcommand, e.g.
            ``{"--from-log": "run"}``.
    """
    cls = type("ImpliedProgramGroup", (ProgramGroup,), {"implied": dict(implied or {})})
    return _declare(name, cls=cls, example_option=example_option, epilog_head="")


def _launch(module: str) -> None:
    # gRPC's core logs connection events (a server's GOAWAY, a refused connection) to stderr on
    # its own; the programs report what matters in their own words. gRPC reads this when it is
    # first imported, so it is set before the program is; a user's own setting wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    importlib.import_module(module).main()


def server() -> None:
    _launch("splitnn.server.cli")


def client() -> None:
    _launch("splitnn.client.cli")


def attack() -> None:
    _launch("splitnn.attacker.cli")


def sim() -> None:
    _launch("splitnn.sim.cli")


def experiments() -> None:
    _launch("splitnn.experiments.cli")


def certs() -> None:
    _launch("splitnn.certs.cli")
