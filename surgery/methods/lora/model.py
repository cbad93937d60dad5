"""LoraModel: PEFT's name for the LoRA tuner (PeftModel.base_model), for isinstance checks in user code."""
from __future__ import annotations

from typing import Optional

from ...facade.tuner import TunerModel
from .init_options import warn_if_mixed_with_a_rewritten_base
from .weighted import add_weighted_adapter as _add_weighted_adapter


class LoraModel(TunerModel):
    """Creates a Low Rank Adapter (LoRA) model from a pretrained transformers model (PEFT's LoraModel)."""

    prefix = "lora_"   # PEFT's parameter-name prefix for this method

    def plan_adapter(self, adapter_name, config, strict=True, heads=None, checkpoint_shapes=None):
        if checkpoint_shapes is not None:   # loading an adapter next to others: PEFT's load_adapter warning
            warn_if_mixed_with_a_rewritten_base([config, *self.peft_config.values()])
        return super().plan_adapter(adapter_name, config, strict=strict, heads=heads,
                                    checkpoint_shapes=checkpoint_shapes)

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str,
                             combination_type: str = "svd", svd_rank: Optional[int] = None,
                             svd_clamp: Optional[float] = None, svd_full_matrices: bool = True,
                             svd_driver: Optional[str] = None, density: Optional[float] = None,
                             majority_sign_method: str = "total") -> None:
        """Add adapter `adapter_name`, a combination of `adapters` with `weights` (negative ones subtract).

        combination_type: "svd" (default), "cat", "linear", "ties", "ties_svd", "dare_linear", "dare_ties",
        "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd". cat (rank: the sum of
        the ranks) and svd (rank: svd_rank, else the largest) are exact up to the rank kept; the others
        combine the factors and need equal ranks. density: the fraction of values kept by ties / dare /
        magnitude_prune; majority_sign_method: "total" or "frequency" (ties). svd_clamp: a quantile to clamp
        the factors to; svd_full_matrices, svd_driver: passed to torch.linalg.svd. The new adapter is not
        activated (set_adapter) and is frozen; an existing adapter_name is left unchanged, as in PEFT.
        See surgery/methods/lora/weighted.py for the arithmetic."""
        _add_weighted_adapter(self, adapters, weights, adapter_name, combination_type=combination_type,
                              svd_rank=svd_rank, svd_clamp=svd_clamp, svd_full_matrices=svd_full_matrices,
                              svd_driver=svd_driver, density=density, majority_sign_method=majority_sign_method)
