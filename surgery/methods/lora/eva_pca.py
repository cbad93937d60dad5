"""Incremental PCA in torch (Ross et al. 2008, scikit-learn's IncrementalPCA), the SVD behind EVA.

The top-k right-singular vectors of all the (centred) rows seen so far, kept without storing the rows. With
m_t the running mean after batch t, n_t the rows seen, X_t the batch (b rows) and S, V the previous k components:

    first batch:    X_1 - m_1                                          = U S V^T
    later batches:  [ S V^T ;  X_t - mean(X_t) ;  c (m_{t-1} - mean(X_t)) ] = U S V^T,   c = sqrt(n_{t-1} b / n_t)
                    (the last row accounts for the mean moving from m_{t-1} to m_t)

    explained_variance_       S^2 / (n_t - 1)
    explained_variance_ratio_ S^2 / (n_t * sum of the per-feature variances)

Mean and variance are updated in float64 (Chan et al.'s pairwise formulas). Signs are fixed so that each
component's largest-magnitude entry is positive (scikit-learn's svd_flip on V), which makes components of
consecutive batches comparable. lowrank=True uses torch.svd_lowrank (q = 2k columns, niter subspace iterations)
seeded with lowrank_seed inside a forked RNG: reproducible, and the caller's random stream is not touched.

The arithmetic (operation order and dtypes: the first batch's SVD runs in float32, later ones in float64 once the
float64 mean correction joins the stack) is PEFT's peft.utils.incremental_pca, so results are equal for equal
inputs.
"""
from __future__ import annotations

from typing import Optional

import torch

_FLOATS = (torch.float32, torch.float64)


