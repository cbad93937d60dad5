"""Shared by the tests of LoRA's structural options (trainable_token_indices, ensure_weight_tying,
layer_replication): the same config on identical tiny models with surgery and with peft, "trained" alike, and
each library's saved adapter loaded by the other.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import peft
import torch
from safetensors.torch import load_file

import surgery
from tests.support import tiny_models as tm

TOL = 1e-6   # logits of float32 tiny models: the same arithmetic, up to summation order
INPUTS = tm.token_batch()


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def pair(builder, **config):
    """(surgery model, peft model) of one LoraConfig on two identical seeded base models."""
    ours = quiet(surgery.get_peft_model, builder(), surgery.LoraConfig(**config))
    theirs = quiet(peft.get_peft_model, builder(), peft.LoraConfig(**config))
    return ours, theirs


def train_like(model, seed: int = 7, std: float = 0.2) -> None:
    """Every trainable tensor moved by seeded noise (a stand-in for training: non-identity adapters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


def copy_state(src, dst) -> None:
    """dst takes src's whole state (the same keys in both libraries: strict)."""
    with torch.no_grad():
        dst.load_state_dict(src.state_dict(), strict=True)


def logits(model, inputs=None) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(inputs if inputs is not None else INPUTS).logits


def saved(model, directory) -> dict:
    quiet(model.save_pretrained, str(directory))
    return load_file(str(directory / "adapter_model.safetensors"))


def printed(model) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        model.print_trainable_parameters()
    return buf.getvalue().strip()


def assert_trained_parity(ours, theirs, builder, tmp_path) -> torch.Tensor:
    """Train ours a little, copy into theirs: equal logits, files, and each loading the other's (TOL).
    Returns the logits."""
    train_like(ours)
    copy_state(ours, theirs)
    expected = logits(theirs)
    torch.testing.assert_close(logits(ours), expected, atol=TOL, rtol=TOL)
    assert_same_files(ours, theirs, tmp_path)
    ours_loaded, theirs_loaded = cross_loaded(ours, theirs, builder, tmp_path)
    torch.testing.assert_close(logits(ours_loaded), expected, atol=TOL, rtol=TOL)
    torch.testing.assert_close(logits(theirs_loaded), logits(ours), atol=TOL, rtol=TOL)
    return expected


def cross_loaded(ours, theirs, builder, tmp_path):
    """(surgery loading peft's files, peft loading surgery's files), after both were trained alike."""
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    quiet(ours.save_pretrained, str(ours_dir))
    quiet(theirs.save_pretrained, str(theirs_dir))
    ours_from_theirs = quiet(surgery.PeftModel.from_pretrained, builder(), str(theirs_dir))
    theirs_from_ours = quiet(peft.PeftModel.from_pretrained, builder(), str(ours_dir))
    return ours_from_theirs, theirs_from_ours


def assert_same_files(ours, theirs, tmp_path) -> None:
    """Both libraries save the same keys, with the same tensors."""
    mine, their = saved(ours, tmp_path / "files_ours"), saved(theirs, tmp_path / "files_theirs")
    assert sorted(mine) == sorted(their)
    for key in mine:
        assert torch.equal(mine[key], their[key]), key
