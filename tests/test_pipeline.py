"""The input pipeline: shuffle window, within-batch permutation, crop and flip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nondet.pipeline import batch_bounds, epoch_order, random_crop_flip, within_batch_permutation
from nondet.seeds import make_generator


@pytest.mark.parametrize("window", [None, 1, 2, 7, 50, 99, 100, 1000])
def test_every_example_exactly_once(window):
    order = epoch_order(100, make_generator(0), window)
    assert sorted(order.tolist()) == list(range(100))


def test_window_one_is_stored_order_and_draws_nothing():
    generator = make_generator(0)
    state = generator.get_state()
    assert epoch_order(10, generator, 1).tolist() == list(range(10))
    assert torch.equal(generator.get_state(), state)


def test_window_is_driven_by_the_shuffle_generator_only():
    a = epoch_order(500, make_generator(3), 16)
    torch.manual_seed(12345)  # the global RNG plays no part
    b = epoch_order(500, make_generator(3), 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, epoch_order(500, make_generator(4), 16))


def test_small_window_keeps_examples_near_their_place():
    # An example can only be emitted after it enters the buffer: position >= index - window + 1
    # is not guaranteed, but entry before emission is: example i enters at step i - window.
    window = 8
    order = epoch_order(1000, make_generator(1), window).tolist()
    position = {example: p for p, example in enumerate(order)}
    assert all(position[i] >= i - window + 1 for i in range(1000))
    assert order != list(range(1000))
    displacement = sum(abs(position[i] - i) for i in range(1000)) / 1000
    full = epoch_order(1000, make_generator(1), None).tolist()
    full_displacement = sum(abs(p - e) for p, e in enumerate(full)) / 1000
    assert displacement < full_displacement / 10


def test_bad_window():
    with pytest.raises(ValueError, match="shuffle_window"):
        epoch_order(10, make_generator(0), 0)


def test_batch_bounds():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(8, 4) == [(0, 4), (4, 8)]


def test_within_batch_permutation_is_a_permutation():
    perm = within_batch_permutation(33, make_generator(0))
    assert sorted(perm.tolist()) == list(range(33))


def test_crop_flip_matches_a_per_example_reference():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=make_generator(9))
    out = random_crop_flip(x, make_generator(5), pad=4)
    assert out.shape == x.shape and out.dtype == x.dtype
    # the reference draws the same numbers in the same order, then crops example by example
    generator = make_generator(5)
    offsets = torch.randint(0, 9, (2, 16), generator=generator)
    flips = torch.randint(0, 2, (16,), generator=generator).bool()
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(16):
        dy, dx = int(offsets[0, i]), int(offsets[1, i])
        crop = padded[i, :, dy : dy + 8, dx : dx + 8]
        if flips[i]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop)


def test_crop_flip_is_identity_for_zero_shift_and_no_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = random_crop_flip(x, make_generator(0), pad=0)
    assert all(torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1)) for i in range(2))
