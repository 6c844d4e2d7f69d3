"""The results CSVs: rows added or replaced by key, never dropped; means and standard errors.

Re-running a group rewrites the rows of the runs it measured and leaves every other row (and
every column a reader may have added) as it was. Files are replaced atomically.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from splitnn.common.files import SHARED, write_atomic

Row = dict[str, str]


def format_value(value: Any) -> str:
    """A cell: floats to 6 significant digits, inf as ``inf``, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return "nan"
        return format(value, ".6g")
    return str(value)


def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample sd / sqrt(n)); SE is None for one value."""
    if not values:
        raise ValueError("no values to average")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def optional_mean_se(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """`mean_se` of the values that are there (not None, not an empty CSV cell); (None, None)
    when none is."""
    present = [float(v) for v in values if v not in (None, "")]
    return mean_se(present) if present else (None, None)


def mse_margin(baseline: float | None, attack: float) -> float | None:
    """A baseline's MSE minus the attack's (one run): positive = the attack beat the baseline;
    None without the baseline."""
    return None if baseline is None else baseline - attack


def aggregate(
    runs: Sequence[Mapping[str, float]], fields: Iterable[str]
) -> dict[str, float | None]:
    """``field`` (mean) and ``field_se`` (standard error) for each field over `runs` (seeds)."""
    out: dict[str, float | None] = {}
    for field in fields:
        mean, se = mean_se([float(run[field]) for run in runs])
        out[field] = mean
        out[f"{field}_se"] = se
    return out


def read_rows(path: Path) -> tuple[list[str], list[Row]]:
    """The header and rows of a CSV (both empty if the file does not exist)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], []
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), [dict(row) for row in reader]


def upsert_rows(
    path: Path,
    rows: Iterable[Mapping[str, Any]],
    *,
    key: Sequence[str],
    columns: Sequence[str],
) -> list[Row]:
    """Adds `rows` to the CSV at `path`, replacing any existing row with the same `key` values.

    Existing rows keep their place; new keys are appended in the order given. The header is
    `columns` followed by any other column the file or the rows already had.

    Returns:
        Every row now in the file, as strings.
    """
    header, existing = read_rows(path)
    new = [{name: format_value(value) for name, value in row.items()} for row in rows]
    fields = list(columns)
    for name in [*header, *(name for row in new for name in row)]:
        if name not in fields:
            fields.append(name)
    position = {tuple(row.get(k, "") for k in key): i for i, row in enumerate(existing)}
    merged = list(existing)
    for row in new:
        ident = tuple(row.get(k, "") for k in key)
        if ident in position:
            merged[position[ident]] = row
        else:
            position[ident] = len(merged)
            merged.append(row)
    _write_csv(path, fields, merged)
    return merged


def _write_csv(path: Path, fields: Sequence[str], rows: Sequence[Row]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode(), mode=SHARED)
