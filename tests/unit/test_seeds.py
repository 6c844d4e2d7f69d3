"""One seeding scheme: every role's stream is its own, fixed, and refuses negative seeds."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest
import torch

from splitnn.attacker.validator import build_validator
from splitnn.client.config import ClientConfig
from splitnn.client.training_run import eval_noise, training_noise, validation_noise
from splitnn.common.models import build_body
from splitnn.common.seeds import MAX_SEED, SEEDING, Role, seed_for

ROLES: tuple[Role, ...] = get_args(Role)


def test_no_two_roles_or_nearby_seeds_share_a_stream() -> None:
    seeds = {(s, r): seed_for(s, r) for s in range(50) for r in ROLES}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v <= MAX_SEED for v in seeds.values())


@pytest.mark.parametrize(
    ("seed", "role", "member", "expected"),
    [
        (0, "body", None, 4334430513956379144),
        (0, "head", None, 2440950710608614359),
        (1, "body", None, 4215923173971654960),
        (7, "validator", None, 652743190855032287),
        (3, "partition", None, 2150180826954912089),
        (3, "body", 2, 1276239761904451070),
    ],
)
def test_a_role_stream_is_fixed(seed: int, role: Role, member: int | None, expected: int) -> None:
    # Changing the scheme changes every published number: these values were recorded under
    # SEEDING "seedsequence-v2"; a change here needs a new SEEDING name.
    assert SEEDING == "seedsequence-v2"
    assert seed_for(seed, role, member=member) == expected


@pytest.mark.parametrize("seed", [-1, -(2**40)])
def test_negative_seeds_are_refused(seed: int) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        seed_for(seed, "body")


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown seed role"):
        seed_for(0, "victim")  # type: ignore[arg-type]


def test_the_validator_does_not_start_from_any_victims_weights() -> None:
    first = next(iter(build_validator(0, 10)[0].parameters()))
    victims = [build_body(seed_for(s, "body")) for s in range(3)]
    victims += [build_body(s) for s in range(3)]  # the raw seeds an offset scheme would use
    for victim in victims:
        assert not torch.equal(first, next(iter(victim.parameters())))


def test_the_data_holder_validates_and_tests_on_streams_of_their_own() -> None:
    cfg = ClientConfig(noise=0.5)
    cut = torch.zeros(4, 500)

    draws = [make(cfg)(cut) for make in (training_noise, validation_noise, eval_noise)]

    for i, j in itertools.combinations(range(3), 2):
        assert not torch.equal(draws[i], draws[j]), (i, j)
