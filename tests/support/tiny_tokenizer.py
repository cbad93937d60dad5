"""A character-level tokenizer built in code (no download), for the TRL tests: ids fit the tiny models' vocab (128)."""
from __future__ import annotations

import string

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
CHARACTERS = list(string.ascii_lowercase + string.digits + " .,!?'-:")


def tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")
