"""LoftQ against peft 0.21.2 and against bitsandbytes: the quantizers, init_lora_weights="loftq" on a float base,
replace_lora_weights_loftq on a bitsandbytes 4-bit base, the config, and the refusals.

peft 0.21.2's loftq_init and _loftq_init_new hard-code a CUDA (or XPU) compute device. The oracle is PEFT's own
function source with only that line changed to the CPU (`_peft_on_cpu`): the same bitsandbytes calls, SVD and
order of operations. Weights whose rows are multiples of 64 values are used where PEFT's path runs bitsandbytes'
CPU 4-bit dequantize kernel, which for other widths disagrees with bitsandbytes' own reference implementation
(checked below). Tolerance 1e-5 everywhere (measured: 0.0).
"""
from __future__ import annotations

import copy
import inspect
import json
import warnings

import bitsandbytes as bnb
import peft
import peft.tuners.lora.layer as peft_layer
import peft.utils.loftq_utils as peft_loftq
import pytest
import torch
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from bitsandbytes.backends.utils import _get_4bit_code
from safetensors.torch import load_file, save_file

import surgery
from surgery.errors import AdapterNameError, ConfigError, PlanError
from surgery.methods.lora.loftq import loftq_decompose
from surgery.methods.lora.loftq_quant import int8_round_trip, nf4_round_trip
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff
from tests.support.quantized_models import SIZES, _saved, exact_logits, quantized

TOL = 1e-5
IDS = tm.token_batch()
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _peft_on_cpu() -> dict:
    """PEFT's loftq_utils namespace with loftq_init / _loftq_init_new / replace_lora_weights_loftq on the CPU."""
    namespace = dict(vars(peft_loftq))
    for fn in (peft_loftq.loftq_init, peft_loftq._loftq_init_new, peft_loftq.replace_lora_weights_loftq):
        source = inspect.getsource(fn)
        device_line = 'compute_device = "xpu" if is_xpu_available() else "cuda"'
        if fn is not peft_loftq.replace_lora_weights_loftq:
            assert device_line in source   # the one line changed; fails loudly if PEFT's source moves
        exec(source.replace(device_line, 'compute_device = "cpu"'), namespace)
    return namespace


PEFT_CPU = _peft_on_cpu()


# -- the quantizers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(32, 64), (48, 40), (16, 16), (7, 9), (3, 5), (128, 96)])
def test_nf4_round_trip_equals_bitsandbytes(shape):
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.05
    packed = bnb.nn.Params4bit(weight.clone(), requires_grad=False, compress_statistics=False,
                               quant_type="nf4").to("cpu")
    state = packed.quant_state
    reference = _dequantize_4bit_compute(packed.data.reshape(-1), state.absmax, _get_4bit_code("nf4", weight.device),
                                         64, shape, torch.float32)
    assert torch.equal(nf4_round_trip(weight), reference)
    if shape[1] % 64 == 0:   # bitsandbytes' CPU kernel agrees with its reference only for such rows
        assert torch.equal(nf4_round_trip(weight), bnb.functional.dequantize_4bit(packed.data, state))


@pytest.mark.parametrize("shape", [(32, 64), (16, 16), (7, 9)])
def test_int8_round_trip_equals_bitsandbytes(shape):
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 0.05
    packed = bnb.nn.Int8Params(weight.clone(), requires_grad=False).to("cpu")
    assert torch.equal(int8_round_trip(weight), bnb.functional.int8_vectorwise_dequant(packed.data, packed.SCB))


@pytest.mark.parametrize("bits, iters", [(4, 1), (4, 3), (8, 2)])
def test_decomposition_equals_peft_and_reduces_the_quantization_error(bits, iters):
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(2))
    ours = loftq_decompose(weight, bits, 8, iters)
    theirs = PEFT_CPU["loftq_init"](weight, num_bits=bits, reduced_rank=8, num_iter=iters)
    assert all(max_diff(a, b) <= TOL for a, b in zip(ours, theirs))
    quantized_weight, lora_A, lora_B = ours
    # LoftQ's point: Q + B A is closer to W than Q alone (B A is the best rank-8 part of W - Q)
    assert (weight - quantized_weight - lora_B @ lora_A).norm() < 0.95 * (weight - quantized_weight).norm()


