"""`splitnn-experiments report`: the markdown tables rendered from results files (the fixture
under tests/fixtures/experiment_results is hand-made in the grid's real CSV format), and the
README's quoted tables, which must equal what the report renders from the CSVs their markers
name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from splitnn.experiments.cli import main
from splitnn.experiments.report import (
    TABLES,
    ReportError,
    blocks,
    render_report,
    render_table,
    update_blocks,
)
from splitnn.experiments.tables import read_rows, upsert_rows

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "experiment_results"


def test_the_report_renders_every_table_of_the_fixture() -> None:
    text = render_report(FIXTURE)

    for table in TABLES.values():
        assert f"## {table.title}" in text
        assert f"(`{table.csv}`): seeds per row" in text
    assert "test images: 500" in text and "attacked test images: 500" in text
    assert "| colluding, laplace 0.5 | 3 | 95.4 ± 0.4 | 0.0298 ± 0.0010 |" in text
    assert "| mnist5k_10noise_00nopeek | 3 | 94.8 ± 0.3 | 0.410 ± 0.005 |" in text


def test_each_table_names_the_command_that_produced_it() -> None:
    text = render_report(FIXTURE)

    assert (
        "    splitnn-experiments plain noise performance --dataset mnist5k --epochs 10 "
        "--seeds 3\n" in text
    )
    assert (
        "    splitnn-experiments plain noise attacks performance --dataset mnist5k --epochs 10 "
        "--attack-epochs 30 --decoder deep --seeds 3\n" in text
    )
    assert (
        "    splitnn-experiments threats --dataset mnist5k --epochs 10 --attack-epochs 30 "
        "--decoder deep --seeds 3\n" in text
    )
    assert "    splitnn-experiments multi --dataset mnist5k" in text


def test_margins_and_baselines_are_in_the_attack_tables() -> None:
    attacks = render_table("attacks", FIXTURE / "attack_performances.csv")
    threats = render_table("threats", FIXTURE / "threats.csv")

    for text in (attacks, threats):
        assert "MSE margin over class mean" in text and "MSE margin over mean image" in text
    # 0.0544 - 0.0192: the colluding attack beats the class-mean baseline by 0.0352.
    assert "| 0.0544 ± 0.0004 | 0.0352 ± 0.0006 |" in attacks


def test_the_protocols_table_sets_the_honest_attack_beside_the_noise_free_shortcut() -> None:
    text = render_table("protocols", FIXTURE / "attack_protocols.csv")

    assert "attacked test images: 500" in text
    assert (
        "    splitnn-experiments noise attacks performance --dataset mnist5k --epochs 10 "
        "--attack-epochs 30 --decoder deep --seeds 3\n" in text
    )
    assert "| model | b | seeds | MSE honest | MSE noise-free |" in text
    assert "| mnist5k_20noise_00nopeek | 2.0 | 3 | 0.0484 ± 0.0005 | 0.0253 ± 0.0001 |" in text


def test_one_seed_has_no_standard_error_and_other_settings_another_command(
    tmp_path: Path,
) -> None:
    header, rows = read_rows(FIXTURE / "threats.csv")
    one = {**rows[0], "seeds": "1", "test_accuracy_se": "", "attack_mse_se": ""}
    smoke = {**rows[1], "max_steps": "20", "epochs": "2"}
    path = tmp_path / "threats.csv"
    upsert_rows(path, [one, smoke], key=("threat", "defence", "parameter"), columns=header)

    text = render_table("threats", path)

    assert "| colluding, none | 1 | 95.2 | 0.0192 |" in text
    assert "seeds per row 1, 3 (mean ± standard error over seeds)" in text
    assert "--epochs 10 --attack-epochs 30 --decoder deep\n" in text
    assert "--epochs 2 --max-steps 20 --attack-epochs 30 --decoder deep --seeds 3\n" in text


def test_a_file_of_another_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no column"):
        render_table("threats", FIXTURE / "model_performances.csv")
    with pytest.raises(ReportError, match="unknown table"):
        render_table("everything", FIXTURE / "threats.csv")
    with pytest.raises(ReportError, match="no results files"):
        render_report(tmp_path)


def test_blocks_are_rewritten_from_the_files_their_markers_name() -> None:
    stale = (
        "Intro.\n\n<!-- report:threats tests/fixtures/experiment_results/threats.csv -->\n"
        "| an old table |\n<!-- /report -->\n\nAfter.\n"
    )

    fresh = update_blocks(stale, ROOT)

    ((name, path, body),) = blocks(fresh)
    assert (name, path) == ("threats", "tests/fixtures/experiment_results/threats.csv")
    assert body == render_table("threats", FIXTURE / "threats.csv")
    assert fresh.startswith("Intro.\n\n<!-- report:") and fresh.endswith("-->\n\nAfter.\n")
    assert update_blocks(fresh, ROOT) == fresh


def test_the_readmes_quoted_tables_are_what_the_report_renders() -> None:
    """Every table the README quotes between report markers equals the report of the committed
    CSV its marker names: regenerate with `splitnn-experiments report --readme README.md`."""
    readme = (ROOT / "README.md").read_text()

    for name, path, _ in blocks(readme):
        assert (ROOT / path).is_file(), f"README's {name} table cites {path}, which is missing"
    assert update_blocks(readme, ROOT) == readme


def test_the_report_command_writes_tables_md(tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(FIXTURE, results)

    result = CliRunner().invoke(main, ["report", "--results-dir", str(results)])

    assert result.exit_code == 0, result.output
    assert (results / "tables.md").read_text() == render_report(FIXTURE)
    assert "## Threat models against defences" in result.output


def test_the_report_command_rewrites_a_readme(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE, tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:models results/model_performances.csv -->\n<!-- /report -->\n")

    result = CliRunner().invoke(main, ["report", "--readme", str(readme)])

    assert result.exit_code == 0, result.output
    assert "| mnist5k_00noise_00nopeek | 3 | 95.2 ± 0.2 |" in readme.read_text()


def test_report_runs_alone() -> None:
    result = CliRunner().invoke(main, ["report", "plain"])

    assert result.exit_code == 2
    assert "report runs alone" in result.output


def test_dp_columns_are_rendered_where_the_results_have_them(tmp_path: Path) -> None:
    header, rows = read_rows(FIXTURE / "model_performances.csv")
    dp = {
        **rows[0],
        "model": "mnist5k_00noise_00nopeek_dp3eps",
        "dp_epsilon": "2.996",
        "dp_epsilon_se": "0.001",
        "dp_delta": "1e-05",
        "dp_noise_multiplier": "1.306",
    }
    path = tmp_path / "model_performances.csv"
    columns = [*header, "dp_epsilon", "dp_epsilon_se", "dp_delta", "dp_noise_multiplier"]
    upsert_rows(path, [rows[0], dp], key=("model",), columns=columns)

    text = render_table("models", path)

    assert "| DP-SGD ε spent | DP-SGD δ | DP-SGD noise multiplier |" in text
    assert "| 3.00 ± 0.00 | 1e-05 | 1.306 |" in text
    # A classifier without DP-SGD leaves the three cells empty; the fixture, which predates
    # the columns, still renders.
    assert text.count("|  |  |  |") == 1
    assert "DP-SGD ε spent" in render_table("models", FIXTURE / "model_performances.csv")


def _multi_rows(
    settings: list[tuple[str, int, str, str]],
) -> tuple[list[str], list[dict[str, str]]]:
    """Rows of the fixture's multi table, one per (topology, K, partition, victims' b)."""
    header, rows = read_rows(FIXTURE / "multi_holder_attacks.csv")
    template = rows[0]
    out = []
    for topology, holders, partition, noise in settings:
        alpha = "0.5" if partition == "dirichlet" else ""
        out.append(
            {**template, "topology": topology, "holders": str(holders), "partition": partition}
            | {"alpha": alpha, "victim_noise": noise}
        )
    return header, out


def test_the_multi_table_sets_each_victims_own_share_beside_its_deployment_tensors() -> None:
    text = render_table("multi", FIXTURE / "multi_holder_attacks.csv")

    assert (
        "| MSE, deployment tensors | SSIM, deployment tensors | validator %, deployment tensors "
        "| MSE, own training share | SSIM, own training share |" in text
    )
    assert "| 0.601 ± 0.010 | 90.8 ± 0.6 | 0.0250 ± 0.0012 | 0.560 ± 0.011 |" in text


@pytest.mark.parametrize(
    ("settings", "only"),
    [
        (
            [(t, 4, "iid", "0") for t in ("shared-head", "round-robin", "splitfed")],
            " --only '*_k4_iid_00noise_00nopeek*'\n",
        ),
        (
            [("round-robin", 4, "iid", "0"), ("splitfed", 8, "dirichlet", "0")],
            " --only '*_round-robin_k4_iid_00noise_00nopeek*'"
            " --only '*_splitfed_k8_dir05_00noise_00nopeek*'\n",
        ),
    ],
    ids=["every-topology", "two-settings"],
)
def test_a_multi_table_of_some_settings_names_the_only_that_selects_them(
    tmp_path: Path, settings: list[tuple[str, int, str, str]], only: str
) -> None:
    header, rows = _multi_rows(settings)
    path = tmp_path / "multi_holder_attacks.csv"
    upsert_rows(
        path, rows, key=("topology", "holders", "partition", "victim_noise"), columns=header
    )

    text = render_table("multi", path)

    assert "    splitnn-experiments multi --dataset mnist5k --epochs 10" in text
    assert text.count("--only") == only.count("--only")
    assert only in text


def test_a_multi_table_of_the_whole_grid_needs_no_only(tmp_path: Path) -> None:
    topologies = ("shared-head", "round-robin", "splitfed")
    settings = [(t, k, p, "0") for k in (2, 4, 8) for t in topologies for p in ("iid", "dirichlet")]
    settings += [(t, 4, "iid", b) for t in topologies for b in ("0.5", "1", "2", "5")]
    header, rows = _multi_rows(settings)
    path = tmp_path / "multi_holder_attacks.csv"
    upsert_rows(
        path, rows, key=("topology", "holders", "partition", "victim_noise"), columns=header
    )

    text = render_table("multi", path)

    assert "--only" not in text
    assert "--decoder deep --seeds 2\n" in text
