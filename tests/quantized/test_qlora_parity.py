"""QLoRA against the oracle: LoRA (and DoRA) over bitsandbytes 4-bit (nf4, fp4) and 8-bit bases on the CPU.

For the same adapter tensors surgery and PEFT give equal logits, equal training losses, equal merged weights and
checkpoints that load both ways. Tolerances: 1e-5 where both run the same bitsandbytes kernels (equal in
practice); 1e-4 for the dequantized merge against the adapted model, both exact float32 arithmetic.
"""
from __future__ import annotations

import warnings

import peft
import pytest
import torch

import surgery
from surgery.quantized import backend_of
from surgery.quantized.dequantize import dequantize_modules
from tests.support import tiny_models as tm
from tests.support.quantized_models import exact_logits, quantized, train_side_by_side, twins

TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}
CASES = [("nf4", "llama"), ("fp4", "llama"), ("int8", "llama"), ("nf4", "gpt2"), ("int8", "gpt2")]
IDS = [f"{kind}-{family}" for kind, family in CASES]


def _pair(kind, family, **lora):
    """(surgery model, peft model) on equal quantized bases with equal (random, non-zero) adapter tensors."""
    kwargs = dict(r=4, lora_alpha=8, target_modules=TARGETS[family], init_lora_weights=False, **lora)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bases = quantized(kind, family), quantized(kind, family)
    return twins(bases, "LoraConfig", **kwargs)