# -- init_lora_weights="loftq" on a float base ------------------------------------------------------------------
@pytest.mark.parametrize("bits, iters", [(4, 1), (4, 2), (8, 1)])
def test_loftq_init_equals_peft(monkeypatch, bits, iters):
    monkeypatch.setattr(peft_layer, "loftq_init", PEFT_CPU["loftq_init"])
    base = tm.tiny_llama(hidden_size=64, intermediate_size=128)   # rows of 64 / 128 values (see the docstring)
    kwargs = dict(r=8, lora_alpha=8, target_modules=TARGETS, init_lora_weights="loftq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(loftq_config=peft.LoftQConfig(bits, iters),
                                                                           **kwargs))
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(
        loftq_config=surgery.LoftQConfig(bits, iters), **kwargs))
    mine, other = ours.state_dict(), theirs.state_dict()
    assert set(mine) == set(other) and max(max_diff(mine[k], other[k]) for k in mine) <= TOL
    with torch.no_grad():
        assert max_diff(ours(input_ids=IDS).logits, theirs(input_ids=IDS).logits) <= TOL
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.base_layer.weight, nf4_round_trip(layer.base_layer.weight)) or bits == 8


def test_loftq_plan_notes_the_rewrite_and_refuses_what_peft_cannot_run():
    config = dict(init_lora_weights="loftq", loftq_config={"loftq_bits": 4, "loftq_iter": 1})
    plan = surgery.plan(tm.tiny_llama(), surgery.LoraConfig(target_modules=TARGETS, **config))
    assert any("LoftQ rewrites the base weights" in w for w in plan.warnings)
    for model, targets, words in ((quantized("nf4"), ["q_proj"], "call replace_lora_weights_loftq"),
                                  (tm.tiny_gpt2(), ["c_attn"], "does not support fan_in_fan_out"),
                                  (tm.tiny_embed_mlp(), ["emb"], "is an nn.Embedding"),
                                  (tm.tiny_convnet(), ["conv1d"], "supports Linear layers only")):
        with pytest.raises(PlanError, match=words):
            surgery.get_peft_model(model, surgery.LoraConfig(target_modules=targets, **config))


# -- the config ------------------------------------------------------------------------------------------------
def test_loftq_config_fields_defaults_and_saved_dict_equal_peft(tmp_path):
    assert vars(surgery.LoftQConfig()) == vars(peft.LoftQConfig()) == {"loftq_bits": 4, "loftq_iter": 1}
    kwargs = dict(target_modules=["q_proj"], init_lora_weights="loftq")
    ours = surgery.LoraConfig(loftq_config=surgery.LoftQConfig(loftq_iter=2), **kwargs)
    theirs = peft.LoraConfig(loftq_config=peft.LoftQConfig(loftq_iter=2), **kwargs)
    assert ours.loftq_config == theirs.loftq_config == {"loftq_bits": 4, "loftq_iter": 2}
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    saved = {side: json.loads((tmp_path / side / "adapter_config.json").read_text())["loftq_config"]
             for side in ("ours", "theirs")}
    assert saved["ours"] == saved["theirs"]
    for side in ("ours", "theirs"):
        assert surgery.LoraConfig.from_pretrained(tmp_path / side).loftq_config == saved["ours"]
    assert peft.LoraConfig.from_pretrained(tmp_path / "ours").loftq_config == saved["ours"]


@pytest.mark.parametrize("kwargs, words", [
    ({}, "`loftq_config` must be specified when `init_lora_weights` is 'loftq'"),
    ({"loftq_config": {"loftq_bits": 3}}, "loftq_config['loftq_bits'] = 3 is not valid"),
    ({"loftq_config": {"loftq_iter": 0}}, "loftq_config['loftq_iter'] = 0 is not valid"),
    ({"loftq_config": {"bits": 4}}, "unknown key 'bits' (did you mean 'loftq_bits'?)"),
    ({"loftq_config": 4}, "loftq_config = 4 has type int"),
])
def test_bad_loftq_config_is_refused_naming_the_field(kwargs, words):
    with pytest.raises(ConfigError) as info:
        surgery.LoraConfig(init_lora_weights="loftq", **kwargs)
    assert words in str(info.value)


