"""DP-SGD on part 1: the accountant against Opacus's, the per-sample gradients against Opacus's
stock hooks, clipping, seeded noise, Poisson batches, the saved accountant, and the flags."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from splitnn.client import cli as client_cli
from splitnn.client import dp
from splitnn.client.config import ClientConfig
from splitnn.client.dp import DPSGD, Accountant, DPError, DPSettings
from splitnn.common import exits
from splitnn.common.credentials import Credentials
from splitnn.common.models import build_body, build_head
from splitnn.sim import cli as sim_cli
from splitnn.sim.app import SimConfig, holder_command

SERVER = ["--server", "127.0.0.1:1"]


def _dpsgd(body: torch.nn.Module, *, sigma: float = 1.0, clip: float = 1.0) -> DPSGD:
    return DPSGD(
        body=body,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=8,
        noise_seed=7,
        delta=1e-5,
        sample_rate=0.01,
    )


def _backward(body: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The split step's backward: the head's gradient of the mean loss at the cut, then
    cut.backward(grad) through part 1."""
    head = build_head(0)
    cut = body(images)
    sent = cut.detach().requires_grad_()
    F.cross_entropy(head(sent), labels).backward()
    assert sent.grad is not None
    cut.backward(sent.grad)


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(n, 1, 28, 28, generator=generator)
    return images, torch.randint(0, 10, (n,), generator=generator)


def test_epsilon_equals_opacus_rdp_accountant_for_its_mnist_example() -> None:
    from opacus.accountants import RDPAccountant

    steps = 15 * 60000 // 240
    ours = dp.epsilon_spent(noise_multiplier=1.3, sample_rate=240 / 60000, steps=steps, delta=1e-5)
    theirs = RDPAccountant()
    theirs.history = [(1.3, 240 / 60000, steps)]
    assert ours == theirs.get_epsilon(1e-5)
    assert round(ours, 3) == 0.922


def test_noise_multiplier_for_a_target_spends_at_most_the_target() -> None:
    settings = DPSettings(epsilon=3.0)
    sigma = dp.noise_multiplier_for(settings, sample_rate=0.04, steps=240)
    spent = dp.epsilon_spent(noise_multiplier=sigma, sample_rate=0.04, steps=240, delta=1e-5)
    assert 2.9 < spent <= 3.0
    # A given sigma is used as it is.
    given = DPSettings(noise_multiplier=0.7)
    assert dp.noise_multiplier_for(given, sample_rate=0.04, steps=9) == 0.7


def test_the_accountant_saved_and_loaded_reports_the_same_epsilon() -> None:
    accountant = Accountant(1e-5)
    accountant.step(1.1, 0.04, steps=30)
    accountant.step(1.1, 0.04)
    accountant.step(0.9, 0.04, steps=5)
    resumed = Accountant(1e-5)
    resumed.load_state_dict(accountant.state_dict())
    assert resumed.steps == accountant.steps == 36
    assert resumed.epsilon() == accountant.epsilon() > 0
    assert Accountant(1e-5).epsilon() == 0.0
    with pytest.raises(ValueError, match="delta"):
        Accountant(1e-6).load_state_dict(accountant.state_dict())


def test_poisson_batches_are_seeded_and_have_the_expected_size() -> None:
    first = dp.poisson_batch(3000, 0.04, seed=1, epoch=2, batch=3)
    assert torch.equal(first, dp.poisson_batch(3000, 0.04, seed=1, epoch=2, batch=3))
    assert not torch.equal(first, dp.poisson_batch(3000, 0.04, seed=1, epoch=2, batch=4))
    assert first.dtype == torch.int64 and bool((first[1:] > first[:-1]).all())
    sizes = [len(dp.poisson_batch(3000, 0.04, seed=0, epoch=1, batch=b)) for b in range(200)]
    mean = sum(sizes) / len(sizes)
    assert abs(mean - 120) < 4 * math.sqrt(120 / 200)
    assert max(sizes) <= dp.batch_bound(120)


def test_per_sample_gradients_equal_opacus_stock_hooks_bit_for_bit() -> None:
    from opacus.grad_sample import GradSampleModule

    images, labels = _batch()
    ours_body = build_body(0)
    ours = _dpsgd(ours_body)
    _backward(ours_body, images, labels)
    stock_body = build_body(0)
    GradSampleModule(stock_body, batch_first=True, loss_reduction="mean")
    _backward(stock_body, images, labels)
    for mine, theirs in zip(ours_body.parameters(), stock_body.parameters(), strict=True):
        assert torch.equal(mine.grad_sample, theirs.grad_sample)  # type: ignore[attr-defined]
    ours.drop_per_sample()


