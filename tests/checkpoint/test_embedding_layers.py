"""save_embedding_layers (True / False / "auto", PEFT's default) against real PEFT: the same keys and values
in the saved file, and files that load across the two libraries with the same outputs (exact: the weights are
copied, not recomputed)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from safetensors.torch import load_file

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff, peft_model, perturb_adapters, run


def _saved(model, directory, **kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(directory), **kwargs)
    return load_file(str(directory / "adapter_model.safetensors"))


def _pair(base, **config):
    theirs = peft_model(base, **config)
    perturb_adapters(theirs)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**config))
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _same_files(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("targets", [["embed_tokens", "q_proj"], ["lm_head", "v_proj"], r".*embed_tokens"])
def test_auto_saves_targeted_embeddings_as_peft(targets, tmp_path):
    ours, theirs = _pair(tm.tiny_llama(), target_modules=targets, r=2)
    mine, peft_file = _saved(ours, tmp_path / "ours"), _saved(theirs, tmp_path / "theirs")
    assert any(k.endswith(".base_layer.weight") for k in mine)
    _same_files(mine, peft_file)


@pytest.mark.parametrize("builder", [tm.tiny_llama, tm.tiny_gpt2], ids=["llama", "gpt2_tied"])
def test_explicit_true_saves_untargeted_embeddings_as_peft(builder, tmp_path):
    targets = ["q_proj"] if builder is tm.tiny_llama else ["c_attn"]
    ours, theirs = _pair(builder(), target_modules=targets, r=2)
    mine = _saved(ours, tmp_path / "ours", save_embedding_layers=True)
    _same_files(mine, _saved(theirs, tmp_path / "theirs", save_embedding_layers=True))
    assert any(k.endswith("embed_tokens.weight") or k.endswith("wte.weight") for k in mine)
    # and without: only the adapter
    assert not any("embed" in k or "wte" in k for k in _saved(ours, tmp_path / "plain", save_embedding_layers=False))


def test_auto_saves_resized_embeddings_and_they_reload_in_both_libraries(tmp_path):
    import peft

    base_dir = tmp_path / "base"
    tm.tiny_llama().save_pretrained(str(base_dir))       # config.json: vocab_size 128

    def resized_base():
        model = type(tm.tiny_llama()).from_pretrained(str(base_dir))
        model.resize_token_embeddings(130)
        return model

    config = dict(target_modules=["q_proj", "v_proj"], r=2, base_model_name_or_path=str(base_dir))
    ours, theirs = _pair(resized_base(), **config)
    with torch.no_grad():   # fine-tuned rows for the two new tokens, as after training them
        for model in (ours, theirs):
            weight = model.get_input_embeddings().weight
            weight[128:] = torch.linspace(-1, 1, 2 * weight.shape[1]).view(2, -1)
    mine = _saved(ours, tmp_path / "ours")
    _same_files(mine, _saved(theirs, tmp_path / "theirs"))
    assert "base_model.model.model.embed_tokens.weight" in mine
    inputs = {"input_ids": torch.tensor([[1, 128, 129, 5]])}
    want = run(theirs.eval(), "llama", inputs)
    reloaded = surgery.PeftModel.from_pretrained(resized_base(), str(tmp_path / "ours"))
    assert max_diff(run(reloaded, "llama", inputs), want) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_reloaded = peft.PeftModel.from_pretrained(resized_base(), str(tmp_path / "ours"))
    assert max_diff(run(theirs_reloaded, "llama", inputs), want) == 0


def test_auto_leaves_unchanged_untargeted_embeddings_out(tmp_path):
    ours, theirs = _pair(tm.tiny_llama(), target_modules=["q_proj"], r=2)
    mine = _saved(ours, tmp_path / "ours")
    _same_files(mine, _saved(theirs, tmp_path / "theirs"))
    assert not any("embed_tokens" in k or "lm_head" in k for k in mine)


def test_bad_value_names_the_argument(tmp_path):
    ours, _ = _pair(tm.tiny_llama(), target_modules=["q_proj"], r=2)
    with pytest.raises(ValueError, match="save_embedding_layers = 'yes'"):
        ours.save_pretrained(str(tmp_path), save_embedding_layers="yes")
