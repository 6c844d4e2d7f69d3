"""Inversion decoders: shapes, output range, the study decoder's affinity, the registry, seeding."""

from __future__ import annotations

import pytest
import torch

from splitnn.attacker.decoders import DECODERS, DecoderError, build_decoder


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_maps_cut_to_image(name: str) -> None:
    decoder = build_decoder(name, seed=0)
    cut = torch.rand(5, 500, generator=torch.Generator().manual_seed(1)) * 2 - 1

    image = decoder(cut)
    image.sum().backward()

    assert image.shape == (5, 1, 28, 28) and image.dtype == torch.float32
    assert all(p.grad is not None for p in decoder.parameters())


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_trains_on_a_batch_of_one(name: str) -> None:
    decoder = build_decoder(name, seed=0).train()

    assert decoder(torch.zeros(1, 500)).shape == (1, 1, 28, 28)


def test_deep_decoder_outputs_pixels_in_unit_range() -> None:
    decoder = build_decoder("deep", seed=0)
    cut = torch.randn(16, 500, generator=torch.Generator().manual_seed(2)) * 50

    train_out = decoder.train()(cut)
    eval_out = decoder.eval()(cut)

    for out in (train_out, eval_out):
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_deep_decoder_is_not_affine() -> None:
    decoder = build_decoder("deep", seed=0).eval().double()
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(4, 500, generator=generator, dtype=torch.float64) * 2 - 1
    y = torch.rand(4, 500, generator=generator, dtype=torch.float64) * 2 - 1
    zero = torch.zeros(4, 500, dtype=torch.float64)

    with torch.no_grad():
        gap = decoder(2 * x + 3 * y) - (2 * decoder(x) + 3 * decoder(y) - 4 * decoder(zero))
        spread = (decoder(x) - decoder(zero)).abs().max()

    # Untrained, its outputs barely move; the affinity gap is measured against that movement.
    assert gap.abs().max() > spread


def test_study_decoder_is_affine() -> None:
    decoder = build_decoder("study", seed=0).double()
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(4, 500, generator=generator, dtype=torch.float64) * 2 - 1
    y = torch.rand(4, 500, generator=generator, dtype=torch.float64) * 2 - 1
    zero = torch.zeros(4, 500, dtype=torch.float64)
    a, b = 2.5, -1.5

    with torch.no_grad():
        combined = decoder(a * x + b * y)
        expected = a * decoder(x) + b * decoder(y) - (a + b - 1) * decoder(zero)

    torch.testing.assert_close(combined, expected, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(decoder(x), decoder(y))


def test_unknown_decoder_names_the_known_ones() -> None:
    with pytest.raises(DecoderError, match=r"'unet'.*deep, study"):
        build_decoder("unet", seed=0)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_seeded_builds_are_identical_and_leave_global_rng_alone(name: str) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)

    first = build_decoder(name, seed=7).state_dict()
    second = build_decoder(name, seed=7).state_dict()
    other = build_decoder(name, seed=8).state_dict()

    assert torch.equal(torch.rand(1), expected_next)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_parameter_counts_stay_small_enough_for_cpu_training() -> None:
    counts = {
        name: sum(p.numel() for p in build_decoder(name, seed=0).parameters()) for name in DECODERS
    }

    assert (
        counts["study"]
        == 500 * 9216 + 9216 + 64 * 64 * 4 + 64 + 64 * 32 * 9 + 32 + 32 * 8 * 9 + 8 + 8 + 1
    )
    assert all(count < 5_000_000 for count in counts.values())
