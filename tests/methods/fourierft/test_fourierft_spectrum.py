"""The spectral update against PEFT's own arithmetic (dense complex ifft2 of the scattered spectrum): the seeded
locations, ΔW from the Hermitian half-spectrum, x ΔW^T through FFTs of x, and both evaluations' gradients.
Tolerance: 1e-6 relative to the largest value (float32 FFT rounding)."""
from __future__ import annotations

import pytest
import torch

from surgery.methods.fourierft.spectrum import (apply_delta, dense_delta, prefers_fft, spectral_index,
                                                spectral_locations)

SHAPES = [(32, 32, 100), (7, 5, 35), (6, 9, 20), (1, 8, 5), (9, 1, 4), (16, 48, 300), (5, 6, 30)]


def _peft_locations(out_f, in_f, n, seed):
    perm = torch.randperm(out_f * in_f, generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([perm // in_f, perm % in_f], dim=0)


def _peft_delta(spectrum, locations, out_f, in_f, scaling):
    """PEFT's FourierFTLayer.get_delta_weight, written out."""
    dense = torch.zeros(out_f, in_f)
    dense[locations[0], locations[1]] = spectrum.float()
    return torch.fft.ifft2(dense).real * scaling


def _close(got, want, rel=1e-6):
    assert (got - want).abs().max() <= rel * max(want.abs().max().item(), 1e-12)


@pytest.mark.parametrize("out_f, in_f, n", SHAPES)
def test_locations_are_peft_s_draw(out_f, in_f, n):
    for seed in (777, 0, -3, 2 ** 64 - 1):
        assert torch.equal(spectral_locations(out_f, in_f, n, seed), _peft_locations(out_f, in_f, n, seed))


@pytest.mark.parametrize("out_f, in_f, n", SHAPES)
def test_dense_delta_equals_peft_s_ifft2(out_f, in_f, n):
    locations = spectral_locations(out_f, in_f, n, 5)
    spectrum = torch.randn(n, generator=torch.Generator().manual_seed(1))
    index = spectral_index(locations, out_f, in_f, "cpu")
    _close(dense_delta(spectrum, index, out_f, in_f, 150.0), _peft_delta(spectrum, locations, out_f, in_f, 150.0))


def test_the_full_grid_and_its_self_mirrored_cells():
    """Every cell used once (n = M N), including (0, 0), (M/2, N/2) and the columns 0 and N/2 that mirror in
    themselves: the half-spectrum must take both halves of those."""
    out_f, in_f = 6, 8
    locations = spectral_locations(out_f, in_f, out_f * in_f, 9)
    spectrum = torch.randn(out_f * in_f, generator=torch.Generator().manual_seed(2))
    index = spectral_index(locations, out_f, in_f, "cpu")
    _close(dense_delta(spectrum, index, out_f, in_f, 3.0), _peft_delta(spectrum, locations, out_f, in_f, 3.0))


@pytest.mark.parametrize("out_f, in_f, n", SHAPES)
def test_apply_delta_and_gradients_equal_the_dense_product(out_f, in_f, n):
    locations = spectral_locations(out_f, in_f, n, 777)
    index = spectral_index(locations, out_f, in_f, "cpu")
    g = torch.Generator().manual_seed(3)
    spectrum = torch.randn(n, generator=g)
    x = torch.randn(2, 3, in_f, generator=g)
    weights = torch.randn(6, out_f, generator=g)
    results = []
    for fft in (True, False):
        s, xi = spectrum.clone().requires_grad_(True), x.clone().requires_grad_(True)
        if fft:
            out = apply_delta(xi, s, index, out_f, in_f, 150.0)
        else:
            out = (xi @ _peft_delta(s, locations, out_f, in_f, 150.0).T).reshape(-1, out_f)
        (out * weights).sum().backward()
        results.append((out.detach(), s.grad, xi.grad))
    for got, want in zip(results[0], results[1]):
        _close(got, want)


def test_the_fft_evaluation_is_chosen_for_large_layers_only():
    assert prefers_fft(4096, 4096, 1000) and prefers_fft(4096, 11008, 3000) and prefers_fft(1024, 1024, 100)
    assert not prefers_fft(512, 512, 1000) and not prefers_fft(32, 32, 64)
