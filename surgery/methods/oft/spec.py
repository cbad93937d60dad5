"""OFT's registry entry: which layer class wraps which base type, each rewrite's block layout, and its cost.

PEFT 0.21.2 wraps torch.nn.Linear, nn.Conv2d and nn.Embedding (not transformers' Conv1D, nor Conv1d/3d).
Per matched module the plan records r (blocks) and oft_block_size, resolved from the config's one non-zero
value against the module's rotated dimension; a value that does not divide it is adjusted as PEFT does, with a
plan warning naming the module and the valid sizes.
When a checkpoint is loaded its packed rotation's shape decides the layout instead, so an adapter for which
PEFT silently adjusted the block size (see layout.py) loads as PEFT trained it.
"""
from __future__ import annotations

import math

from torch import nn

from ...config.enums import PeftType
from ..fan_in_fan_out import settle_fan_in_fan_out
from ..default_targets import LORA_FAMILY
from ..spec import Handler, MethodSpec, RewriteSite
from .config import OFTConfig
from .conv import Conv2d, kernel_side
from .embedding import Embedding
from .layout import adjusted_layout, block_layout
from .linear import Linear
from .model import OFTModel

DEFAULT_TARGETS = LORA_FAMILY   # PEFT's table for this method (methods/default_targets.py)


def _conv_refuses(base: nn.Module, config, fqn: str):
    if base.groups != 1:
        return (f"target module {fqn!r} is a grouped convolution (groups={base.groups}); OFT rotates whole "
                f"in_channels x k x k patches, which a grouped weight cannot absorb: it supports groups=1 only")
    if max(base.dilation) > 1:
        return f"target module {fqn!r} has dilation={tuple(base.dilation)}; OFT supports Conv2d with dilation 1 only"
    if base.kernel_size[0] != base.kernel_size[1]:
        return (f"target module {fqn!r} has a non-square kernel {tuple(base.kernel_size)}; PEFT 0.21.2's OFT sizes "
                f"patches as k[0] x k[0] and fails on it, so only square kernels are supported")
    return None


HANDLERS = (   # the block layout is checked in rewrite_params, where a checkpoint being loaded is known
    Handler(lambda m: isinstance(m, nn.Linear), Linear, "torch.nn.Linear"),
    Handler(lambda m: isinstance(m, nn.Conv2d), Conv2d, "torch.nn.Conv2d", refuses=_conv_refuses),
    Handler(lambda m: isinstance(m, nn.Embedding), Embedding, "torch.nn.Embedding"),
)


def _layout(site: RewriteSite, layer_cls) -> tuple[int, int]:
    """(r, oft_block_size): from the checkpoint's packed rotation when loading one, else from the config."""
    dim = layer_cls.dim_of(site.base)
    packed = site.saved.get("oft_R.weight") or site.saved.get("oft_embedding_R.weight")
    if packed is not None:   # b (b - 1) / 2 packed entries per block
        size = round((1 + math.sqrt(1 + 8 * packed[1])) / 2)
        if size * (size - 1) // 2 == packed[1] and size > 0 and dim % size == 0:
            if block_layout(dim, site.config.r, site.config.oft_block_size) != (dim // size, size):
                site.note(f"{site.fqn}: the checkpoint holds blocks of {size} (PEFT adjusts a block size that does "
                          f"not divide {layer_cls.dim_name}={dim}): loading them as saved")
            return dim // size, size
    layout = block_layout(dim, site.config.r, site.config.oft_block_size)
    if layout is None:
        layout, warning = adjusted_layout(dim, layer_cls.dim_name, site.fqn, site.config)
        site.note(warning)
    return layout


def _layer_class(base: nn.Module) -> type:
    return next(h.layer for h in HANDLERS if h.accepts(base))


def rewrite_params(site: RewriteSite) -> dict:
    config, base = site.config, site.base
    r, block_size = _layout(site, _layer_class(base))
    settle_fan_in_fan_out(site, conv1d=False)
    if config.module_dropout > 0:
        site.note(f"module_dropout={config.module_dropout} has no effect: PEFT 0.21.2's OFT builds its "
                  f"multiplicative dropout but never applies it, and surgery computes what PEFT computes")
    if isinstance(base, nn.Conv2d) and kernel_side(base) > 1:
        site.note(f"{site.fqn}: OFT on a {kernel_side(base)}x{kernel_side(base)} Conv2d follows PEFT 0.21.2, which "
                  f"rotates unfolded input patches and folds them back summed: the adapter is not the identity "
                  f"at init and merge_and_unload changes this layer's outputs (1x1 convolutions are exact)")
    return {"r": r, "oft_block_size": block_size, "coft": bool(config.coft), "block_share": bool(config.block_share)}


def added_params(base: nn.Module, params: dict, config: OFTConfig) -> int:
    """One packed upper triangle per block (one in all with block_share)."""
    size = params["oft_block_size"]
    return (1 if params["block_share"] else params["r"]) * (size * (size - 1) // 2)


SPEC = MethodSpec(
    peft_type=PeftType.OFT,
    config_cls=OFTConfig,
    tuner_cls=OFTModel,
    name="OFT",
    handlers=HANDLERS,
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("r", "r"), ("block", "oft_block_size")),
    flags=(("COFT", "coft"), ("shared block", "block_share")),
    default_targets=DEFAULT_TARGETS,
    checkpoint_rank=lambda tensors: next((t.shape[0] for k, t in tensors.items()
                                          if k in ("oft_R", "oft_embedding_R")), ""),
)
