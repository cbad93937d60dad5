"""HRA's registry entry: nn.Linear and nn.Conv2d (PEFT's two), r vectors of length n per layer (n = in, or
in*k*k for a Conv2d), and the convolutions refused because PEFT's HRA would not compute them as the base does."""
from __future__ import annotations

from torch import nn

from ...config.enums import PeftType
from ...graph.kinds import in_out_features
from ..spec import Handler, MethodSpec, RewriteSite
from ..default_targets import LORA_FAMILY
from .config import HRAConfig
from .conv import HRAConv2d
from .linear import HRALinear
from .model import HRAModel

DEFAULT_TARGETS = LORA_FAMILY   # PEFT's table for HRA (methods/default_targets.py)


def _conv_refuses(base: nn.Conv2d, config, fqn: str):
    """Why PEFT's HRA cannot reproduce this Conv2d (its forward is conv2d(x, W H, b, stride[0], padding[0]) with a
    hra_u of in*k[0]*k[0] rows), or None."""
    padding = base.padding
    problems = [
        (base.groups != 1, f"groups={base.groups} (PEFT's HRA refuses grouped convolutions)"),
        (base.kernel_size[0] != base.kernel_size[1], f"a non-square kernel {tuple(base.kernel_size)}"),
        (tuple(base.dilation) != (1, 1), f"dilation={tuple(base.dilation)} (PEFT's HRA drops it)"),
        (isinstance(padding, str) or padding[0] != padding[1], f"padding={padding!r} (PEFT's HRA applies the "
                                                               f"first value to both axes)"),
        (base.stride[0] != base.stride[1], f"stride={tuple(base.stride)} (PEFT's HRA applies the first value to "
                                           f"both axes)"),
        (base.padding_mode != "zeros", f"padding_mode={base.padding_mode!r} (PEFT's HRA pads with zeros)"),
    ]
    found = [text for bad, text in problems if bad]
    if found:
        return (f"target module {fqn!r} is a Conv2d with {', '.join(found)}; HRA supports square kernels with "
                f"groups=1, no dilation and the same zero padding and stride on both axes. Exclude it with "
                f"exclude_modules")
    return None


HANDLERS = (
    Handler(lambda m: isinstance(m, nn.Linear), HRALinear, "torch.nn.Linear"),
    Handler(lambda m: isinstance(m, nn.Conv2d), HRAConv2d, "torch.nn.Conv2d", refuses=_conv_refuses),
)


def rewrite_params(site: RewriteSite) -> dict:
    config = site.config
    if config.init_weights and config.r % 2:
        site.note(f"HRA r={config.r} is odd: the symmetric init needs an even r, so hra_u starts random and the "
                  f"adapter does not start as the identity (PEFT warns the same)")
    elif config.init_weights and config.apply_GS:
        site.note("apply_GS=True with the symmetric init: Gram-Schmidt turns every repeated vector into rounding "
                  "noise, so the adapter does not start as the identity (PEFT's behaviour, reproduced)")
    return {"r": config.r, "apply_GS": bool(config.apply_GS)}


def added_params(base: nn.Module, params: dict, config: HRAConfig) -> int:
    """hra_u: (in, r) for a Linear, (in * k * k, r) for a Conv2d."""
    rows = in_out_features(base)[0]
    if isinstance(base, nn.Conv2d):
        rows *= base.kernel_size[0] * base.kernel_size[0]
    return rows * params["r"]


SPEC = MethodSpec(
    peft_type=PeftType.HRA,
    config_cls=HRAConfig,
    tuner_cls=HRAModel,
    name="HRA",
    handlers=HANDLERS,
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("r", "r"),),
    flags=(("GS", "apply_GS"),),
    default_targets=DEFAULT_TARGETS,
    checkpoint_rank=lambda tensors: next((t.shape[1] for k, t in tensors.items() if k == "hra_u"), ""),
)
