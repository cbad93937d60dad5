"""OFT for nn.Conv2d: the rotated dimension is one kernel-sized input patch, in_channels x k x k.

PEFT 0.21.2 rotates the input before the frozen conv, in patch space, and its way back is kept exactly:

    patches = unfold(x, k, stride 1, no padding)        (B*Ho*Wo, C*k*k), entries ordered (C, kh, kw)
    rotated = patches BD
    x'      = fold(rotated laid out as (B, C, Ho, Wo, kh, kw) memory read as (B, C*k*k, Ho*Wo))
    y       = base_conv(x')

For 1x1 kernels this is exactly x rotated over its channels, and merging (W <- W BD^T on the (out, C*k*k)
weight) keeps the outputs. For k > 1 it is not: fold sums overlapping patches and the layout it is handed
mixes spatial and kernel positions, so the adapter is not the identity even at init and merge_and_unload
changes the outputs. That is PEFT's behaviour (adapters trained with it expect it), reproduced for
compatibility; the plan warns about it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .blockwise import rotate_features
from .layer import OFTLayer


def kernel_side(conv) -> int:
    return conv.kernel_size[0]


class Conv2d(OFTLayer):
    dim_name = "in_channels x kernel height x kernel width"

    @staticmethod
    def dim_of(base) -> int:
        return base.in_channels * kernel_side(base) ** 2

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.runs_base_only():
            return self.base_layer(x, *args, **kwargs)
        previous_dtype = x.dtype
        for rotation in self._active_rotations():
            x = self._rotate_patches(x.to(rotation.weight.dtype), rotation)
        return self.base_layer(x.to(previous_dtype), *args, **kwargs).to(previous_dtype)

    def _rotate_patches(self, x: torch.Tensor, rotation) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"OFT on {self._layer_name()} needs a batched (B, C, H, W) input; got shape "
                             f"{tuple(x.shape)}")
        k = kernel_side(self.get_base_layer())
        blocks = rotation.blocks()
        if k == 1:   # the patch is one pixel's channels: rotate them in place of unfold/fold
            rotated = rotate_features(x.permute(0, 2, 3, 1), blocks, rotation.r)
            return rotated.permute(0, 3, 1, 2).contiguous()
        batch, channels, height, width = x.shape
        out_h, out_w = height - k + 1, width - k + 1
        patches = x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * k * k)
        rotated = rotate_features(patches, blocks, rotation.r)
        laid_out = rotated.view(batch, out_h, out_w, channels, k, k).permute(0, 3, 1, 2, 4, 5).contiguous()
        return F.fold(laid_out.view(batch, channels * k * k, out_h * out_w), output_size=(height, width),
                      kernel_size=(k, k), stride=(1, 1))
