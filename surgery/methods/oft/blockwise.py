"""Multiply by a block-diagonal matrix without building it: x (N, n_blocks, b) -> x_j @ R_j for every block j.

One batched matmul over the blocks, reading x in place (the (n_blocks, N, b) view of a contiguous (N, n*b)
tensor is a valid strided batch), then one copy into the (N, n*b) layout the next layer reads. Training runs
it as one autograd node (`BlockRotate`) whose backward is two more such matmuls:

    grad_x_j = grad_j @ R_j^T          grad_R_j = x_j^T @ grad_j       (summed over blocks when R is shared)

A shared block (block_share, R: (1, b, b)) is one plain matmul over (N * n_blocks, b).
"""
from __future__ import annotations

import torch


def rotate(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """out[n, j] = x[n, j] @ blocks[j] (blocks[0] for every j when one block is shared); x (N, n_blocks, b)."""
    n, n_blocks, size = x.shape
    if blocks.shape[0] == 1:
        return (x.reshape(n * n_blocks, size) @ blocks[0]).view(n, n_blocks, size)
    # bmm into its own contiguous (n_blocks, N, b) result, then one copy into (N, n_blocks, b): a strided out=
    # would run the blocks one by one on a single thread (measured 15% slower with 2 threads)
    return torch.bmm(x.transpose(0, 1), blocks).transpose(0, 1).contiguous()


def blocks_grad(x: torch.Tensor, grad: torch.Tensor, shared: bool) -> torch.Tensor:
    """d(loss)/d(blocks) of rotate(x, blocks) given d(loss)/d(out): x_j^T @ grad_j, (n_blocks or 1, b, b)."""
    size = x.shape[-1]
    if shared:
        return (x.reshape(-1, size).T @ grad.reshape(-1, size)).unsqueeze(0)
    return torch.bmm(x.permute(1, 2, 0), grad.transpose(0, 1))


class BlockRotate(torch.autograd.Function):
    """rotate(x, blocks) as one autograd node (checked with gradcheck in float64)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, blocks)
        return rotate(x, blocks)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, blocks = ctx.saved_tensors
        grad_x = rotate(grad, blocks.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_blocks = None
        if ctx.needs_input_grad[1]:
            grad_blocks = blocks_grad(x, grad, shared=blocks.shape[0] == 1 and x.shape[1] > 1)
        return grad_x, grad_blocks


def rotate_features(x: torch.Tensor, blocks: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """x (..., n_blocks * b) times blockdiag(blocks): each run of b features times its block."""
    shape = x.shape
    x3 = x.reshape(-1, n_blocks, blocks.shape[-1])
    if torch.is_grad_enabled() and (x.requires_grad or blocks.requires_grad):
        return BlockRotate.apply(x3, blocks).view(shape)
    return rotate(x3, blocks).view(shape)
