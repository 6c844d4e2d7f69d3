"""SplitGuard: the score against a hand computation, the plan's draws, alarms, saved state."""

from __future__ import annotations

import io

import pytest
import torch
from torch.nn import functional as F

from splitnn.client.guard import GradientSet, GuardSettings, SplitGuard, splitguard_score


def _set(*vectors: tuple[float, ...]) -> GradientSet:
    out = GradientSet()
    for vector in vectors:
        out.add(torch.tensor(vector))
    return out


def test_score_matches_a_hand_computation() -> None:
    # F = mean((1,0), (3,0)) = (2,0), |F| = 2; R1 = (0,1), |R1| = 1; R2 = (1,1), |R2| = 1.41421.
    # R = (0.5, 1), |R| = 1.20711; angle(F, R) = acos(0.5 / 1.11803) = 1.10715;
    # angle(R1, R2) = pi/4 = 0.78540; gaps 0.79289 and 0.41421, d = 1.20711;
    # x = (1.10715 * 0.79289 - 0.78540 * 0.41421) / 1.20711 = 0.45773;
    # SG = (1 / (1 + exp(-5 * 0.45773))) ** 2 = 0.82434.
    fake, r1, r2 = _set((1.0, 0.0), (3.0, 0.0)), _set((0.0, 1.0)), _set((1.0, 1.0))
    score = splitguard_score(fake, r1, r2, multiplier=5.0, exponent=2.0)
    assert score == pytest.approx(0.82434, abs=1e-5)


def test_score_needs_every_set() -> None:
    assert splitguard_score(_set((1.0,)), _set(), _set((1.0,)), multiplier=5, exponent=2) is None


def test_identical_sets_score_a_quarter() -> None:
    # No gap anywhere: x = 0, SG = sigmoid(0) ** 2.
    same = _set((1.0, 2.0))
    assert splitguard_score(same, same, same, multiplier=5, exponent=2) == pytest.approx(0.25)


def test_plan_is_a_function_of_seed_and_step() -> None:
    guard = SplitGuard(GuardSettings(start_after=5), seed=3, num_classes=10)
    forwards = [guard.plan(step) for step in range(400)]
    backwards = [guard.plan(step) for step in reversed(range(400))][::-1]
    assert forwards == backwards
    assert all(not plan.fake and not plan.regular_set for plan in forwards[:5])
    other = SplitGuard(GuardSettings(start_after=5), seed=4, num_classes=10)
    assert forwards != [other.plan(step) for step in range(400)]


def test_plan_draws_fakes_at_the_rate_asked_with_shifts_in_range() -> None:
    guard = SplitGuard(GuardSettings(start_after=0, fake_probability=0.1), seed=0, num_classes=10)
    plans = [guard.plan(step) for step in range(20_000)]
    fakes = [plan for plan in plans if plan.fake]
    # Binomial(20000, 0.1): mean 2000, sd 42.4; five sd either side.
    assert 1788 < len(fakes) < 2212
    assert {plan.label_shift for plan in fakes} == set(range(1, 10))
    regular = [plan.regular_set for plan in plans if not plan.fake]
    assert set(regular) == {1, 2}
    assert abs(regular.count(1) - regular.count(2)) < 5 * (len(regular) ** 0.5)


def _first_layer_gradient(
    honest: bool, step: int, shift: int, weight: torch.Tensor
) -> torch.Tensor:
    """The gradient of a linear classifier's weight float32 [3, 4] on a seeded batch.

    An honest server's loss uses the labels sent (shifted on fake batches); a hijacking one
    ignores them (here: it pulls the logits towards a fixed target).
    """
    generator = torch.Generator().manual_seed(step)
    labels = torch.randint(0, 3, (64,), generator=generator)
    inputs = torch.randn(64, 4, generator=generator) + F.one_hot(labels, 4).float() * 2
    weight = weight.clone().requires_grad_(True)
    logits = inputs @ weight.T
    task = F.cross_entropy(logits, (labels + shift) % 3)
    loss = task if honest else (logits - 1.0).pow(2).mean()
    loss.backward()
    assert weight.grad is not None
    return weight.grad


@pytest.mark.parametrize("honest", [True, False])
def test_guard_tells_an_honest_server_from_one_that_ignores_labels(honest: bool) -> None:
    settings = GuardSettings(start_after=2, fake_probability=0.2, threshold=0.5)
    guard = SplitGuard(settings, seed=1, num_classes=3)
    weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(9)) * 0.1
    for step in range(300):
        plan = guard.plan(step)
        guard.record(step, plan, _first_layer_gradient(honest, step, plan.label_shift, weight))
    scores = [score for _, score in guard.scores]
    assert len(scores) > 20
    if honest:
        assert min(scores) > 0.9
        assert guard.detected_at_step is None
    else:
        assert max(scores) < 0.5
        assert guard.detected_at_step == guard.scores[0][0]


def test_the_alarm_is_the_first_crossing() -> None:
    guard = SplitGuard(GuardSettings(start_after=0, threshold=0.5), seed=0, num_classes=10)
    fake = next(plan for plan in map(guard.plan, range(100)) if plan.fake)
    guard.r1.add(torch.tensor([1.0, 0.0]))
    guard.r2.add(torch.tensor([1.0, 0.0]))
    assert guard.record(7, fake, torch.tensor([1.0, 0.0])) == pytest.approx(0.25)
    assert guard.detected_at_step == 7
    guard.record(9, fake, torch.tensor([-50.0, 0.0]))  # far away: a high score
    assert guard.scores[-1][1] > 0.5
    assert guard.detected_at_step == 7


def test_state_round_trips_through_a_weights_only_load() -> None:
    guard = SplitGuard(GuardSettings(start_after=0), seed=2, num_classes=10)
    for step in range(200):
        plan = guard.plan(step)
        guard.record(step, plan, torch.full((5,), float(step % 7)) + plan.label_shift)
    buffer = io.BytesIO()
    torch.save(guard.state_dict(), buffer)
    buffer.seek(0)
    restored = SplitGuard(GuardSettings(start_after=0), seed=2, num_classes=10)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.scores == guard.scores
    assert restored.detected_at_step == guard.detected_at_step
    for name in ("fake", "r1", "r2"):
        mine, theirs = getattr(guard, name), getattr(restored, name)
        assert theirs.count == mine.count and theirs.norms == mine.norms
        assert torch.equal(theirs.total, mine.total)


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"sets": [], "scores": [], "detected_at_step": None},
        {"sets": {"fake": {}}, "scores": [], "detected_at_step": None},
        {
            "sets": {n: {"total": "x", "norms": 0, "count": 0} for n in ("fake", "r1", "r2")},
            "scores": [],
            "detected_at_step": None,
        },
    ],
)
def test_a_damaged_state_is_refused(state: dict[str, object]) -> None:
    guard = SplitGuard(GuardSettings(), seed=0, num_classes=10)
    with pytest.raises(ValueError, match="damaged guard state"):
        guard.load_state_dict(state)


@pytest.mark.parametrize(
    "changes",
    [
        {"start_after": -1},
        {"fake_probability": 0.0},
        {"fake_probability": 1.0},
        {"multiplier": 0.0},
        {"threshold": 1.0},
    ],
)
def test_settings_out_of_range_are_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GuardSettings(**changes)  # type: ignore[arg-type]
