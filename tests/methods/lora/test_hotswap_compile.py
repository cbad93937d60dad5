"""prepare_model_for_compiled_hotswap and hot-swapping under torch.compile, against PEFT and against math.

Padding: B_pad @ A_pad = B @ A exactly (zeros), so outputs stay within 1e-6 of the unpadded model; shapes, config
r / rank_pattern and layer r match PEFT's. Compiled: after prepare + torch.compile, three swaps with other ranks
(<= target_rank) and alphas run with dynamo's error_on_recompile and compile no new graph; each output is within
1e-5 of a freshly loaded model and of PEFT's (eager) hot-swapped model. A contingency test shows that without
prepare a new alpha does recompile. Tensor scalings are checked on every path against the float-scaling model.
"""
from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff

from .test_dora_conv_embedding import ConvNet
from .test_hotswap import (
    IDS,
    TOL,
    assert_unchanged,
    fresh,
    load_both,
    logits,
    save_peft_adapter,
    snapshot,
)
from .test_lora_mha import Attn
from .test_lora_mha import inputs as mha_inputs

peft = pytest.importorskip("peft")
from peft.utils.hotswap import hotswap_adapter as peft_hotswap  # noqa: E402
from peft.utils.hotswap import prepare_model_for_compiled_hotswap as peft_prepare  # noqa: E402

