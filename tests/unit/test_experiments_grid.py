"""The registered groups hold exactly the study's settings; attack variants; group expansion."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from splitnn.common.checkpoints import attacker_stem
from splitnn.common.datasets import locally_available
from splitnn.experiments.attacks import AttackSpec, attack_specs
from splitnn.experiments.config import ExperimentConfig, default_dataset
from splitnn.experiments.grid import GROUPS, Setting, expand, grid_specs, train_specs


def _settings(group: str) -> set[tuple[float, float, int]]:
    return {(s.noise, s.nopeek, s.batch_size) for s in GROUPS[group].settings}


def test_training_groups_are_the_studys_settings() -> None:
    assert _settings("plain") == {(0.0, 0.0, 128)}
    assert _settings("noise") == {(b, 0.0, 128) for b in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)}
    assert _settings("nopeek") == {(0.0, w, 32) for w in (0.05, 0.1, 0.25, 0.5, 1.0)}
    assert _settings("combo") == {
        (b, w, 32) for b in (0.1, 0.2, 0.5, 1.0) for w in (0.1, 0.25, 0.5)
    }


def test_grid_has_24_distinct_classifiers_per_seed() -> None:
    specs = grid_specs(dataset="mnist5k", seeds=2, epochs=10)

    assert len(specs) == 48
    assert len({s.name for s in specs}) == 48
    assert len({s.model for s in specs}) == 24


def test_seeds_name_the_runs_like_the_client_does() -> None:
    specs = train_specs("noise", dataset="mnist5k", seeds=3, epochs=10)

    assert [s.seed for s in specs[:6]] == [0] * 6
    assert specs[0].name == "mnist5k_01noise_00nopeek"
    assert specs[6].name == "mnist5k_01noise_00nopeek_seed1"
    assert {s.model for s in specs} == {s.name for s in specs[:6]}


def test_all_expands_in_order_and_can_leave_out_attacks() -> None:
    assert expand(("all",)) == ("plain", "noise", "nopeek", "combo", "attacks", "performance")
    assert "attacks" not in expand(("all",), attacks=False)
    assert expand(("plain", "performance", "plain")) == ("plain", "performance")
    with pytest.raises(KeyError):
        expand(("everything",))


def _cfg(tmp_path: Path, **changes: object) -> ExperimentConfig:
    return ExperimentConfig(groups=("attacks",), data_dir=tmp_path, **changes)  # type: ignore[arg-type]


def test_attack_variants_cover_the_grid_on_every_seed(tmp_path: Path) -> None:
    classifiers = grid_specs(dataset="mnist5k", seeds=2, epochs=10)

    specs = attack_specs(classifiers, _cfg(tmp_path))

    families = [s.family for s in specs]
    assert families.count("grid") == 48
    assert families.count("posttrain") == 3 * 2
    assert families.count("volume") == 5 * 2  # fraction 1.0 is the plain model's grid attacker
    assert families.count("clean") == 6 * 2  # the noise group
    assert families.count("emnist") == 0  # no EMNIST files in tmp_path
    assert {s.seed for s in specs if s.family != "grid"} == {0, 1}
    # The attacker's seed is its classifier's, and seeds never share a name (file).
    assert all(s.seed == s.classifier.seed for s in specs)
    assert len({s.key for s in specs}) == len(specs)
    assert all("_seed1" in s.key for s in specs if s.seed == 1)


def test_emnist_attacker_when_its_files_exist(tmp_path: Path) -> None:
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "test"):
        for kind in ("images-idx3", "labels-idx1"):
            (raw / f"emnist-letters-{split}-{kind}-ubyte").write_bytes(b"")
    plain = train_specs("plain", dataset="mnist5k", seeds=1, epochs=1)

    specs = attack_specs(plain, _cfg(tmp_path, clean_comparison=False))

    assert [s.aux for s in specs if s.family == "emnist"] == ["emnist-letters"]
    assert locally_available("emnist-letters", tmp_path)
    assert default_dataset(tmp_path) == "mnist5k"


def test_attack_keys_name_what_differs() -> None:
    (plain,) = train_specs("plain", dataset="mnist5k", seeds=1, epochs=1)

    stem = "mnist_attacker_modelmnist5k_00noise_00nopeek"
    assert AttackSpec(plain, "grid").key == f"{stem}_deep"
    assert AttackSpec(plain, "grid", decoder="study").key == stem
    assert AttackSpec(plain, "posttrain", set_noise=0.5).key == f"{stem}_set05noise_deep"
    assert AttackSpec(plain, "volume", aux_fraction=0.02).key == f"{stem}_aux002_deep"
    assert AttackSpec(plain, "clean", protocol="clean").key == f"{stem}_deep_clean"
    emnist = AttackSpec(plain, "emnist", aux="emnist-letters").key
    assert emnist == "emnist_attacker_modelmnist5k_00noise_00nopeek_deep"


def test_an_attack_key_is_the_attackers_name_before_the_epoch() -> None:
    # One naming scheme: the record's key and the attacker checkpoint the attacker writes.
    (plain,) = train_specs("plain", dataset="mnist5k", seeds=1, epochs=1)
    spec = AttackSpec(plain, "posttrain", set_noise=0.1, aux_fraction=0.5)
    checkpoint = attacker_stem(
        classifier=f"{plain.name}_epoch=1", aux="mnist5k", set_noise=0.1, aux_fraction=0.5
    )

    assert checkpoint == spec.key.replace(plain.name, f"{plain.name}_epoch=1")


@pytest.mark.parametrize(
    ("cores", "jobs", "threads"),
    [(8, 1, 8), (8, 2, 4), (8, 3, 2), (8, 8, 1), (8, 10_000, 1), (2, 1, 2), (None, 1, 1)],
)
def test_threads_are_shared_out_between_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int | None, jobs: int, threads: int
) -> None:
    """The cores are divided among the jobs, rounding down, never below one thread."""
    monkeypatch.setattr(os, "cpu_count", lambda: cores)

    assert _cfg(tmp_path, jobs=jobs).threads_per_job() == threads


def test_setting_tags_drop_the_decimal_point() -> None:
    assert Setting(0.5, 0.1, 32).tag == "05noise_01nopeek"
    assert Setting(0.0, 0.0, 128).tag == "00noise_00nopeek"
    assert Setting(5.0, 0.25, 32).tag == "50noise_025nopeek"
    assert Setting(1.0, 0.05, 32).tag == "10noise_005nopeek"
