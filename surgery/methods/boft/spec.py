"""BOFT's registry entry: nn.Linear and nn.Conv2d (PEFT's two layer types), each rewrite's block layout, its cost.

Butterfly factors: PEFT 0.21.2 builds boft_n_butterfly_factor > 1 only through its fbd_cuda CUDA extension;
without it (on CPU, or wherever the extension does not compile) it warns and uses ONE factor, and saves R as
(1, D, b, b) under a config that still says n. surgery builds the n factors the config asks for (what PEFT does
where its extension runs), on any device; when it loads a checkpoint, R's saved shape decides, so adapters
PEFT trained either way load with their own factor count (the plan says so when it differs from the config).
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ...config.enums import PeftType
from ...errors import UnsupportedLayerError
from ...graph.kinds import in_out_features
from ..fan_in_fan_out import settle_fan_in_fan_out
from ..default_targets import LORA_FAMILY
from ..spec import Handler, MethodSpec, RewriteSite
from .blocks import layout, problem
from .config import BOFTConfig
from .conv import Conv2d
from .linear import Linear
from .model import BOFTModel

DEFAULT_TARGETS = LORA_FAMILY   # PEFT's table for this method (methods/default_targets.py)

FACTOR_NOTE = ("boft_n_butterfly_factor = {n} but the checkpoint's boft_R holds {saved} factor(s) (PEFT builds more "
               "than one only with its fbd_cuda CUDA extension): loading the {saved} it holds")
CPU_PEFT_NOTE = ("boft_n_butterfly_factor = {n}: PEFT 0.21.2 without its fbd_cuda CUDA extension (on CPU) would use "
                 "one factor; surgery builds the {n} asked for, as PEFT does where the extension runs")


def rotated_features(base: nn.Module) -> int:
    """F, the size the rotation spans: in_features (Linear), in_channels * k * k (Conv2d, as PEFT flattens)."""
    if isinstance(base, nn.Conv2d):
        return base.in_channels * base.kernel_size[0] * base.kernel_size[0]
    return base.in_features


def _linear_refuses(base: nn.Module, config, fqn: str) -> Optional[str]:
    found = problem(base.in_features, config, f"in_features = {base.in_features}")
    return f"target module {fqn!r} (Linear): {found}" if found else None


def _conv_refuses(base: nn.Module, config, fqn: str) -> Optional[str]:
    where = f"target module {fqn!r} (Conv2d)"
    if base.groups != 1:
        return UnsupportedLayerError(f"BOFT does not support Conv2d layers with groups > 1 ({where} has groups="
                                     f"{base.groups}): its rotation spans in_channels * k * k, which a grouped "
                                     f"weight does not have; exclude the module or use LoRA")
    # PEFT flattens the kernel as k*k and convolves with stride[0]/padding[0] and no dilation: anything else
    # would train a different layer than the one merge_and_unload writes, so it is refused
    geometry = {"kernel_size": base.kernel_size, "stride": base.stride, "padding": base.padding}
    uneven = [f"{k}={v!r}" for k, v in geometry.items() if isinstance(v, str) or len(set(v)) != 1]
    if uneven or tuple(base.dilation) != (1, 1) or base.padding_mode != "zeros":
        found = ", ".join(uneven + ([f"dilation={base.dilation}"] if tuple(base.dilation) != (1, 1) else [])
                          + ([f"padding_mode={base.padding_mode!r}"] if base.padding_mode != "zeros" else []))
        return (f"{where} has {found}; BOFT supports square kernels with the same stride and numeric padding on "
                f"both axes, dilation 1 and padding_mode 'zeros' (PEFT's forward ignores the rest). Exclude it "
                f"with exclude_modules")
    features = rotated_features(base)
    k = base.kernel_size[0]
    found = problem(features, config, f"in_channels * k * k = {base.in_channels} * {k} * {k} = {features}")
    return f"{where}: {found}" if found else None


HANDLERS = (
    Handler(lambda m: isinstance(m, nn.Linear), Linear, "torch.nn.Linear", refuses=_linear_refuses),
    Handler(lambda m: isinstance(m, nn.Conv2d), Conv2d, "torch.nn.Conv2d", refuses=_conv_refuses),
)


def rewrite_params(site: RewriteSite) -> dict:
    config = site.config
    factors = config.boft_n_butterfly_factor
    saved = site.saved.get("boft_R")
    if saved is not None and saved[0] != factors:
        site.note(FACTOR_NOTE.format(n=factors, saved=saved[0]))
        factors = saved[0]
    elif saved is None and factors > 1:
        site.note(CPU_PEFT_NOTE.format(n=factors))
    settle_fan_in_fan_out(site, conv1d=False)
    size, num = layout(rotated_features(site.base), config)
    return {"boft_block_size": size, "boft_block_num": num, "boft_n_butterfly_factor": factors}


def added_params(base: nn.Module, params: dict, config: BOFTConfig) -> int:
    """R (factors x blocks x b x b) and the per-output scale s."""
    size = params["boft_block_size"]
    return params["boft_n_butterfly_factor"] * params["boft_block_num"] * size * size + in_out_features(base)[1]


SPEC = MethodSpec(
    peft_type=PeftType.BOFT,
    config_cls=BOFTConfig,
    tuner_cls=BOFTModel,
    name="BOFT",
    handlers=HANDLERS,
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("block", "boft_block_size"), ("blocks", "boft_block_num"),
             ("factors", "boft_n_butterfly_factor")),
    default_targets=DEFAULT_TARGETS,
)