SEQUENCE = {   # name -> (seed, LoraConfig kwargs): ranks 4 -> 12 -> 8 (q_proj only) -> 6, each with its own alpha
    "a": (1, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "b": (2, dict(r=12, lora_alpha=6, target_modules=["q_proj", "v_proj"])),
    "c": (3, dict(r=8, lora_alpha=32, target_modules=["q_proj"])),
    "d": (4, dict(r=6, lora_alpha=3, target_modules=["q_proj", "v_proj"])),
    "too_big": (5, dict(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"])),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hotswap_compile")
    return {name: str(save_peft_adapter(root / name, seed, **cfg)) for name, (seed, cfg) in SEQUENCE.items()}


@pytest.fixture(autouse=True)
def reset_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_prepare_pads_like_peft_and_keeps_outputs(tmp_path):
    path = save_peft_adapter(tmp_path / "p", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                             rank_pattern={"v_proj": 6})
    ours, theirs = load_both(str(path))
    before = logits(ours)
    surgery.prepare_model_for_compiled_hotswap(ours, target_rank=12, config=ours.peft_config)
    peft_prepare(theirs, target_rank=12, config=theirs.peft_config)
    assert max_diff(logits(ours), before) <= 1e-6
    assert max_diff(logits(ours), logits(theirs)) <= TOL
    shapes = {n: p.shape for n, p in ours.named_parameters()}
    assert shapes == {n: p.shape for n, p in theirs.named_parameters()}
    assert all(p.requires_grad == dict(theirs.named_parameters())[n].requires_grad for n, p in ours.named_parameters())
    for cfg in (ours.peft_config["default"], theirs.peft_config["default"]):
        assert cfg.r == 12 and cfg.rank_pattern == {"v_proj": 12}
    for name in ("q_proj", "v_proj"):
        mine = getattr(ours.base_model.model.model.layers[1].self_attn, name)
        ref = getattr(theirs.base_model.model.model.layers[1].self_attn, name)
        assert mine.r == ref.r == {"default": 4 if name == "q_proj" else 6}   # r keeps the loaded rank, as PEFT
        assert isinstance(mine.scaling["default"], torch.Tensor)
        assert mine.scaling["default"].item() == ref.scaling["default"].item()


@pytest.mark.parametrize("ranks", [(2, 4), (4, 2)])
def test_grouped_conv_padding_and_swaps_match_peft(tmp_path, ranks):
    def base():
        torch.manual_seed(0)
        return ConvNet(dim=2, groups=2)
    paths = [save_peft_adapter(tmp_path / f"c{r}", i, base_fn=base, r=r, lora_alpha=4, target_modules=["conv"])
             for i, r in enumerate(ranks)]
    x = base().inputs()
    ours = surgery.PeftModel.from_pretrained(base(), str(paths[0])).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(base(), str(paths[0])).eval()
    before = ours(x)
    surgery.prepare_model_for_compiled_hotswap(ours, target_rank=max(ranks))
    peft_prepare(theirs, target_rank=max(ranks))
    assert max_diff(ours(x), before) <= 1e-6
    for path in (paths[1], paths[0]):
        surgery.hotswap_adapter(ours, str(path), "default")
        peft_hotswap(theirs, str(path), "default")
        want = surgery.PeftModel.from_pretrained(base(), str(path)).eval()(x)
        assert max_diff(ours(x), theirs(x)) <= TOL and max_diff(ours(x), want) <= TOL


def test_prepare_refusals_leave_the_model_unchanged(saved):
    ours, _ = load_both(saved["b"])
    before = snapshot(ours)
    with pytest.raises(ValueError, match=re.escape("Trying to pad the adapter to the target rank 8, but the original "
                                                   "rank is larger (12). This is not possible.")):
        surgery.prepare_model_for_compiled_hotswap(ours, target_rank=8)
    with pytest.raises(ValueError, match="target_rank = 2.5 is invalid"):
        surgery.prepare_model_for_compiled_hotswap(ours, target_rank=2.5)
    with pytest.raises(ValueError, match=re.escape("check_compiles should be one of 'error', 'warn', or 'ignore', "
                                                   "got 'wrong' instead.")):
        surgery.prepare_model_for_compiled_hotswap(ours, check_compiled="wrong")
    assert_unchanged(ours, before)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.scaling["default"], float)   # nothing converted either
    with pytest.raises(ValueError, match=re.escape("No adapter layers found on the model")):
        surgery.prepare_model_for_compiled_hotswap(tm.tiny_llama())
    grouped = surgery.get_peft_model(ConvNet(dim=2, groups=2), surgery.LoraConfig(r=2, target_modules=["conv"]))
    with pytest.raises(ValueError, match=re.escape("Trying to pad a Conv2d LoRA adapter with groups=2 to target rank "
                                                   "3, but the target rank is not divisible by 2.")):
        surgery.prepare_model_for_compiled_hotswap(grouped, target_rank=3)


def test_prepare_after_compiling_is_refused_warned_or_ignored(saved, recwarn):
    ours, _ = load_both(saved["a"])
    compiled = torch.compile(ours, backend="eager")
    with pytest.raises(ValueError, match=re.escape("Call prepare_model_for_compiled_hotswap *before* compiling")):
        surgery.prepare_model_for_compiled_hotswap(compiled)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.scaling["default"], float)
    surgery.prepare_model_for_compiled_hotswap(compiled, check_compiled="ignore")
    assert not any("already compiled" in str(w.message) for w in recwarn)
    with pytest.warns(UserWarning, match="prepare_model_for_compiled_hotswap was called with a model that is already "
                                         "compiled"):
        surgery.prepare_model_for_compiled_hotswap(compiled, check_compiled="warn")
    assert isinstance(layer.scaling["default"], torch.Tensor)


def _check_swaps_without_recompiling(saved, backend, names):
    ours, theirs = load_both(saved["a"])
    surgery.prepare_model_for_compiled_hotswap(ours, target_rank=12, config=ours.peft_config)
    peft_prepare(theirs, target_rank=12, config=theirs.peft_config)
    compiled = torch.compile(ours, backend=backend)
    assert max_diff(logits(compiled), fresh(saved["a"])) <= TOL
    graphs, frames = counters["stats"]["unique_graphs"], counters["frames"]["ok"]
    ptrs = {n: p.data_ptr() for n, p in ours.named_parameters()}
    for name in names:
        surgery.hotswap_adapter(compiled, saved[name], adapter_name="default")
        peft_hotswap(theirs, saved[name], adapter_name="default")
        with torch._dynamo.config.patch(error_on_recompile=True):
            got = logits(compiled)
        assert max_diff(got, fresh(saved[name])) <= TOL
        assert max_diff(got, logits(theirs)) <= TOL
    assert counters["stats"]["unique_graphs"] == graphs and counters["frames"]["ok"] == frames
    assert all(p.data_ptr() == ptrs[n] for n, p in ours.named_parameters())   # swapped in place
    return compiled, ours


def test_compiled_hotswaps_do_not_recompile(saved):
    compiled, ours = _check_swaps_without_recompiling(saved, "aot_eager", ["b", "c", "d"])
    # a rank above target_rank would have to grow the tensors (a recompile): refused, nothing written
    before = snapshot(ours)
    with pytest.raises(ValueError, match="the new adapter's rank 16 is larger than the rank 12 this model holds"):
        surgery.hotswap_adapter(compiled, saved["too_big"], adapter_name="default")
    assert_unchanged(ours, before)


def test_compiled_hotswaps_do_not_recompile_with_inductor(saved):
    _check_swaps_without_recompiling(saved, "inductor", ["b", "c"])


def test_without_prepare_a_new_alpha_recompiles(saved, tmp_path):
    # contingency: the check above can see a recompile (same rank 4, alpha 8 -> 2: a float scaling is guarded)
    other = save_peft_adapter(tmp_path / "alpha2", 9, r=4, lora_alpha=2, target_modules=["q_proj", "v_proj"])
    ours, _ = load_both(saved["a"])
    compiled = torch.compile(ours, backend="eager")
    logits(compiled)
    surgery.hotswap_adapter(compiled, str(other), adapter_name="default")
    with torch._dynamo.config.patch(error_on_recompile=True):
        with pytest.raises(torch._dynamo.exc.RecompileError):
            logits(compiled)


def _twins(config, base_fn=tm.tiny_llama, target_rank=None, second=None):
    """The same model twice: float scalings, and prepared (tensor scalings, padded to target_rank)."""
    torch.manual_seed(0)
    model = surgery.get_peft_model(base_fn(), surgery.LoraConfig(init_lora_weights=False, **config))
    if second is not None:
        torch.manual_seed(1)
        model.add_adapter("second", surgery.LoraConfig(init_lora_weights=False, **second))
    prepared = copy.deepcopy(model)
    surgery.prepare_model_for_compiled_hotswap(prepared, target_rank=target_rank)
    return model, prepared


def _grads(model, inputs):
    model.train()
    model.zero_grad()
    out = model(**inputs).logits
    out.square().mean().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _sliced(grad, like):
    """The part of a (padded) gradient that matches the unpadded parameter's shape."""
    return grad[tuple(slice(0, s) for s in like.shape)]


@pytest.mark.parametrize("target_rank", [None, 10])
@pytest.mark.parametrize("variant", ["lora", "dora", "bias"])
def test_tensor_scalings_keep_every_path(variant, target_rank):
    config = dict(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"], use_dora=variant == "dora",
                  lora_bias=variant == "bias")
    model, prepared = _twins(config, target_rank=target_rank, second=dict(r=6, lora_alpha=3,
                                                                           target_modules=["q_proj"]))
    inputs = {"input_ids": IDS}
    # training (the float model takes the fused kernels, the tensor one the generic path), with gradients
    out0, g0 = _grads(model, inputs)
    out1, g1 = _grads(prepared, inputs)
    assert max_diff(out0, out1) <= TOL and g0.keys() == g1.keys()
    params = dict(model.named_parameters())
    assert all(max_diff(_sliced(g1[n], params[n]), g0[n]) <= TOL for n in g0)
    for m in (model, prepared):
        m.eval()
    assert max_diff(logits(model), logits(prepared)) <= TOL
    # a mixed batch of adapters (stacked factors: padded ranks and tensor scalings)
    names = ["default", "second"]
    with torch.no_grad():
        mixed = [m(IDS, adapter_names=names).logits for m in (model, prepared)]
    assert max_diff(mixed[0], mixed[1]) <= TOL
    # merge and unmerge: the same base weights
    for m in (model, prepared):
        m.merge_adapter()
    base = {n: p for n, p in model.named_parameters() if "base_layer" in n}
    assert all(max_diff(p, base[n]) <= 1e-6 for n, p in prepared.named_parameters() if "base_layer" in n)
    assert max_diff(logits(model), logits(prepared)) <= TOL
    for m in (model, prepared):
        m.unmerge_adapter()
    assert all(max_diff(p, base[n]) <= 1e-6 for n, p in prepared.named_parameters() if "base_layer" in n)
    # scaling at run time (PEFT's scale_layer / unscale_layer on the tensor, in place)
    for m in (model, prepared):
        for layer in m.modules():
            if isinstance(layer, surgery.methods.lora.layer.LoraLayer):
                layer.scale_layer(0.5)
    assert max_diff(logits(model), logits(prepared)) <= TOL


def _kind_case(kind):
    """(base builder, LoraConfig target_modules, forward) for a layer kind PEFT 0.21.2 does not pad."""
    if kind in ("conv2d", "conv1d"):
        dim = int(kind[-2])

        def base():   # the same base weights every time
            torch.manual_seed(0)
            return ConvNet(dim=dim)
        x = base().inputs()
        return base, ["conv"], (lambda m: m(x))
    if kind == "mha":
        x = mha_inputs()
        return Attn, ["mha"], (lambda m: m(x))
    return tm.tiny_llama, ["embed_tokens"], (lambda m: m(IDS).logits)


@pytest.mark.parametrize("kind", ["conv2d", "conv1d", "embedding", "mha"])
def test_tensor_scalings_and_padding_on_other_layer_kinds(kind, tmp_path):
    base_fn, targets, run = _kind_case(kind)
    model, prepared = _twins(dict(r=4, lora_alpha=8, target_modules=targets), base_fn=base_fn, target_rank=7)
    for m in (model, prepared):
        m.eval()
    with torch.no_grad():
        assert max_diff(run(model), run(prepared)) <= 1e-6   # padded with zeros: the same outputs
        # a smaller rank and another alpha swapped into the padded tensors: a freshly loaded model's outputs
        torch.manual_seed(3)
        other = surgery.get_peft_model(base_fn(), surgery.LoraConfig(r=2, lora_alpha=5, target_modules=targets,
                                                                     init_lora_weights=False)).eval()
        other.save_pretrained(tmp_path / "other")
        surgery.hotswap_adapter(prepared, tmp_path / "other", "default")
        assert max_diff(run(prepared), run(other)) <= TOL
        for m in (prepared, other):
            m.merge_adapter()
        assert max_diff(run(prepared), run(other)) <= TOL