def test_clipping_bounds_every_sample_and_the_noise_is_seeded() -> None:
    images, labels = _batch()
    body = build_body(0)
    step = _dpsgd(body, clip=0.01)
    _backward(body, images, labels)
    per_sample = [p.grad_sample.reshape(len(images), -1) for p in body.parameters()]  # type: ignore[attr-defined]
    norms = torch.cat(per_sample, dim=1).norm(dim=1)
    assert bool((norms > 0.01).all())  # every sample is clipped at this C
    sums = step.clipped_sum()
    # Each clipped sample has norm C, so their sum has norm at most n C.
    total = torch.cat([s.reshape(-1) for s in sums]).norm()
    assert float(total) <= len(images) * 0.01 * (1 + 1e-5)

    def noise_alone(epoch: int, batch: int) -> list[torch.Tensor]:
        quiet = build_body(0)
        noised = _dpsgd(quiet, sigma=2.0, clip=0.5)
        noised.privatise(epoch=epoch, batch=batch, empty=True)
        assert noised.accountant.steps == 1
        return [p.grad.clone() for p in quiet.parameters() if p.grad is not None]

    again = noise_alone(1, 0)
    assert all(torch.equal(a, b) for a, b in zip(noise_alone(1, 0), again, strict=True))
    assert not torch.equal(noise_alone(1, 1)[0], again[0])
    # Noise alone: N(0, (sigma C)^2) / B per entry.
    flat = torch.cat([g.reshape(-1) for g in again])
    assert float(flat.std()) == pytest.approx(2.0 * 0.5 / 8, rel=0.02)


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(DPError, match="not both"):
        DPSettings(epsilon=3.0, noise_multiplier=1.0)
    with pytest.raises(DPError, match="not both"):
        DPSettings()
    with pytest.raises(DPError, match="delta"):
        DPSettings(epsilon=3.0, delta=1.0)
    assert DPSettings(epsilon=3.0).tag == "dp3eps"
    assert DPSettings(noise_multiplier=1.3).tag == "dp1p3sigma"


@pytest.fixture
def client_settings(monkeypatch: pytest.MonkeyPatch) -> list[ClientConfig]:
    """The settings each client run would have been started with (nothing starts)."""
    seen: list[ClientConfig] = []

    def run(cfg: ClientConfig) -> Any:
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(client_cli, "run", run)
    return seen


def test_client_flags_reach_the_settings_with_dp_sgds_own_learning_rate(
    client_settings: list[ClientConfig],
) -> None:
    runner = CliRunner()
    args = [*SERVER, "--dp-epsilon", "3", "--dp-delta", "1e-6", "--dp-max-grad-norm", "0.5"]
    runner.invoke(client_cli.main, args)
    (cfg,) = client_settings
    assert cfg.dp == DPSettings(epsilon=3.0, delta=1e-6, max_grad_norm=0.5)
    assert cfg.lr == dp.DP_LR
    runner.invoke(client_cli.main, [*SERVER, "--dp-noise-multiplier", "1.1", "--lr", "0.01"])
    assert client_settings[1].dp == DPSettings(noise_multiplier=1.1)
    assert client_settings[1].lr == 0.01
    runner.invoke(client_cli.main, SERVER)
    assert client_settings[2].dp is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dp-epsilon", "3", "--nopeek", "0.1"], "cannot be combined with NoPeek (--nopeek)"),
        (["--dp-delta", "1e-5"], "--dp-epsilon or --dp-noise-multiplier"),
        (["--dp-max-grad-norm", "2"], "--dp-epsilon or --dp-noise-multiplier"),
        (["--dp-epsilon", "3", "--dp-noise-multiplier", "1"], "not both"),
        (["--dp-epsilon", "0"], "--dp-epsilon"),
    ],
)
def test_client_refuses_dp_flags_that_cannot_work(
    client_settings: list[ClientConfig], flags: list[str], message: str
) -> None:
    result = CliRunner().invoke(client_cli.main, [*SERVER, *flags])
    assert result.exit_code == exits.USAGE, result.output
    assert message in result.output
    assert not client_settings


def test_the_sims_dp_flags_reach_its_victims_command(sim_settings: list[SimConfig]) -> None:
    CliRunner().invoke(sim_cli.main, ["--dp-epsilon", "3", "--dp-max-grad-norm", "0.5"])
    CliRunner().invoke(sim_cli.main, [])

    with_dp, without = (
        holder_command(cfg, server="127.0.0.1:1", credentials=Credentials(), noise=0.0, nopeek=0.0)
        for cfg in sim_settings
    )
    args = with_dp.args()
    assert args[args.index("--dp-epsilon") + 1] == "3.0"
    assert args[args.index("--dp-max-grad-norm") + 1] == "0.5"
    assert args[args.index("--dp-delta") + 1] == "1e-05"
    assert "--dp-noise-multiplier" not in args and "--lr" not in args
    assert not [arg for arg in without.args() if arg.startswith("--dp")]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dp-epsilon", "3", "--holders", "3"], "not with --holders"),
        (["--dp-epsilon", "3", "--nopeek", "0.1"], "cannot be combined with NoPeek (--nopeek)"),
        (["--dp-delta", "1e-6"], "needs --dp-epsilon or --dp-noise-multiplier"),
    ],
)
def test_the_sim_refuses_dp_flags_that_cannot_work(
    sim_settings: list[SimConfig], flags: list[str], message: str
) -> None:
    result = CliRunner().invoke(sim_cli.main, flags)
    assert result.exit_code == exits.USAGE, result.output
    assert message in result.output
    assert not sim_settings
