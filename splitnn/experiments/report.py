"""`splitnn-experiments report`: the result tables as markdown, from the CSVs the grid wrote.

Every table says how many seeds its rows average, the size of the test set (or of the attacked
images) its accuracies are measured on, and the `splitnn-experiments` command that produces it,
rebuilt from the settings the CSV records. With more than one seed a value is written
``mean ± SE`` (the standard error of the mean over seeds).

The README quotes these tables between marker comments::

    <!-- report:threats docs/results/threats.csv -->
    ...the table, as `render_table` writes it...
    <!-- /report -->

`update_blocks` rewrites every such block from the CSV its marker names (relative to the
README's folder), and a unit test checks that the README equals its rewrite, so a quoted table
cannot drift from the numbers it cites or from the code that renders them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from splitnn.common.models import DECODER_EPOCHS
from splitnn.common.topology import NAMES as TOPOLOGIES
from splitnn.experiments.attack_report import ATTACK_CSV, PROTOCOL_CSV
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import (
    EXTRA_TRAINING_GROUPS,
    TRAINING_GROUPS,
    MultiSetting,
    multi_settings,
)
from splitnn.experiments.multi_holder_report import MULTI_CSV
from splitnn.experiments.performance import MODEL_CSV, POSTTRAIN_CSV
from splitnn.experiments.tables import Row, read_rows
from splitnn.experiments.threat_report import THREATS_CSV

REPORT_FILE = "tables.md"
_DEFAULT_LR = ExperimentConfig(groups=()).lr
_DEFAULT_DP_LR = ExperimentConfig(groups=()).dp_lr


class ReportError(ValueError):
    """A results file that cannot be rendered, or a README block that names no known table."""


@dataclass(frozen=True)
class Column:
    """One column of a rendered table: its header, the CSV column, and how to write a value."""

    header: str
    field: str
    digits: int | None = None  # decimals; None: the cell as it is in the CSV
    error: bool = True  # write `± <field>_se` when the row has one
    optional: bool = False  # a column that older results files lack: empty cells there


def _cell(row: Row, column: Column) -> str:
    value = row.get(column.field, "")
    if column.digits is None or value in ("", None):
        return value or ""
    number = float(value)
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    text = f"{number:.{column.digits}f}"
    se = row.get(f"{column.field}_se", "") if column.error else ""
    if se not in ("", None):
        text += f" ± {float(se):.{column.digits}f}"
    return text


def _flag(name: str, value: object) -> list[str]:
    return [] if value in ("", None) else [name, str(value)]


def _seeds(rows: Sequence[Row]) -> int:
    return max((int(row["seeds"]) for row in rows if row.get("seeds")), default=1)


def _training_groups(rows: Sequence[Row]) -> list[str]:
    """The training groups whose settings (b, W) the rows hold, in the grid's order."""

    def group(row: Row) -> str:
        if _is_dp(row):
            return "dp"
        noise, nopeek = float(row.get("noise") or 0), float(row.get("nopeek") or 0)
        if noise and nopeek:
            return "combo"
        return "noise" if noise else ("nopeek" if nopeek else "plain")

    present = {group(row) for row in rows}
    return [name for name in (*TRAINING_GROUPS, *EXTRA_TRAINING_GROUPS) if name in present]


def _is_dp(row: Row) -> bool:
    """A row of a classifier trained with DP-SGD (the ``dp`` group)."""
    return row.get("dp_epsilon") not in ("", None)


def _training_flags(row: Row, *, epochs_field: str = "epochs") -> list[str]:
    flags = ["--dataset", row["dataset"], "--epochs", row[epochs_field]]
    flags += _flag("--max-steps", row.get("max_steps"))
    lr = row.get("lr")
    flag, default = ("--dp-lr", _DEFAULT_DP_LR) if _is_dp(row) else ("--lr", _DEFAULT_LR)
    if lr not in ("", None) and float(lr) != default:
        flags += [flag, lr]
    return flags


def _attack_flags(row: Row, *, epochs_field: str) -> list[str]:
    epochs = row.get(epochs_field) or str(DECODER_EPOCHS)
    return ["--attack-epochs", epochs, *_flag("--decoder", row.get("decoder"))]