def _base_state(model):
    """Every tensor of the model that is not an adapter's, as bytes (quantized weights included)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


@pytest.mark.parametrize("kind, family", CASES, ids=IDS)
def test_wrapped_layers_counts_and_logits_equal_peft(kind, family, capsys):
    ours, theirs = _pair(kind, family)
    layer_cls = {"int8": "Linear8bitLt"}.get(kind, "Linear4bit")
    wrapped = {type(m).__name__ for _, m in ours.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {layer_cls}
    assert repr(ours).count(f"lora.{layer_cls}(") == repr(theirs).count(f"lora.{layer_cls}(") > 0
    ours.print_trainable_parameters()
    theirs.print_trainable_parameters()
    line_ours, line_theirs = capsys.readouterr().out.strip().splitlines()
    assert line_ours == line_theirs   # PEFT counts a 4-bit weight's unpacked values: so do we
    ids = tm.token_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("kind, family", CASES, ids=IDS)
def test_three_training_steps_equal_peft_and_only_adapters_change(kind, family, use_dora):
    ours, theirs = _pair(kind, family, use_dora=use_dora, lora_dropout=0.0)
    if kind == "int8" and use_dora:
        theirs = _dense_peft_twin(ours, kind, family, use_dora=True)
    before = _base_state(ours)
    for ours_loss, their_loss in train_side_by_side((ours, theirs), tm.token_batch(batch=4)):
        assert ours_loss == pytest.approx(their_loss, abs=1e-5)
    after = _base_state(ours)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    trained = surgery.get_peft_model_state_dict(ours)
    # against the dense twin the base products differ in the last bits, which AdamW's first steps amplify
    atol = 1e-4 if kind == "int8" and use_dora else 1e-5
    for key, value in peft.get_peft_model_state_dict(theirs).items():
        torch.testing.assert_close(trained[key], value, atol=atol, rtol=0)


@pytest.mark.parametrize("kind, family", CASES, ids=IDS)
def test_checkpoints_load_both_ways(kind, family, tmp_path):
    ours, theirs = _pair(kind, family)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    ids = tm.token_batch()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        expected = ours(input_ids=ids).logits
        by_peft = peft.PeftModel.from_pretrained(quantized(kind, family), str(tmp_path / "ours"))
        by_us = surgery.PeftModel.from_pretrained(quantized(kind, family), str(tmp_path / "theirs"))
        torch.testing.assert_close(by_peft(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(by_us(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("kind, family", CASES, ids=IDS)
def test_merge_and_unload_stores_what_peft_stores_and_warns_with_the_rounding(kind, family, use_dora):
    ours, theirs = _pair(kind, family, use_dora=use_dora)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged_ours = ours.merge_and_unload()
        merged_theirs = theirs.merge_and_unload()
    ours_state, theirs_state = merged_ours.state_dict(), merged_theirs.state_dict()
    assert ours_state.keys() == theirs_state.keys()
    for key in ours_state:   # requantized with the same settings: the same codes and scales
        a, b = ours_state[key], theirs_state[key]
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        elif a.dtype == torch.int8:   # DoRA's float arithmetic runs in another order: a value on a rounding
            off = (a.int() - b.int()).abs()   # boundary may land one int8 code away
            assert off.max() <= 1 and (off > 0).float().mean() < 0.01, key
        else:
            assert torch.equal(a, b), key
    ours_warning = [str(w.message) for w in caught if "quantized base layer" in str(w.message)]
    assert len(ours_warning) == 1 and "max abs error" in ours_warning[0] and "dequantize=True" in ours_warning[0]


def _dense_peft_twin(ours, kind, family, **lora):
    """PEFT's adapter (ours' tensors) on the dequantized base: the float reference where PEFT's own quantized
    path fails (DoRA on 8-bit in training: its dequantize drops the int8 scales on CPU, 'NoneType' ... SCB)."""
    base = quantized(kind, family)
    dequantize_modules(base)
    kwargs = dict(r=4, lora_alpha=8, target_modules=TARGETS[family], init_lora_weights=False, **lora)
    twin = peft.get_peft_model(base, peft.LoraConfig(**kwargs))
    peft.set_peft_model_state_dict(twin, surgery.get_peft_model_state_dict(ours))
    return twin


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("kind, family", CASES, ids=IDS)
def test_dequantized_merge_equals_the_adapted_model(kind, family, use_dora):
    ours, _ = _pair(kind, family, use_dora=use_dora)
    ids = tm.token_batch()
    expected = exact_logits(ours, ids)
    merged = ours.merge_and_unload(dequantize=True)
    assert not any(backend_of(m) for m in merged.modules())
    assert getattr(merged.config, "quantization_config", None) is None
    assert not getattr(merged, "is_loaded_in_4bit", False) and not getattr(merged, "is_loaded_in_8bit", False)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=0)


def test_a_merge_after_generation_reads_the_true_4bit_weight():
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight on its first inference forward; PEFT then
    merges into the repacked bytes. Ours unpacks first: the merged weights are those of a merge without that
    forward, within the repacking's rounding of the block scales (bitsandbytes' inverse is best-effort)."""
    ours, _ = _pair("nf4", "llama")
    fresh, _ = _pair("nf4", "llama")
    with torch.no_grad():
        ours(input_ids=tm.token_batch())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = ours.merge_and_unload(), fresh.merge_and_unload()
    pairs = [(x, y) for x, y in zip(a.modules(), b.modules()) if backend_of(x) is not None]
    assert len(pairs) == 14
    for x, y in pairs:
        dense_a, dense_b = backend_of(x).dequantize(x), backend_of(y).dequantize(y)
        # the scales come back rounded to bf16 (~0.4%), and a rare code lands one step away; merging into the
        # repacked bytes instead (PEFT) gives an unrelated matrix (relative error ~100%)
        assert (dense_a - dense_b).norm() <= 0.02 * dense_b.norm()


