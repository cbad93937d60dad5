"""PromptEncoder: P-tuning's virtual tokens, reparameterised by a small network while training.

    MLP:   embedding (T x d) ─► Linear(d, h) ─ ReLU ─ Linear(h, h) ─ ReLU ─ Linear(h, d)
    LSTM:  embedding (T x d) ─► biLSTM(d -> h, encoder_num_layers) ─► Linear(2h, 2h) ─ ReLU ─ Linear(2h, d)

The network exists only while training (inference_mode False). A saved adapter holds its output over
all T tokens (PEFT's `prompt_embeddings`), which an inference-mode encoder keeps in `embedding` and
returns as is.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .config import PromptEncoderReparameterizationType as Reparam

logger = logging.getLogger(__name__)

MLP_HIDDEN_LAYERS = 2  # fixed, as PEFT (encoder_num_layers only shapes the LSTM)


class PromptEncoder(nn.Module):
    """PEFT's class and attribute names: `embedding`, `mlp_head`, `lstm_head`."""

    def __init__(self, config):
        super().__init__()
        self.token_dim = config.token_dim
        self.input_size = self.output_size = config.token_dim
        self.hidden_size = config.encoder_hidden_size or config.token_dim
        self.total_virtual_tokens = config.num_virtual_tokens * (config.num_transformer_submodules or 1)
        self.encoder_type = Reparam(config.encoder_reparameterization_type)
        self.embedding = nn.Embedding(self.total_virtual_tokens, self.token_dim)
        if config.inference_mode:
            return
        h = self.hidden_size
        if self.encoder_type == Reparam.LSTM:
            self.lstm_head = nn.LSTM(input_size=self.input_size, hidden_size=h, num_layers=config.encoder_num_layers,
                                     dropout=config.encoder_dropout, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.ReLU(), nn.Linear(2 * h, self.output_size))
        else:
            if config.encoder_num_layers != MLP_HIDDEN_LAYERS:
                logger.warning("P-tuning MLP: encoder_num_layers = %s is ignored; the MLP always has %d hidden "
                               "layers (as PEFT)", config.encoder_num_layers, MLP_HIDDEN_LAYERS)
            self.mlp_head = nn.Sequential(nn.Linear(self.input_size, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                          nn.Linear(h, self.output_size))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        embeds = self.embedding(indices)
        if hasattr(self, "lstm_head"):
            return self.mlp_head(self.lstm_head(embeds)[0])
        if hasattr(self, "mlp_head"):
            return self.mlp_head(embeds)
        return embeds  # inference mode: the embedding already holds the trained encoder's output