def _command(groups: Sequence[str], flags: Sequence[str], seeds: int) -> str:
    words = ["splitnn-experiments", *groups, *flags]
    if seeds > 1:
        words += ["--seeds", str(seeds)]
    return " ".join(words)


def _by_settings(
    rows: Sequence[Row], fields: Sequence[str], *, dp: bool = False
) -> list[list[Row]]:
    """The rows split by the settings that select them (one command each), in file order; with
    `dp`, the DP-SGD classifiers' rows apart from the others (their learning rate is --dp-lr)."""
    groups: dict[tuple[object, ...], list[Row]] = {}
    for row in rows:
        key = (*(row.get(f, "") for f in fields), dp and _is_dp(row))
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def _model_commands(rows: Sequence[Row]) -> list[str]:
    fields = ("dataset", "epochs", "max_steps", "lr")
    return [
        _command([*_training_groups(part), "performance"], _training_flags(part[0]), _seeds(part))
        for part in _by_settings(rows, fields, dp=True)
    ]


def _attack_commands(rows: Sequence[Row]) -> list[str]:
    fields = ("dataset", "classifier_epochs", "max_steps", "lr", "epochs", "decoder")
    out = []
    for part in _by_settings(rows, fields, dp=True):
        groups = [*_training_groups(part), "attacks", "performance"]
        flags = _training_flags(part[0], epochs_field="classifier_epochs")
        flags += _attack_flags(part[0], epochs_field="epochs")
        out.append(_command(groups, flags, _seeds(part)))
    return out


def _simulation_commands(group: str) -> Callable[[Sequence[Row]], list[str]]:
    def commands(rows: Sequence[Row]) -> list[str]:
        fields = ("dataset", "epochs", "max_steps", "attack_epochs", "decoder")
        out = []
        for part in _by_settings(rows, fields):
            flags = _training_flags(part[0]) + _attack_flags(part[0], epochs_field="attack_epochs")
            out.append(_command([group], flags, _seeds(part)))
        return out

    return commands


def _multi_commands(rows: Sequence[Row]) -> list[str]:
    """As `_simulation_commands`, with the ``--only`` patterns that select just these settings
    when they are not the whole ``multi`` grid."""
    commands = _simulation_commands("multi")(rows)
    patterns = _multi_patterns(rows)
    if not patterns:
        return commands
    only = " ".join(f"--only '{p}'" for p in patterns)
    return [f"{command} {only}" for command in commands]


def _multi_patterns(rows: Sequence[Row]) -> list[str]:
    """Shell patterns of the run names of the settings in `rows` (`--only`); none when the rows
    hold every setting of the grid. A setting run on every topology is one pattern."""
    tags: dict[str, set[str]] = {}
    for row in rows:
        alpha = row.get("alpha")
        setting = MultiSetting(
            int(row["holders"]),
            row["topology"],
            "dirichlet" if row["partition"] == "dirichlet" else "iid",
            float(alpha) if alpha not in ("", None) else None,
            float(row.get("victim_noise") or 0),
            float(row.get("victim_nopeek") or 0),
        )
        rest = setting.tag.removeprefix(f"{setting.topology}_")
        tags.setdefault(rest, set()).add(setting.topology)
    if sum(map(len, tags.values())) >= len(multi_settings()):
        return []
    out = []
    for rest, topologies in tags.items():
        if topologies >= set(TOPOLOGIES):
            out.append(f"*_{rest}*")
        else:
            out += [f"*_{topology}_{rest}*" for topology in sorted(topologies)]
    return out


def _parameter(row: Row) -> str:
    parameter = row.get("parameter", "")
    return f"{row['defence']} {float(parameter):g}" if parameter else row["defence"]


@dataclass(frozen=True)
class Table:
    """One table of the report: its CSV, columns, the column of its test-set size, and how to
    rebuild the command that produced it."""

    title: str
    csv: str
    columns: tuple[Column, ...]
    samples: str  # the CSV column with the test-set size (or attacked images)
    samples_label: str
    commands: Callable[[Sequence[Row]], list[str]]
    label: Callable[[Row], str] | None = None  # a first column built from several fields
    label_header: str = ""


