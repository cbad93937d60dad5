"""Prompt-learning configs: prompt tuning, P-tuning (PromptEncoder) and prefix tuning, with PEFT's fields.

Architecture fields left unset (token_dim, num_layers, num_attention_heads, num_transformer_submodules,
encoder_hidden_size) are filled from the model's config when the adapter is planned; the saved
adapter_config.json holds the resolved values, as PEFT's does.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Union

from ...errors import ConfigError
from ...config.base import PeftConfig
from ...config.enums import PeftType
from ...config.validation import check_range

logger = logging.getLogger(__name__)


class PromptTuningInit(str, enum.Enum):
    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    RANDOM = "RANDOM"


class PromptEncoderReparameterizationType(str, enum.Enum):
    MLP = "MLP"
    LSTM = "LSTM"


@dataclass
class PromptLearningConfig(PeftConfig):
    """Fields shared by the prompt-learning methods (PEFT's names and defaults)."""

    num_virtual_tokens: Optional[int] = field(default=None, metadata={"help": "Number of virtual tokens."})
    token_dim: Optional[int] = field(default=None, metadata={"help": "Hidden size of the base model's embeddings."})
    num_transformer_submodules: Optional[int] = field(
        default=None, metadata={"help": "1, or 2 for encoder-decoder models (default from task_type)."})
    num_attention_heads: Optional[int] = field(default=None, metadata={"help": "Attention heads of the model."})
    num_layers: Optional[int] = field(default=None, metadata={"help": "Transformer layers of the model."})
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. classifier)."})

    @property
    def is_prompt_learning(self) -> bool:
        return True

    @property
    def total_virtual_tokens(self) -> int:
        return (self.num_virtual_tokens or 0) * (self.num_transformer_submodules or 1)

    def validate(self) -> None:
        name = type(self).__name__
        for key in ("num_virtual_tokens", "token_dim", "num_attention_heads", "num_layers"):
            check_range(name, key, getattr(self, key), low=0, low_open=True)
        if self.num_transformer_submodules not in (None, 1, 2):
            raise ConfigError(f"{name}.num_transformer_submodules = {self.num_transformer_submodules!r} is not "
                              f"valid; use 1 (one transformer stack) or 2 (encoder-decoder)")


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt tuning: num_virtual_tokens trainable embeddings prepended to the input embeddings."""

    prompt_tuning_init: Union[PromptTuningInit, str] = field(
        default=PromptTuningInit.RANDOM, metadata={"help": "RANDOM, SAMPLE_VOCAB (random vocab rows) or TEXT."})
    prompt_tuning_init_text: Optional[str] = field(
        default=None, metadata={"help": "The text whose token embeddings start the prompt (TEXT only)."})
    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Local path or Hub id of the tokenizer for the init text (TEXT only)."})
    tokenizer_kwargs: Optional[dict] = field(
        default=None, metadata={"help": "Keyword arguments for AutoTokenizer.from_pretrained (TEXT only)."})

    _method = PeftType.PROMPT_TUNING

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        self.prompt_tuning_init = _member(PromptTuningInit, self.prompt_tuning_init, f"{name}.prompt_tuning_init")
        text_init = self.prompt_tuning_init == PromptTuningInit.TEXT
        if text_init and not self.tokenizer_name_or_path:
            raise ConfigError(f"{name}.prompt_tuning_init = 'TEXT' needs tokenizer_name_or_path (a local path or "
                              f"Hub id); got {self.tokenizer_name_or_path!r}")
        if text_init and self.prompt_tuning_init_text is None:
            raise ConfigError(f"{name}.prompt_tuning_init = 'TEXT' needs prompt_tuning_init_text")
        if text_init and not self.prompt_tuning_init_text.strip():
            raise ConfigError(f"{name}.prompt_tuning_init_text is empty; give the text to start the prompt from")
        if self.tokenizer_kwargs and not text_init:
            raise ConfigError(f"{name}.tokenizer_kwargs is only used with prompt_tuning_init = 'TEXT'")
        if self.tokenizer_kwargs and "trust_remote_code" in self.tokenizer_kwargs:
            # As PEFT: a saved config must never make loading run code from the Hub.
            logger.warning("%s.tokenizer_kwargs: dropping trust_remote_code (never honoured)", name)
            self.tokenizer_kwargs = {k: v for k, v in self.tokenizer_kwargs.items() if k != "trust_remote_code"}


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """P-tuning: virtual-token embeddings reparameterised by an MLP or a bidirectional LSTM + MLP."""

    encoder_reparameterization_type: Union[str, PromptEncoderReparameterizationType] = field(
        default=PromptEncoderReparameterizationType.MLP, metadata={"help": "MLP or LSTM."})
    encoder_hidden_size: Optional[int] = field(
        default=None, metadata={"help": "Hidden size of the prompt encoder (default: token_dim)."})
    encoder_num_layers: int = field(default=2, metadata={"help": "LSTM layers (the MLP always has 2 hidden)."})
    encoder_dropout: float = field(default=0.0, metadata={"help": "Dropout between LSTM layers."})

    _method = PeftType.P_TUNING

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        self.encoder_reparameterization_type = _member(
            PromptEncoderReparameterizationType, self.encoder_reparameterization_type,
            f"{name}.encoder_reparameterization_type")
        check_range(name, "encoder_hidden_size", self.encoder_hidden_size, low=0, low_open=True)
        check_range(name, "encoder_num_layers", self.encoder_num_layers, low=1)
        check_range(name, "encoder_dropout", self.encoder_dropout, low=0.0, high=1.0, what=" (a probability)")


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning: trainable key/value states prepended in every attention layer."""

    init_weights: Optional[Literal["zero"]] = field(
        default=None, metadata={"help": "None: random; 'zero': the prefix starts as zeros."})
    encoder_hidden_size: Optional[int] = field(
        default=None, metadata={"help": "Hidden size of the projection MLP (default: token_dim)."})
    prefix_projection: bool = field(default=False, metadata={"help": "Reparameterise the prefix by a 2-layer MLP."})
    # Accepted as the API reference's examples write it (PEFT 0.21 no longer does). When given, it is called on
    # the legacy tuple of per-layer prefix tensors, shape (2 * num_transformer_submodules, batch, heads,
    # num_virtual_tokens, head_dim), before injection. Run-time only: never saved.
    postprocess_past_key_value_function: Optional[Callable] = field(
        default=None, compare=False, metadata={"help": "Optional fn(per-layer prefix tuple) -> same structure."})

    _method = PeftType.PREFIX_TUNING

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        check_range(name, "encoder_hidden_size", self.encoder_hidden_size, low=0, low_open=True)
        if self.token_dim and self.num_attention_heads and self.token_dim % self.num_attention_heads:
            raise ConfigError(f"{name}.token_dim = {self.token_dim} is not a multiple of num_attention_heads = "
                              f"{self.num_attention_heads}; the prefix is split into heads of equal size")

    def to_dict(self):
        out = super().to_dict()
        out.pop("postprocess_past_key_value_function", None)  # a callable: run-time only, never saved
        return out


def _member(kind: type[enum.Enum], value, where: str):
    try:
        return kind(value)
    except (ValueError, TypeError):
        valid = ", ".join(m.value for m in kind)
        raise ConfigError(f"{where} = {value!r} is not valid; valid values: {valid}") from None
