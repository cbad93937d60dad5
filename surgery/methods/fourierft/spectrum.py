"""The FourierFT update from its n spectral coefficients c_j at locations (k_j, l_j) of an out x in grid:

    ΔW = s · Re(ifft2(S)),  S[k_j, l_j] = c_j      ΔW[m, i] = s/(MN) · Σ_j c_j cos(2π (k_j m / M + l_j i / N))

PEFT builds the dense complex ifft2 of the whole grid on every forward. Two cheaper, exact evaluations:

  dense_delta   ΔW itself, as irfft2 of the Hermitian half-spectrum (S + S(-k, -l)) / 2: a real M x (N/2+1)
                grid, no M x N complex temporary (merging, and the forward of small layers);
  apply_delta   x ΔW^T without ΔW: an rfft of each input row, a gather of the n used frequencies times c, a
                scatter into M output frequencies and one ifft back, O(n + M log M + N log N) per token
                instead of O(M N) (the forward of large layers).

Locations are PEFT's draw: randperm(out * in) from a generator seeded with random_loc_seed, the first n,
(idx // in, idx % in). They are not saved with the adapter, so they must be drawn exactly so.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

# apply_delta beats the dense product when its per-token work, ~300 (n + M + N) in units of one multiply-add of
# the dense M x N product, is smaller (measured on CPU, float32, M = N from 256 to 4096, n from 100 to 10k)
FFT_COST_FACTOR = 300


@functools.lru_cache(maxsize=64)
def _drawn_locations(out_f: int, in_f: int, n: int, seed: int) -> torch.Tensor:
    perm = torch.randperm(out_f * in_f, generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([perm // in_f, perm % in_f], dim=0)


def spectral_locations(out_f: int, in_f: int, n: int, seed: int) -> torch.Tensor:
    """(2, n) int64 rows/columns of the n coefficients, PEFT's draw (cached: every q_proj of a model draws the
    same permutation of the same size, a 16M-entry randperm each on a 7B model)."""
    return _drawn_locations(out_f, in_f, n, seed).clone()


def prefers_fft(out_f: int, in_f: int, n: int) -> bool:
    return FFT_COST_FACTOR * (n + out_f + in_f) < out_f * in_f


class SpectralIndex(NamedTuple):
    """The index tensors both evaluations need, derived once per adapter and device from the locations."""

    rows: torch.Tensor      # dense_delta: half-spectrum cells each coefficient (and its mirror) lands in
    cols: torch.Tensor
    source: torch.Tensor    # ... and which coefficient each cell takes
    gather: torch.Tensor    # apply_delta: the rfft bin that holds input frequency l_j (or its mirror N - l_j)
    sign: torch.Tensor      # ... +1, or -1 where the bin is the conjugate
    out_rows: torch.Tensor  # ... output frequency k_j


def spectral_index(locations: torch.Tensor, out_f: int, in_f: int, device) -> SpectralIndex:
    k, l = locations[0], locations[1]
    half = in_f // 2
    entry = torch.arange(k.numel())
    mirror_k, mirror_l = (-k) % out_f, (-l) % in_f
    direct, mirrored = l <= half, mirror_l <= half   # columns 0 and N/2 keep both halves: they mirror in-column
    rows = torch.cat([k[direct], mirror_k[mirrored]])
    cols = torch.cat([l[direct], mirror_l[mirrored]])
    source = torch.cat([entry[direct], entry[mirrored]])
    # sum_i x_i e^{+2πi l i/N} = conj(rfft(x)[l]) for l <= N/2, else rfft(x)[N - l]
    gather = torch.where(direct, l, in_f - l)
    sign = torch.where(direct, -1.0, 1.0)
    return SpectralIndex(*(t.to(device) for t in (rows, cols, source, gather, sign, k)))


def compute_dtype(spectrum: torch.Tensor) -> torch.dtype:
    """FFTs run in float32 at least (PEFT: 'ifft2 does not work with float16 or bfloat16')."""
    return torch.promote_types(spectrum.dtype, torch.float32)


def dense_delta(spectrum: torch.Tensor, index: SpectralIndex, out_f: int, in_f: int, scaling: float) -> torch.Tensor:
    """ΔW (out, in) in the compute dtype."""
    dtype = compute_dtype(spectrum)
    values = spectrum.to(dtype)[index.source] * (scaling / 2)
    half = torch.zeros(out_f, in_f // 2 + 1, dtype=dtype, device=spectrum.device)
    half = half.index_put((index.rows, index.cols), values, accumulate=True)
    return torch.fft.irfft2(half, s=(out_f, in_f))


def apply_delta(x: torch.Tensor, spectrum: torch.Tensor, index: SpectralIndex, out_f: int, in_f: int,
                scaling: float) -> torch.Tensor:
    """x ΔW^T for x (..., in) as a (tokens, out) tensor in the compute dtype, without building ΔW."""
    dtype = compute_dtype(spectrum)
    rows = x.reshape(-1, in_f).to(dtype)
    # frequencies first: the gather and the scatter then move whole contiguous rows of tokens
    bins = torch.view_as_real(torch.fft.rfft(rows.T, dim=0))               # (N/2+1, tokens, 2)
    picked = bins.index_select(0, index.gather)                            # (n, tokens, 2)
    coef = spectrum.to(dtype) * (scaling / (out_f * in_f))
    weights = torch.stack([coef, coef * index.sign.to(dtype)], dim=-1).unsqueeze(1)   # (n, 1, 2)
    spectrum_out = torch.zeros(out_f, rows.shape[0], 2, dtype=dtype, device=x.device)
    spectrum_out = spectrum_out.index_add(0, index.out_rows, picked * weights)
    out = torch.fft.ifft(torch.view_as_complex(spectrum_out), dim=0, norm="forward").real   # (out, tokens)
    return out.T