_ACCURACY = 1
TABLES: dict[str, Table] = {
    "models": Table(
        "Classifiers",
        MODEL_CSV,
        (
            Column("model", "model"),
            Column("seeds", "seeds"),
            Column("test accuracy %", "test_accuracy", _ACCURACY),
            Column("dCor (biased)", "dcor", 3),
            Column("dCor sent (biased)", "dcor_sent", 3),
            Column("R*² sent (bias-corrected)", "dcor_sent_unbiased", 3),
            Column("Laplace ε per release", "epsilon", 0, error=False),
            Column("DP-SGD ε spent", "dp_epsilon", 2, optional=True),
            Column("DP-SGD δ", "dp_delta", optional=True),
            Column("DP-SGD noise multiplier", "dp_noise_multiplier", 3, error=False, optional=True),
        ),
        "test_samples",
        "test images",
        _model_commands,
    ),
    "posttrain": Table(
        "Noise added after training",
        POSTTRAIN_CSV,
        (
            Column("model", "model"),
            Column("b after training", "noise_after"),
            Column("seeds", "seeds"),
            Column("test accuracy %", "test_accuracy", _ACCURACY),
        ),
        "test_samples",
        "test images",
        _model_commands,
    ),
    "attacks": Table(
        "Attacks",
        ATTACK_CSV,
        (
            Column("attack", "attack"),
            Column("family", "family"),
            Column("seeds", "seeds"),
            Column("MSE", "mse", 4),
            Column("PSNR dB (per image)", "psnr", 1),
            Column("SSIM", "ssim", 3),
            Column("validator %", "validator_accuracy", _ACCURACY),
            Column("class-mean baseline MSE", "baseline_class_mse", 4),
            Column("MSE margin over class mean", "mse_margin_class", 4),
            Column("MSE margin over mean image", "mse_margin_mean", 4),
            Column("class-mean baseline's classes", "baseline_classes", optional=True),
        ),
        "images",
        "attacked test images",
        _attack_commands,
    ),
    "protocols": Table(
        "The honest attack against the reference's noise-free shortcut",
        PROTOCOL_CSV,
        (
            Column("model", "model"),
            Column("b", "noise"),
            Column("seeds", "seeds"),
            Column("MSE honest", "mse_noisy", 4),
            Column("MSE noise-free", "mse_clean", 4),
            Column("SSIM honest", "ssim_noisy", 3),
            Column("SSIM noise-free", "ssim_clean", 3),
            Column("validator % honest", "validator_accuracy_noisy", _ACCURACY),
            Column("validator % noise-free", "validator_accuracy_clean", _ACCURACY),
        ),
        "images",
        "attacked test images",
        _attack_commands,
    ),
    "multi": Table(
        "Several data holders",
        MULTI_CSV,
        (
            Column("holders", "holders"),
            Column("partition", "partition"),
            Column("victims' b", "victim_noise"),
            Column("victim", "victim"),
            Column("seeds", "seeds"),
            Column("victim test accuracy %", "victim_test_accuracy", _ACCURACY),
            Column("MSE, deployment tensors", "attack_mse", 4),
            Column("SSIM, deployment tensors", "attack_ssim", 3),
            Column("validator %, deployment tensors", "attack_validator_accuracy", _ACCURACY),
            Column("MSE, own training share", "own_attack_mse", 4, optional=True),
            Column("SSIM, own training share", "own_attack_ssim", 3, optional=True),
            Column("class-mean baseline MSE", "attack_baseline_class_mse", 4, optional=True),
            Column("MSE margin over class mean", "mse_margin_class", 4, optional=True),
            Column("MSE margin over mean image", "mse_margin_mean", 4, optional=True),
        ),
        "test_images",
        "test images",
        _multi_commands,
        label=lambda row: row["topology"],
        label_header="topology",
    ),
    "threats": Table(
        "Threat models against defences",
        THREATS_CSV,
        (
            Column("seeds", "seeds"),
            Column("victim test accuracy %", "test_accuracy", _ACCURACY),
            Column("MSE", "attack_mse", 4),
            Column("PSNR dB (per image)", "attack_psnr", 1),
            Column("SSIM", "attack_ssim", 3),
            Column("validator %", "attack_validator_accuracy", _ACCURACY),
            Column("MSE margin over class mean", "mse_margin_class", 4),
            Column("MSE margin over mean image", "mse_margin_mean", 4),
            Column("guard alarms", "guard_detections"),
            Column("guard: alarm at step", "guard_detected_at_step", 0, optional=True),
            Column(
                "server's decoder at the alarm: MSE on training tensors",
                "attack_train_mse_at_alarm",
                4,
                optional=True,
            ),
            Column("guard's lowest score", "guard_lowest_score", 2, error=False, optional=True),
        ),
        "test_images",
        "test images",
        _simulation_commands("threats"),
        label=lambda row: f"{row['threat']}, {_parameter(row)}",
        label_header="threat, defence",
    ),
}


