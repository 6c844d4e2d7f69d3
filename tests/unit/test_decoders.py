"""Inversion decoders: shapes, output range, the study decoder's affinity, the registry, seeding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitnn.common.decoders import DECODERS, DecoderError, build_decoder


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


def _shapes_after_each_stage(decoder: nn.Module, batch: int) -> list[tuple[int, ...]]:
    """Output shapes of `project` and of each layer of `upsample`, in order, for `batch` cuts."""
    shapes: list[tuple[int, ...]] = []
    stages = [decoder.get_submodule("project"), *decoder.get_submodule("upsample").children()]
    hooks = [
        stage.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
        for stage in stages
    ]
    with torch.no_grad():
        decoder.eval()(torch.zeros(batch, 500))
    for hook in hooks:
        hook.remove()
    return shapes


def test_study_decoder_upsamples_12_24_26_28_as_documented() -> None:
    shapes = _shapes_after_each_stage(build_decoder("study", seed=0), batch=2)

    assert shapes == [
        (2, 64 * 12 * 12),
        (2, 64, 24, 24),
        (2, 32, 26, 26),
        (2, 8, 28, 28),
        (2, 1, 28, 28),
    ]


def test_deep_decoder_upsamples_7_14_28_as_documented() -> None:
    decoder = build_decoder("deep", seed=0)

    project, *rest = _shapes_after_each_stage(decoder, batch=2)

    assert project == (2, 128 * 7 * 7)
    steps = [s[1:3] for i, s in enumerate(rest) if i == 0 or s != rest[i - 1]]
    assert steps == [(128, 7), (64, 14), (32, 28), (1, 28)]
    assert isinstance(list(decoder.get_submodule("upsample").children())[-1], nn.Sigmoid)


def test_both_decoders_stay_small_enough_for_cpu_training() -> None:
    for name in DECODERS:
        count = sum(p.numel() for p in build_decoder(name, seed=0).parameters())
        assert 1_000_000 < count < 5_000_000, (name, count)