def test_loftq_config_without_loftq_init_is_dropped_with_peft_warning():
    message = "`loftq_config` specified but will be ignored when `init_lora_weights` is not 'loftq'."
    with pytest.warns(UserWarning, match=message):
        theirs = peft.LoraConfig(loftq_config={"loftq_bits": 4})
    with pytest.warns(surgery.PeftWarning, match=message):
        ours = surgery.LoraConfig(loftq_config={"loftq_bits": 4})
    assert ours.loftq_config == theirs.loftq_config == {}


# -- replace_lora_weights_loftq on a bitsandbytes 4-bit base --------------------------------------------------
def _quantized_pair():
    kwargs = dict(r=4, lora_alpha=4, target_modules=TARGETS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (surgery.get_peft_model(quantized("nf4"), surgery.LoraConfig(**kwargs)),
                peft.get_peft_model(quantized("nf4"), peft.LoraConfig(**kwargs)))


def _factors(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_replace_lora_weights_loftq_equals_peft_and_moves_the_model_toward_the_float_one():
    path = _saved("llama", torch.float32, **SIZES["llama"])
    ours, theirs = _quantized_pair()
    surgery.replace_lora_weights_loftq(ours, model_path=path)
    PEFT_CPU["replace_lora_weights_loftq"](theirs, model_path=path)
    mine, other = _factors(ours), _factors(theirs)
    assert set(mine) == set(other) and max(max_diff(mine[k], other[k]) for k in mine) <= TOL
    assert max_diff(exact_logits(ours, IDS), exact_logits(theirs, IDS)) <= TOL
    full = tm.tiny_llama(**SIZES["llama"])
    with torch.no_grad():
        reference = full(input_ids=IDS).logits
    with ours.disable_adapter():
        quantized_only = exact_logits(ours, IDS)
    error = (exact_logits(ours, IDS) - reference).abs().mean()
    assert error < (quantized_only - reference).abs().mean()


def test_callback_false_rolls_a_layer_back_and_an_error_rolls_every_layer_back(tmp_path):
    path = _saved("llama", torch.float32, **SIZES["llama"])
    ours, _ = _quantized_pair()
    before = _factors(ours)
    asked = []

    def only_q_proj(model, name):
        asked.append(name)
        return name.endswith("q_proj")

    surgery.replace_lora_weights_loftq(ours, model_path=path, callback=only_q_proj)
    after = _factors(ours)
    assert len(asked) == 2 * len(TARGETS)   # two decoder layers
    for key in after:
        assert torch.equal(after[key], before[key]) != (".q_proj." in key), key
    # a checkpoint missing the last layer's weight: every layer replaced before it is rolled back
    tensors = load_file(f"{path}/model.safetensors")
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.down_proj.weight"},
              tmp_path / "model.safetensors")
    fresh, _ = _quantized_pair()
    start = _factors(fresh)
    with pytest.raises(KeyError, match="model.layers.1.mlp.down_proj.weight"):
        surgery.replace_lora_weights_loftq(fresh, model_path=str(tmp_path))
    assert all(torch.equal(v, start[k]) for k, v in _factors(fresh).items())


def test_sharded_checkpoints_and_the_models_own_path_are_read(tmp_path):
    path = _saved("llama", torch.float32, **SIZES["llama"])
    tensors = load_file(f"{path}/model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded, own = _quantized_pair()[0], _quantized_pair()[0]
    surgery.replace_lora_weights_loftq(sharded, model_path=str(tmp_path))
    surgery.replace_lora_weights_loftq(own)   # config._name_or_path: the local directory it was loaded from
    one, two = _factors(sharded), _factors(own)
    assert max(max_diff(one[k], two[k]) for k in one) == 0


def test_replace_lora_weights_loftq_errors_as_peft(tmp_path):
    float_model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(FileNotFoundError, match="Could not find file for"):
        surgery.replace_lora_weights_loftq(float_model, model_path=str(tmp_path))
    path = _saved("llama", torch.float32, **SIZES["llama"])
    with pytest.raises(ValueError, match="No bnb LoRA module found on the model"):
        surgery.replace_lora_weights_loftq(float_model, model_path=path)
    ours, _ = _quantized_pair()
    with pytest.raises(AdapterNameError, match="adapter_name = 'other' is not an adapter"):
        surgery.replace_lora_weights_loftq(ours, model_path=path, adapter_name="other")