def _sizes(rows: Sequence[Row], field: str) -> str:
    sizes = sorted({row.get(field, "") for row in rows} - {"", None}, key=int)
    return ", ".join(sizes) if sizes else "not recorded"


def render_table(name: str, path: Path) -> str:
    """The table `name` (a key of `TABLES`) of the CSV at `path`, as markdown.

    Raises:
        ReportError: an unknown table, or a file without rows.
    """
    if name not in TABLES:
        raise ReportError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    table = TABLES[name]
    header, rows = read_rows(path)
    rows = [row for row in rows if any(row.get(c.field) for c in table.columns[:1])]
    if not rows:
        raise ReportError(f"{path}: no rows of the {name} table")
    missing = [c.field for c in table.columns if c.field not in header and not c.optional]
    if missing:
        raise ReportError(f"{path}: not a {table.csv} (no column {', '.join(missing)})")
    seeds = sorted({int(row["seeds"]) for row in rows if row.get("seeds")})
    seed_text = ", ".join(map(str, seeds)) or "1"
    lines = [
        f"{table.title} (`{table.csv}`): seeds per row {seed_text}"
        + (" (mean ± standard error over seeds)" if seeds and max(seeds) > 1 else "")
        + f"; {table.samples_label}: {_sizes(rows, table.samples)}.",
        "Produced by:",
        "",
        *(f"    {command}" for command in table.commands(rows)),
        "",
    ]
    headers = ([table.label_header] if table.label else []) + [c.header for c in table.columns]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "---|" * len(headers))
    for row in rows:
        cells = ([table.label(row)] if table.label else []) + [_cell(row, c) for c in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_report(results_dir: Path) -> str:
    """Every table whose CSV is in `results_dir`, in `TABLES` order, as one markdown document.

    Raises:
        ReportError: none of the tables' files is there.
    """
    parts = []
    for name, table in TABLES.items():
        path = results_dir / table.csv
        if path.is_file():
            parts.append(f"## {table.title}\n\n{render_table(name, path)}")
    if not parts:
        files = ", ".join(t.csv for t in TABLES.values())
        raise ReportError(f"no results files in {results_dir} (looked for {files})")
    return "\n".join(parts)


_BLOCK = re.compile(
    r"(?P<open><!-- report:(?P<name>[a-z]+) (?P<path>\S+) -->\n)"
    r"(?P<body>.*?)(?P<close><!-- /report -->)",
    re.DOTALL,
)


def blocks(text: str) -> list[tuple[str, str, str]]:
    """The report blocks of a markdown text: (table name, CSV path as written, current body)."""
    return [(m["name"], m["path"], m["body"]) for m in _BLOCK.finditer(text)]


def update_blocks(text: str, root: Path) -> str:
    """`text` with every report block's body rendered again from the CSV its marker names
    (relative to `root`).

    Raises:
        ReportError: a block names an unknown table or a file without its rows.
    """

    def render(match: re.Match[str]) -> str:
        body = render_table(match["name"], root / match["path"])
        return f"{match['open']}{body}{match['close']}"

    return _BLOCK.sub(render, text)


def update_readme(readme: Path) -> int:
    """Rewrites the report blocks of `readme` in place; returns how many there are."""
    text = readme.read_text()
    readme.write_text(update_blocks(text, readme.parent))
    return len(blocks(text))
