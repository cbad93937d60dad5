"""Hot-swapping LoRA adapters (surgery.hotswap_adapter, PEFT's peft.utils.hotswap) against real PEFT.

The same adapters, saved once by PEFT, are loaded and hot-swapped in both libraries. After every swap:
logits equal PEFT's hot-swapped model's and a freshly loaded surgery model's within 1e-5 (float32 tiny Llama,
logits ~1); the modules and (when no tensor grows) the parameters' storage are the ones of before the swap.
Refusals are checked for their message and for leaving every tensor of the model as it was.
Compilation (prepare_model_for_compiled_hotswap, zero recompiles) is in test_hotswap_compile.py.
"""
from __future__ import annotations

import copy
import re
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import surgery
from surgery.errors import AdapterNameError
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff

peft = pytest.importorskip("peft")
from peft.utils.hotswap import hotswap_adapter as peft_hotswap  # noqa: E402

TOL = 1e-5
IDS = torch.arange(16).view(2, 8) * 7 % 128
ADAPTERS = {   # name -> (seed, LoraConfig kwargs), all saved by PEFT
    "r4": (1, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "r4b": (2, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "r12": (3, dict(r=12, lora_alpha=6, target_modules=["q_proj", "v_proj"])),
    "r8_q": (4, dict(r=8, lora_alpha=32, target_modules=["q_proj"])),
    "rslora": (5, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True)),
    "all": (6, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"])),
}


def save_peft_adapter(directory, seed, base_fn=tm.tiny_llama, **config):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base_fn(), peft.LoraConfig(init_lora_weights=False, **config))
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hotswap")
    return {name: str(save_peft_adapter(root / name, seed, **cfg)) for name, (seed, cfg) in ADAPTERS.items()}


def load_both(path):
    ours = surgery.PeftModel.from_pretrained(tm.tiny_llama(), path).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(tm.tiny_llama(), path).eval()
    return ours, theirs


@torch.no_grad()
def logits(model):
    return model(IDS).logits


def fresh(path):
    return logits(surgery.PeftModel.from_pretrained(tm.tiny_llama(), path).eval())


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("sequence", [
    ["r4", "r4b", "r4"],              # same rank and alpha
    ["r12", "r4", "r8_q", "r12"],     # smaller ranks into bigger tensors, a subset of the targets
    ["r4", "r12", "r4"],              # a bigger rank grows the tensors (uncompiled model, as PEFT)
])
def test_hotswap_matches_peft_and_a_fresh_load(saved, sequence):
    ours, theirs = load_both(saved[sequence[0]])
    assert max_diff(logits(ours), logits(theirs)) <= TOL
    modules = dict(ours.named_modules())
    params = {n: p for n, p in ours.named_parameters()}
    for name in sequence[1:]:
        ptrs = {n: p.data_ptr() for n, p in ours.named_parameters()}
        held = max(p.shape[0] for n, p in ours.named_parameters() if "lora_A" in n)
        grows = surgery.LoraConfig.from_pretrained(saved[name]).r > held
        surgery.hotswap_adapter(ours, saved[name], adapter_name="default")
        peft_hotswap(theirs, saved[name], adapter_name="default")
        got = logits(ours)
        assert max_diff(got, logits(theirs)) <= TOL
        assert max_diff(got, fresh(saved[name])) <= TOL
        # in place: the same module and Parameter objects; the same storage unless a tensor had to grow
        assert all(m is modules[n] for n, m in ours.named_modules()) and len(modules) == len(dict(ours.named_modules()))
        assert all(p is params[n] for n, p in ours.named_parameters())
        if not grows:
            assert all(p.data_ptr() == ptrs[n] for n, p in ours.named_parameters())
        # r / lora_alpha keep the first adapter's values, as PEFT records them
        ours_layer = ours.base_model.model.model.layers[0].self_attn.q_proj
        theirs_layer = theirs.base_model.model.model.layers[0].self_attn.q_proj
        assert ours_layer.r == theirs_layer.r and ours_layer.lora_alpha == theirs_layer.lora_alpha
        assert ours_layer.scaling == pytest.approx(theirs_layer.scaling)


def test_a_missing_key_is_zeroed_as_peft(saved, tmp_path):
    # the new adapter lacks one tensor (q_proj's A in layer 0): it is zeroed, as in PEFT
    path = tmp_path / "partial"
    path.mkdir()
    shutil.copy(f"{saved['r4b']}/adapter_config.json", path)
    tensors = load_file(f"{saved['r4b']}/adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    del tensors[key]
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    ours, theirs = load_both(saved["r4"])
    surgery.hotswap_adapter(ours, str(path), "default")
    peft_hotswap(theirs, str(path), "default")
    assert (ours.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight == 0).all()
    assert max_diff(logits(ours), logits(theirs)) <= TOL


def test_from_state_dict_matches_peft(saved):
    ours, theirs = load_both(saved["r4"])
    state = {k.replace(".weight", ".default.weight"): v
             for k, v in load_file(f"{saved['r4b']}/adapter_model.safetensors").items()}
    ours_cfg = surgery.LoraConfig.from_pretrained(saved["r4b"])
    theirs_cfg = peft.LoraConfig.from_pretrained(saved["r4b"])
    surgery.hotswap_adapter_from_state_dict(ours, state, "default", ours_cfg)
    peft.utils.hotswap.hotswap_adapter_from_state_dict(theirs, state, "default", theirs_cfg)
    assert max_diff(logits(ours), logits(theirs)) <= TOL
    assert max_diff(logits(ours), fresh(saved["r4b"])) <= TOL


@pytest.mark.parametrize("pair", [
    (dict(), dict(lora_alpha=3, r=2)),
    (dict(), dict(use_rslora=True)),
    (dict(), dict(lora_dropout=0.1)),
    (dict(), dict(use_dora=True)),
    (dict(alpha_pattern={"q_proj": 4}), dict()),
])
def test_config_check_matches_peft(pair):
    kw0, kw1 = pair
    outcomes = []
    for lib, check in ((surgery, surgery.check_hotswap_configs_compatible),
                       (peft, peft.utils.hotswap.check_hotswap_configs_compatible)):
        configs = [lib.LoraConfig(target_modules=["q_proj"], **kw) for kw in (kw0, kw1)]
        try:
            check(*configs)
            outcomes.append(None)
        except ValueError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


def test_incompatible_config_is_refused_unchanged(saved):
    ours, _ = load_both(saved["r4"])
    before = snapshot(ours)
    with pytest.raises(ValueError, match=re.escape("Configs are incompatible: for use_rslora, False != True")):
        surgery.hotswap_adapter(ours, saved["rslora"], "default")
    assert_unchanged(ours, before)


def test_another_method_is_refused(tmp_path, saved):
    torch.manual_seed(0)
    ia3 = surgery.get_peft_model(tm.tiny_llama(), surgery.IA3Config(target_modules=["q_proj"], feedforward_modules=[]))
    ia3.save_pretrained(tmp_path / "ia3")
    ours, _ = load_both(saved["r4"])
    with pytest.raises(ValueError, match="Incompatible PEFT types found: LORA and IA3"):
        surgery.hotswap_adapter(ours, tmp_path / "ia3", "default")
    loaded = surgery.PeftModel.from_pretrained(tm.tiny_llama(), tmp_path / "ia3")
    with pytest.raises(ValueError, match="Hotswapping only supports LORA but IA3 was passed"):
        surgery.hotswap_adapter(loaded, tmp_path / "ia3", "default")


def test_extra_keys_are_refused_unchanged(saved):
    # the new adapter targets o_proj, which the loaded one does not: no slot to swap into
    ours, _ = load_both(saved["r4"])
    before = snapshot(ours)
    key = "base_model.model.model.layers.0.self_attn.o_proj.lora_A.default.weight"
    with pytest.raises(RuntimeError, match=re.escape("Hot swapping the adapter did not succeed, unexpected keys "
                                                     "found: ") + ".*" + re.escape(key)):
        surgery.hotswap_adapter(ours, saved["all"], "default")
    assert_unchanged(ours, before)


def test_a_bad_shape_is_refused_before_anything_is_written(saved):
    ours, _ = load_both(saved["r4"])
    before = snapshot(ours)
    state = {k.replace(".weight", ".default.weight"): v
             for k, v in load_file(f"{saved['r4b']}/adapter_model.safetensors").items()}
    last = sorted(state)[-1]
    state[last] = torch.zeros(state[last].shape[0] + 1, *state[last].shape[1:])   # a wrong output size
    with pytest.raises(ValueError, match=re.escape(f"Incompatible shapes found for LoRA weights {last}")):
        surgery.hotswap_adapter_from_state_dict(ours, state, "default", surgery.LoraConfig.from_pretrained(saved["r4b"]))
    assert_unchanged(ours, before)


def test_merged_adapter_is_refused(saved):
    ours, _ = load_both(saved["r4"])
    ours.merge_adapter()
    before = snapshot(ours)
    with pytest.raises(ValueError, match="Cannot hot-swap adapter 'default' because it is currently merged"):
        surgery.hotswap_adapter(ours, saved["r4b"], "default")
    assert_unchanged(ours, before)
    ours.unmerge_adapter()
    surgery.hotswap_adapter(ours, saved["r4b"], "default")
    assert max_diff(logits(ours), fresh(saved["r4b"])) <= TOL


def test_unknown_adapter_and_arguments_are_refused(saved):
    ours, _ = load_both(saved["r4"])
    with pytest.raises(AdapterNameError, match="adapter_name = 'other' is not loaded on this model"):
        surgery.hotswap_adapter(ours, saved["r4b"], "other")
    with pytest.raises(TypeError, match=re.escape("unexpected keyword argument(s) ['low_cpu_mem_usage']")):
        surgery.hotswap_adapter(ours, saved["r4b"], "default", low_cpu_mem_usage=True)
    with pytest.raises(TypeError, match="needs a PeftModel"):
        surgery.hotswap_adapter(tm.tiny_llama(), saved["r4b"], "default")


def test_other_adapters_are_untouched(saved):
    # swapping "default" leaves a second adapter on the same layers exactly as it was
    ours = surgery.PeftModel.from_pretrained(tm.tiny_llama(), saved["r4"]).eval()
    ours.load_adapter(saved["r12"], adapter_name="other")
    other = {k: v.clone() for k, v in ours.state_dict().items() if ".other." in k}
    surgery.hotswap_adapter(ours, saved["r4b"], "default")
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in other.items())
    assert max_diff(logits(ours), fresh(saved["r4b"])) <= TOL


def test_rank_pattern_scaling_follows_the_module_path(tmp_path):
    # rank_pattern is matched against the module path, as when loading (PEFT 0.21.2 matches the parameter key,
    # where the pattern "v_proj" never matches, so its hot-swapped scaling there is alpha / r, not alpha / 2)
    a = save_peft_adapter(tmp_path / "a", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    b = save_peft_adapter(tmp_path / "b", 2, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                          rank_pattern={"v_proj": 2})
    ours = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(a)).eval()
    surgery.hotswap_adapter(ours, str(b), "default")
    assert max_diff(logits(ours), fresh(str(b))) <= TOL
    assert ours.base_model.model.model.layers[0].self_attn.v_proj.scaling["default"] == 8 / 2


def test_dora_and_embedding_adapters_swap(tmp_path):
    # PEFT 0.21.2 cannot hot-swap these (KeyError on the DoRA magnitude key, AttributeError for embeddings):
    # checked against a fresh load of each adapter
    kw = dict(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"], use_dora=True)
    a = save_peft_adapter(tmp_path / "a", 1, **kw)
    b = save_peft_adapter(tmp_path / "b", 2, **kw)
    ours = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(a)).eval()
    surgery.hotswap_adapter(ours, str(b), "default")
    assert max_diff(logits(ours), fresh(str(b))) <= TOL
    # a layer the new adapter does not target then adds nothing: DoRA's magnitude goes back to ||W||
    c = save_peft_adapter(tmp_path / "c", 3, r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)
    only_q = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(c)).eval()
    big = copy.deepcopy(ours)
    surgery.hotswap_adapter(big, str(c), "default")
    assert max_diff(logits(big), logits(only_q)) <= TOL
