"""Tiny random-weight vision and speech models for the model-family tests (tests/models/).

Every builder is seeded and deterministic, like tests/support/tiny_models.py: the same call gives the same
weights in any process. Inputs are seeded too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTConfig, ViTForImageClassification, WhisperConfig, WhisperForConditionalGeneration

from .tiny_models import _seeded

IMAGE_SIZE, PATCH_SIZE, CHANNELS, NUM_LABELS = 32, 8, 3, 5


def images(batch: int = 2, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=g)


def class_labels(batch: int = 2, seed: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, NUM_LABELS, (batch,), generator=g)


# -- transformers ViT image classifier -----------------------------------------------------------------
def vit_config(**overrides) -> ViTConfig:
    values = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=CHANNELS, num_labels=NUM_LABELS)
    values.update(overrides)
    return ViTConfig(**values)


def tiny_vit(seed: int = 0, **overrides) -> ViTForImageClassification:
    return _seeded(lambda: ViTForImageClassification(vit_config(**overrides)), seed)


# -- timm's VisionTransformer layout -------------------------------------------------------------------
class PatchEmbed(nn.Module):
    def __init__(self, image_size: int, patch_size: int, channels: int, dim: int):
        super().__init__()
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))   # (b, patches, dim)


class Attention(nn.Module):
    """timm's Attention: q, k and v come from ONE fused Linear `qkv` (dim -> 3*dim)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj_drop(self.proj(self.norm(x.transpose(1, 2).reshape(b, n, c))))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1, self.drop_path1 = nn.Identity(), nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2, self.drop_path2 = nn.Identity(), nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class TimmLayoutViT(nn.Module):
    """A stand-in for ``timm.models.vision_transformer.VisionTransformer`` (global_pool="token").

    timm cannot be installed here: it needs torchvision, and no torchvision wheel works with this machine's CPU
    torch 2.13 (PyPI's fails with "operator torchvision::nms does not exist"). What LoRA and PEFT see of a model
    is its module tree, so this reproduces timm's module layout and names exactly (patch_embed.proj as a
    Conv2d, cls_token and pos_embed as Parameters, blocks.N.norm1, blocks.N.attn.qkv as ONE Linear(dim, 3*dim),
    blocks.N.attn.proj, blocks.N.norm2, blocks.N.mlp.fc1/act/fc2, norm, head) and its forward math, including
    the modules that are no-ops at timm's defaults (Identity q_norm/k_norm/ls1/drop_path1/fc_norm/...,
    zero-rate Dropouts), in timm's registration order, so target patterns match what they would match in timm.
    """

    def __init__(self, image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE, in_chans: int = CHANNELS,
                 num_classes: int = NUM_LABELS, embed_dim: int = 32, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: float = 2.0):
        super().__init__()
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, embed_dim) * 0.02)
        self.pos_drop = nn.Dropout(0.0)
        self.patch_drop, self.norm_pre = nn.Identity(), nn.Identity()
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.Identity()
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(self.norm_pre(self.patch_drop(self.pos_drop(x)))))
        return self.head(self.head_drop(self.fc_norm(x[:, 0])))   # the class token


def tiny_timm_vit(seed: int = 0, **overrides) -> TimmLayoutViT:
    return _seeded(lambda: TimmLayoutViT(**overrides), seed)


# -- Whisper encoder-decoder ---------------------------------------------------------------------------
def whisper_config(**overrides) -> WhisperConfig:
    values = dict(vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
                  max_source_positions=16, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2, decoder_start_token_id=3)
    values.update(overrides)
    return WhisperConfig(**values)


def tiny_whisper(seed: int = 0, **overrides) -> WhisperForConditionalGeneration:
    return _seeded(lambda: WhisperForConditionalGeneration(whisper_config(**overrides)), seed)


def input_features(config: WhisperConfig, batch: int = 2, seed: int = 5) -> torch.Tensor:
    """Log-mel-like features: the encoder's two convolutions (the second strided) need 2 * max_source_positions."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.num_mel_bins, 2 * config.max_source_positions, generator=g)


def decoder_tokens(config: WhisperConfig, batch: int = 2, seq: int = 6, seed: int = 6) -> torch.Tensor:
    """Ordinary tokens (above the special ids 0-3)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, config.vocab_size, (batch, seq), generator=g)