class IncrementalPCA:
    """PCA fitted batch by batch (partial_fit), in torch on the batches' device.

    n_components: components kept (default: min(rows, features) of the first batch). copy: work on a copy of
    each batch (False: the batch is centred in place). batch_size: rows per step of `fit` (default 5 x features).
    svd_driver: torch.linalg.svd's driver (CUDA only). lowrank, lowrank_q (default 2 x n_components),
    lowrank_niter, lowrank_seed: use torch.svd_lowrank instead of the full SVD."""

    def __init__(self, n_components: Optional[int] = None, copy: Optional[bool] = True,
                 batch_size: Optional[int] = None, svd_driver: Optional[str] = None, lowrank: bool = False,
                 lowrank_q: Optional[int] = None, lowrank_niter: int = 4, lowrank_seed: Optional[int] = None):
        self.n_components = n_components
        self.copy = copy
        self.batch_size = batch_size
        self.svd_driver = svd_driver
        self.lowrank = lowrank
        self.lowrank_q = lowrank_q
        self.lowrank_niter = lowrank_niter
        self.lowrank_seed = lowrank_seed
        self.n_features_ = None
        if lowrank:
            if lowrank_q is None:
                if n_components is None:
                    raise ValueError("n_components must be specified when using lowrank mode with lowrank_q=None.")
                self.lowrank_q = 2 * n_components
            elif n_components is not None and lowrank_q < n_components:
                raise ValueError(f"lowrank_q must be greater than or equal to n_components. (lowrank_q={lowrank_q}, "
                                 f"n_components={n_components})")

    # -- the SVD -------------------------------------------------------------------------------------------
    def _svd(self, X: torch.Tensor):
        if not self.lowrank:
            return torch.linalg.svd(X, full_matrices=False, driver=self.svd_driver)
        seeded = self.lowrank_seed is not None
        with torch.random.fork_rng(enabled=seeded):
            if seeded:
                torch.manual_seed(self.lowrank_seed)
            U, S, V = torch.svd_lowrank(X, q=self.lowrank_q, niter=self.lowrank_niter)
        return U, S, V.mH

    @staticmethod
    def _svd_flip(u: torch.Tensor, v: torch.Tensor, u_based_decision: bool = True):
        """Signs that make the largest-magnitude entry of each column of u (or row of v) positive, applied to
        both factors in place (their product is unchanged)."""
        if u_based_decision:
            largest = torch.argmax(torch.abs(u), dim=0)
            signs = torch.sign(u.gather(0, largest.view(1, -1)).view(-1))
        else:
            largest = torch.argmax(torch.abs(v), dim=1)
            signs = torch.sign(v.gather(1, largest.view(-1, 1)).view(-1))
        u *= signs[: u.shape[1]].view(1, -1)
        v *= signs.view(-1, 1)
        return u, v

    # -- input -----------------------------------------------------------------------------------------------
    def _validate_data(self, X) -> torch.Tensor:
        if not isinstance(X, torch.Tensor):
            X = torch.tensor(X, dtype=torch.float32)
        elif self.copy:
            X = X.clone()
        if X.dim() != 2:
            raise ValueError(f"IncrementalPCA takes 2-D data (samples, features); got shape {tuple(X.shape)}")
        n_samples, n_features = X.shape
        if self.n_components is not None and self.n_components > n_features:
            raise ValueError(f"n_components={self.n_components} invalid for n_features={n_features}, need more rows "
                             f"than columns for IncrementalPCA processing.")
        if self.n_components is not None and self.n_components > n_samples:
            raise ValueError(f"n_components={self.n_components} must be less or equal to the batch number of samples "
                             f"{n_samples}")
        return X if X.dtype in _FLOATS else X.to(torch.float32)

    @staticmethod
    def _incremental_mean_and_var(X, last_mean, last_variance, last_sample_count):
        """(mean, variance, count) over the rows seen before plus X; float64 sums (Chan et al.)."""
        if X.shape[0] == 0:
            return last_mean, last_variance, last_sample_count
        if last_sample_count > 0 and (last_mean is None or last_variance is None):
            raise ValueError("last_mean and last_variance must be given when last_sample_count > 0.")
        batch_count = torch.tensor([X.shape[0]], device=X.device)
        total = last_sample_count + batch_count
        if last_mean is None:
            last_sum = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
        else:
            last_sum = last_mean * last_sample_count
        batch_sum = X.sum(dim=0, dtype=torch.float64)
        mean = (last_sum + batch_sum) / total
        centred = X - batch_sum / batch_count
        correction = centred.sum(dim=0, dtype=torch.float64).square()
        batch_unnormalised = centred.square().sum(dim=0, dtype=torch.float64) - correction / batch_count
        if last_variance is None:
            return mean, batch_unnormalised / total, total
        last_over_batch = last_sample_count.double() / batch_count
        unnormalised = (last_variance * last_sample_count + batch_unnormalised
                        + last_over_batch / total * (last_sum / last_over_batch - batch_sum).square())
        return mean, unnormalised / total, total

    # -- fitting ---------------------------------------------------------------------------------------------
    def partial_fit(self, X, check_input: bool = True) -> "IncrementalPCA":
        """Update the components with one batch X (samples, features)."""
        first = not hasattr(self, "components_")
        if check_input:
            X = self._validate_data(X)
        n_samples, n_features = X.shape
        if first:
            self.mean_, self.var_ = None, None
            self.n_samples_seen_ = torch.tensor([0], device=X.device)
            self.n_features_ = n_features
            if not self.n_components:
                self.n_components = min(n_samples, n_features)
        if n_features != self.n_features_:
            raise ValueError(f"Number of features of the new batch does not match the number of features of the first "
                             f"batch. ({n_features} vs {self.n_features_})")
        mean, var, total = self._incremental_mean_and_var(X, self.mean_, self.var_, self.n_samples_seen_)
        if first:
            X -= mean   # in place: the batch keeps its dtype
        else:
            batch_mean = torch.mean(X, dim=0)
            X -= batch_mean
            factor = torch.sqrt((self.n_samples_seen_.double() / total) * n_samples)
            shift = factor * (self.mean_ - batch_mean)
            X = torch.vstack((self.singular_values_.view((-1, 1)) * self.components_, X, shift))
        U, S, Vt = self._svd(X)
        U, Vt = self._svd_flip(U, Vt, u_based_decision=False)
        k = self.n_components
        explained = S**2 / (total - 1)
        self.n_samples_seen_ = total
        self.components_ = Vt[:k]
        self.singular_values_ = S[:k]
        self.mean_, self.var_ = mean, var
        self.explained_variance_ = explained[:k]
        self.explained_variance_ratio_ = (S**2 / torch.sum(var * total))[:k]
        if k not in (n_samples, n_features):
            self.noise_variance_ = explained[k:].mean()
        else:
            self.noise_variance_ = torch.tensor(0.0, device=X.device)
        return self

    def fit(self, X, check_input: bool = True) -> "IncrementalPCA":
        """Fit on all of X, batch_size rows at a time."""
        if check_input:
            X = self._validate_data(X)
        n_samples, n_features = X.shape
        if self.batch_size is None:
            self.batch_size = 5 * n_features
        for rows in self.gen_batches(n_samples, self.batch_size, min_batch_size=self.n_components or 0):
            self.partial_fit(X[rows], check_input=False)
        return self

    def transform(self, X) -> torch.Tensor:
        """X projected on the components (float64 product, X's dtype back)."""
        X = X - self.mean_
        return torch.mm(X.double(), self.components_.T).to(X.dtype)

    @staticmethod
    def gen_batches(n: int, batch_size: int, min_batch_size: int = 0):
        """Slices of batch_size rows over range(n); a full slice is skipped when it would leave fewer than
        min_batch_size rows after it, and the remainder comes last."""
        start = 0
        for _ in range(n // batch_size):
            end = start + batch_size
            if end + min_batch_size > n:
                continue
            yield slice(start, end)
            start = end
        if start < n:
            yield slice(start, n)
