"""What EVA's SVD sees: the inputs of each adapted layer, caught by forward hooks, chosen by the caller's
functions, and gathered across ranks under torch.distributed.

    forward_fn(model, batch)                                  runs the model (default: model(**batch))
    prepare_model_inputs_fn(batch, peft_config)               once per batch, shared by every layer
    prepare_layer_inputs_fn(layer_input, model_input, name)   per layer: the (rows, features) the SVD takes

The language-modelling defaults keep the tokens the attention mask keeps (and, with eva_config.use_label_mask,
those whose label is not label_mask_value):  rows = layer_input[mask.nonzero()]. Without a layer function a
layer's input is flattened to (-1, features).

Two hooks: InputHashHook fingerprints a layer's first input, so layers fed the very same tensor (q, k, v
projections) share one SVD; InputSVDHook feeds each batch to an IncrementalPCA and tracks convergence, the
cosine similarity of each component with the previous batch's: converged[i] = cos(v_i, v_i') >= tau.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Mapping
from typing import Callable, Optional, Union

import torch
import torch.distributed as dist

from .eva_pca import IncrementalPCA

logger = logging.getLogger(__name__)

SVD_SEED = 42   # PEFT's fixed seed of the low-rank SVD: the same components for the same data


def forward_fn_dict(model, inputs):
    return model(**inputs)


def prepare_model_inputs_fn_language_modeling(model_input, peft_config):
    """The (batch, position) indices of the tokens the SVD uses: attention mask, and labels != label_mask_value
    with use_label_mask."""
    if not isinstance(model_input, dict):
        raise TypeError("When using `prepare_model_inputs_fn_language_modeling` inputs must be a dictionary "
                        f"(got {type(model_input).__name__}; pass prepare_model_inputs_fn=None, or a function of "
                        f"your own, for other batches)")
    mask = model_input.get("attention_mask", torch.ones_like(model_input["input_ids"])).bool()
    settings = peft_config.eva_config
    if settings.use_label_mask and "labels" in model_input:
        mask = torch.logical_and(mask, model_input["labels"] != settings.label_mask_value)
    return mask.nonzero()


def _first_tensor(layer_input, layer_name: str) -> torch.Tensor:
    if isinstance(layer_input, torch.Tensor):
        return layer_input
    if isinstance(layer_input, (tuple, list)):
        return layer_input[0]
    raise TypeError(f"unsupported input type {type(layer_input)} for prepare_layer_inputs_fn in layer {layer_name}, "
                    "please provide a custom prepare_layer_inputs_fn")


def prepare_layer_inputs_fn_language_modeling(layer_input, model_input, layer_name) -> torch.Tensor:
    """The rows of the layer's input at the indices prepare_model_inputs_fn_language_modeling chose."""
    return _first_tensor(layer_input, layer_name)[model_input.T.unbind()]


def flattened_layer_input(layer_input, model_input, layer_name) -> torch.Tensor:
    """The layer's input as (-1, features): the default without a layer function."""
    x = _first_tensor(layer_input, layer_name)
    return x.view(-1, x.size(-1)) if x.ndim > 2 else x


def move_inputs_to_device(inputs, device):
    """A batch (tensor, mapping or sequence of them) on `device`."""
    if hasattr(inputs, "to"):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return type(inputs)({k: move_inputs_to_device(v, device) for k, v in inputs.items()})
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(move_inputs_to_device(v, device) for v in inputs)
    warnings.warn(f"input of type {type(inputs)} could not be moved to the correct device")
    return inputs


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order (ranks may hold different numbers of rows)."""
    world = dist.get_world_size()
    local = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(counts, local)
    sizes = [int(c.item()) for c in counts]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


class EvaHook:
    """A forward hook that turns a layer's input into the rows EVA uses (see the module docstring)."""

    def __init__(self, name: str, prepare_layer_inputs_fn: Optional[Callable] = None,
                 gather_distributed_inputs: bool = True):
        self.name = name
        self.gather_distributed_inputs = gather_distributed_inputs
        self.prepare_fn = prepare_layer_inputs_fn if prepare_layer_inputs_fn is not None else flattened_layer_input
        self.model_input = None

    @torch.no_grad()
    def rows(self, layer_input) -> torch.Tensor:
        x = self.prepare_fn(layer_input, self.model_input, self.name)
        if self.gather_distributed_inputs and dist.is_available() and dist.is_initialized():
            x = gather_rows(x)
        return x


class InputHashHook(EvaHook):
    """Fingerprints of the rows a layer received, one per forward call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hashed_inputs: list[str] = []

    @staticmethod
    def hash_fn(tensor: torch.Tensor) -> str:
        """Equal for tensors with the same values, dtype and shape (their bytes)."""
        data = tensor.detach().cpu().contiguous()
        digest = hashlib.blake2b(f"{data.dtype}{tuple(data.shape)}".encode(), digest_size=16)
        digest.update(data.view(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        return digest.hexdigest()

    @torch.no_grad()
    def __call__(self, module, input, output):
        self.hashed_inputs.append(self.hash_fn(self.rows(input)))


class InputSVDHook(EvaHook):
    """One step of incremental PCA per forward call; converged[i]: component i moved less than tau (cosine)."""

    def __init__(self, n_components: int, sim_thresh: Union[float, torch.Tensor], **kwargs):
        super().__init__(**kwargs)
        if isinstance(sim_thresh, torch.Tensor) and sim_thresh.dim() > 0:
            if sim_thresh.dim() != 1 or sim_thresh.size(0) not in (1, n_components):
                raise ValueError(f"if sim_thresh is a tensor with more than 0 dimensions it must have shape "
                                 f"(n_components,) or (1,) (got {tuple(sim_thresh.shape)}, n_components="
                                 f"{n_components})")
        self.n_components = n_components
        self.sim_thresh = sim_thresh
        self.svd = IncrementalPCA(n_components=n_components, copy=True, lowrank=True, lowrank_seed=SVD_SEED)
        self.converged = torch.zeros((n_components,), dtype=torch.bool)

    @torch.no_grad()
    def __call__(self, module, input, output):
        previous = self.svd.components_.clone().detach() if hasattr(self.svd, "components_") else None
        states = self.rows(input)
        if states.size(0) < self.n_components:   # too few rows for this many components: wait for a larger batch
            logger.info("EVA: skipping the SVD step of %s: %d rows, fewer than its %d components", self.name,
                        states.size(0), self.n_components)
            return
        self.svd.partial_fit(states.to(torch.float32))
        if previous is None:
            return
        components = self.svd.components_
        if components.dim() == 1:
            components, previous = components.reshape(1, -1), previous.reshape(1, -1)
        self.converged = torch.nn.functional.cosine_similarity(components, previous) >= self.sim_thresh