def test_unmerge_restores_the_adapter_path():
    ours, _ = _pair("nf4", "llama")
    ids = tm.token_batch()
    expected = exact_logits(ours, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.merge_adapter()
        ours.unmerge_adapter()
    # two requantizations: within the 4-bit grid's step of the original, not exact
    assert (exact_logits(ours, ids) - expected).abs().max() < 0.5
    assert not any(layer.merged for _, layer in ours.named_modules() if hasattr(layer, "merged_adapters"))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_fused_4bit_training_node_equals_the_generic_path(dropout):
    fused, _ = _pair("nf4", "llama", lora_dropout=dropout)
    generic, _ = _pair("nf4", "llama", lora_dropout=dropout)
    for module in generic.modules():   # a hook on the base sends a layer down the generic path
        if backend_of(module) is not None:
            module.register_forward_pre_hook(lambda *_: None)
    ids = tm.token_batch(batch=4)
    grads = []
    for model in (fused, generic):
        model.train()
        model.enable_input_require_grads()
        torch.manual_seed(3)   # the same dropout masks
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        view = layer(torch.randn(2, 64, requires_grad=True)).grad_fn   # the output's view of the node
        node = type(view.next_functions[0][0]).__name__
        assert (node == "_QuantizedLoraBackward") == (model is fused), node
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "vera"])
def test_training_after_an_eval_pass_equals_training_without_it(method):
    """bitsandbytes repacks a 4-bit weight for its CPU inference kernel on the first no-grad eval forward, and
    that kernel has no backward: training afterwards silently drops the gradients that flow through the base
    (PEFT gets None gradients in the first layers). surgery's layers put the weight back before a training
    forward (PeftModel.train and the adapter layers), so an evaluation between training steps changes only what
    the repack rounded: the block scales, to bf16 (~0.2% of the weight), far below the 4-bit grid's own error."""
    configs = {"lora": surgery.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
               "dora": surgery.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                                          use_dora=True),
               "ia3": surgery.IA3Config(target_modules=["q_proj", "v_proj"], feedforward_modules=[],
                                        init_ia3_weights=False),
               "vera": surgery.VeraConfig(target_modules=["q_proj", "v_proj"], r=8, init_weights=False)}
    grads = []
    ids = tm.token_batch(batch=4)
    for evaluate_first in (False, True):
        base = quantized("nf4")
        torch.manual_seed(0)
        model = surgery.get_peft_model(base, configs[method])
        if evaluate_first:
            with torch.no_grad():
                model.eval()(input_ids=ids)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[1].values())
    for key, value in grads[0].items():
        assert (grads[1][key] - value).norm() <= 0.02 * value.norm(), key


@pytest.mark.parametrize("trained_on, loaded_on", [("float", "nf4"), ("nf4", "float"), ("float", "int8")])
def test_adapters_move_between_full_precision_and_quantized_bases_as_in_peft(tmp_path, trained_on, loaded_on):
    from tests.support import quantized_models as qm

    def base(kind):
        if kind == "float":
            from transformers import AutoModelForCausalLM
            return AutoModelForCausalLM.from_pretrained(qm._saved("llama", torch.float32, **qm.SIZES["llama"]))
        return quantized(kind)

    source = base(trained_on)
    torch.manual_seed(0)
    model = surgery.get_peft_model(source, surgery.LoraConfig(r=4, target_modules=TARGETS["llama"],
                                                              init_lora_weights=False))
    model.save_pretrained(tmp_path)
    ids = tm.token_batch()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        ours = surgery.PeftModel.from_pretrained(base(loaded_on), str(tmp_path))
        theirs = peft.PeftModel.from_pretrained(base(loaded_on), str(tmp_path))
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=0)
    saved = surgery.get_peft_model_state_dict(model)
    for key, value in surgery.get_peft_model_state_dict(ours).items():
        assert torch.equal(value, saved[key])


def test_the_model_card_records_the_quantization(tmp_path):
    ours, _ = _pair("nf4", "llama")
    ours.save_pretrained(tmp_path)
    ours.save_pretrained(tmp_path)   # a second save keeps one section
    card = (tmp_path / "README.md").read_text()
    prefix = "The following `bitsandbytes` quantization config was used during training:"   # PEFT's words
    assert card.count(prefix) == 1 and "- bnb_4bit_quant_type: nf4" in card and "- load_in_4bit: True" in card
