"""LoRA layers: outputs equal PEFT's for the same weights (state dicts are key-for-key identical), and the
initialisers do what PEFT's do."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import MODELS, max_diff, peft_model, perturb_adapters, run, surgery_model

pytest.importorskip("peft")

ALL_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONVS = ["conv2d", "conv2d_strided", "conv1d", "conv3d", "head"]

# (model, LoraConfig kwargs, fp32 tolerance)
PARITY = [
    ("llama", dict(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8), 1e-6),
    ("llama", dict(target_modules="all-linear", r=4, lora_alpha=16, use_rslora=True), 1e-6),
    ("llama", dict(target_modules=ALL_LLAMA, r=8, lora_alpha=3, rank_pattern={"down_proj": 2},
                   alpha_pattern={"o_proj": 5}), 1e-6),
    ("llama", dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4, use_dora=True), 1e-5),
    ("llama", dict(target_modules=["q_proj", "v_proj"], r=4, lora_dropout=0.3), 1e-6),
    ("llama", dict(target_modules=["q_proj", "v_proj"], r=4, lora_bias=True), 1e-6),
    ("llama", dict(target_modules=["embed_tokens", "q_proj"], r=4, init_lora_weights="gaussian"), 1e-6),
    ("llama", dict(target_modules=["q_proj", "lm_head"], r=4, init_lora_weights=False), 1e-6),
    ("llama_bias", dict(target_modules="all-linear", r=4, bias="lora_only"), 1e-6),
    ("llama_bias", dict(target_modules=["q_proj", "up_proj"], r=4, bias="all"), 1e-6),
    ("llama_bias", dict(target_modules=["q_proj", "o_proj"], r=4, use_dora=True, lora_dropout=0.1), 1e-5),
    ("gpt2", dict(target_modules=["c_attn", "c_proj", "wte"], r=4, fan_in_fan_out=True), 1e-6),
    ("gpt2", dict(target_modules=["c_attn", "c_fc"], r=4, fan_in_fan_out=True, use_dora=True), 1e-5),
    ("gpt2", dict(target_modules=["c_attn"], r=4, fan_in_fan_out=True, bias="lora_only", lora_bias=True), 1e-6),
    ("gpt2", dict(target_modules=["c_attn", "c_proj"], r=2, use_rslora=True, lora_alpha=7), 1e-6),  # no fifo: set
    ("bert_cls", dict(task_type="SEQ_CLS", target_modules=["query", "value"], r=4), 1e-6),
    ("bert_cls", dict(task_type="SEQ_CLS", target_modules="all-linear", r=2, lora_dropout=0.2, bias="all"), 1e-6),
    ("bert", dict(target_modules=["query", "value", "dense"], r=4, bias="all"), 1e-6),
    ("bert", dict(target_modules=["query", "word_embeddings"], r=4, use_rslora=True, lora_alpha=2), 1e-6),
    ("t5", dict(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v", "wo"], r=4), 1e-6),
    ("t5", dict(task_type="SEQ_2_SEQ_LM", target_modules=["q", "k"], r=4, use_dora=True), 1e-5),
    ("t5", dict(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v", "shared"], r=4, lora_dropout=0.5), 1e-6),
    ("conv", dict(target_modules=CONVS, r=2), 1e-6),
    ("conv", dict(target_modules=CONVS, r=3, lora_alpha=5, use_rslora=True, lora_bias=True), 1e-6),
    ("conv", dict(target_modules=["conv2d", "conv3d"], r=2, bias="lora_only", lora_dropout=0.1), 1e-6),
    ("embedding", dict(target_modules=["emb", "lin0"], r=4), 1e-6),
    ("embedding", dict(target_modules=["emb", "lin0"], r=4, lora_alpha=3, modules_to_save=["lin1"]), 1e-6),
    ("embedding", dict(target_modules=["emb"], r=8, use_rslora=True, lora_alpha=16), 1e-6),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name, kwargs, tol", PARITY, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(PARITY)])
def test_outputs_equal_peft_for_the_same_weights(name, kwargs, tol):
    builder = MODELS[name][0]
    base = builder()
    theirs = peft_model(base, **kwargs)
    perturb_adapters(theirs)
    theirs.eval()
    ours = surgery_model(base, **kwargs)
    their_state, our_state = theirs.state_dict(), ours.state_dict()
    assert list(our_state) == list(their_state)  # the same keys, in the same order
    assert {k: tuple(v.shape) for k, v in our_state.items()} == {k: tuple(v.shape) for k, v in their_state.items()}
    assert any(".lora_A.default.weight" in k or ".lora_embedding_A.default" in k for k in our_state)
    ours.load_state_dict(their_state, strict=True)
    ours.eval()
    want = run(theirs, name)
    assert max_diff(want, run(base, name)) > 1e-3, "the adapter must change the output"
    assert max_diff(run(ours, name), want) <= tol
    # and which parameters train is the same, too
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        n for n, p in theirs.named_parameters() if p.requires_grad}


def test_state_dict_key_layout():
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj"], use_dora=True)
    keys = set(model.state_dict())
    path = "base_model.model.model.layers.0.self_attn.q_proj"
    assert {f"{path}.base_layer.weight", f"{path}.lora_A.default.weight", f"{path}.lora_B.default.weight",
            f"{path}.lora_magnitude_vector.default.weight"} <= keys
    emb = surgery_model(tm.tiny_embed_mlp(), target_modules=["emb"])
    assert {"base_model.model.emb.lora_embedding_A.default", "base_model.model.emb.lora_embedding_B.default",
            "base_model.model.emb.base_layer.weight"} <= set(emb.state_dict())


def test_dropout_is_active_in_train_mode_only():
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj", "v_proj"], lora_dropout=0.5)
    perturb_adapters(model)
    x = {"input_ids": tm.token_batch()}
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**x).logits, model(**x).logits)
        evaluated = model(**x).logits
        model.train()
        torch.manual_seed(0)
        trained = model(**x).logits
    assert max_diff(trained, evaluated) > 1e-4


# -- initialisation -------------------------------------------------------------------------------------------
def _layer(model, path):
    return model.get_base_model().get_submodule(path)


@pytest.mark.parametrize("name, targets", [("llama", ["q_proj", "v_proj", "embed_tokens"]), ("gpt2", ["c_attn"]),
                                           ("conv", CONVS), ("embedding", ["emb", "lin0"])])
def test_default_init_is_the_identity(name, targets):
    base = MODELS[name][0]()
    want = run(base, name)
    model = surgery_model(base, target_modules=targets, r=4)
    assert torch.equal(run(model, name), want)  # B (or embedding A) is zero: bit-identical


def test_default_init_kaiming_a_zero_b():
    model = surgery_model(tm.tiny_llama(hidden_size=64, intermediate_size=128), target_modules=["q_proj"], r=8)
    layer = _layer(model, "model.layers.0.self_attn.q_proj")
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert torch.count_nonzero(B) == 0
    bound = 1 / 64 ** 0.5  # kaiming_uniform(a=sqrt(5)) on (r, in): U(-1/sqrt(in), 1/sqrt(in)), as nn.Linear
    assert A.abs().max() <= bound and A.abs().max() > 0.8 * bound and A.std() > 0.4 * bound


@pytest.mark.parametrize("r", [2, 4, 16])
def test_gaussian_init_a_has_std_one_over_r_and_b_is_zero(r):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 8))
    model = surgery.get_peft_model(base, surgery.LoraConfig(target_modules=["0"], r=r, init_lora_weights="gaussian"))
    layer = model.get_base_model()[0]
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    n = A.numel()
    assert A.shape == (r, 1024) and torch.count_nonzero(B) == 0
    # the sample std of n normal draws is within a few percent of sigma; the mean within 5 sigma/sqrt(n)
    assert abs(A.std().item() * r - 1) < 0.1
    assert abs(A.mean().item()) < 5 / r / n ** 0.5


def test_init_false_leaves_b_non_zero():
    base = tm.tiny_llama()
    want = run(base, "llama")
    model = surgery_model(base, target_modules=["q_proj", "v_proj", "embed_tokens"], init_lora_weights=False)
    layer = _layer(model, "model.layers.0.self_attn.q_proj")
    assert torch.count_nonzero(layer.lora_B["default"].weight) > 0
    assert torch.count_nonzero(_layer(model, "model.embed_tokens").lora_embedding_A["default"]) > 0
    assert torch.isfinite(run(model, "llama")).all()
    assert max_diff(run(model, "llama"), want) > 1e-4


@pytest.mark.parametrize("init", [True, "gaussian"])
def test_embedding_init_a_zero_b_normal(init):
    torch.manual_seed(0)
    model = surgery.get_peft_model(nn.Sequential(nn.Embedding(2000, 64)),
                                   surgery.LoraConfig(target_modules=["0"], r=8, init_lora_weights=init))
    layer = model.get_base_model()[0]
    A, B = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
    assert A.shape == (8, 2000) and B.shape == (64, 8)
    assert torch.count_nonzero(A) == 0
    assert abs(B.std().item() - 1) < 0.15


def test_dora_init_magnitude_is_the_row_norm_and_the_output_is_unchanged():
    base = tm.tiny_gpt2()
    want = run(base, "gpt2")
    model = surgery_model(base, target_modules=["c_attn", "c_fc"], use_dora=True)
    layer = _layer(model, "transformer.h.0.attn.c_attn")
    weight = layer.get_base_layer().weight  # Conv1D: (in, out)
    magnitude = layer.lora_magnitude_vector["default"].weight
    assert magnitude.shape == (weight.shape[1],)
    torch.testing.assert_close(magnitude, torch.linalg.norm(weight.T, dim=1), atol=1e-6, rtol=0)
    assert max_diff(run(model, "gpt2"), want) <= 1e-5


def test_init_matches_peft_distributionally():
    """PEFT and surgery draw A from the same distribution: compare bounds/std on a big layer."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(2048, 256))
    theirs = peft_model(base, target_modules=["0"], r=16, init_lora_weights="gaussian")
    ours = surgery_model(base, target_modules=["0"], r=16, init_lora_weights="gaussian")
    a_theirs = theirs.base_model.model[0].lora_A["default"].weight
    a_ours = ours.get_base_model()[0].lora_A["default"].weight
    assert abs(a_theirs.std().item() - a_ours.std().item()) < 0.05 / 16
    theirs = peft_model(base, target_modules=["0"], r=16)
    ours = surgery_model(base, target_modules=["0"], r=16)
    a_theirs = theirs.base_model.model[0].lora_A["default"].weight
    a_ours = ours.get_base_model()[0].lora_A["default"].weight
    assert abs(a_theirs.abs().max().item() - a_ours.abs().max().item()) < 1e-3


def test_conv_layer_shapes_follow_the_base_conv():
    model = surgery_model(tm.tiny_convnet(), target_modules=["conv2d_strided", "conv3d", "conv1d"], r=3)
    strided = _layer(model, "conv2d_strided")
    A, B = strided.lora_A["default"], strided.lora_B["default"]
    assert (A.kernel_size, A.stride, A.padding, A.out_channels) == ((3, 3), (2, 2), (1, 1), 3)
    assert (B.kernel_size, B.stride, B.in_channels, B.out_channels) == ((1, 1), (1, 1), 3, 8)
    assert isinstance(_layer(model, "conv3d").lora_A["default"], nn.Conv3d)
    assert isinstance(_layer(model, "conv1d").lora_B["default"], nn.Conv1d)
    assert strided.delta_weight("default").shape == strided.get_base_layer().weight.shape


def test_unsupported_layers_are_refused_before_any_change():
    # a grouped conv takes LoRA when r divides into its groups (B is a grouped 1x1 conv), as in PEFT
    model = nn.Sequential(nn.Linear(4, 4), nn.Conv2d(4, 4, 3, groups=2))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(surgery.SurgeryError, match="groups"):
        surgery.get_peft_model(model, surgery.LoraConfig(target_modules=["0", "1"], r=3))
    assert type(model[0]) is nn.Linear and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(surgery.SurgeryError, match="lora_bias"):
        surgery.get_peft_model(tm.tiny_embed_mlp(), surgery.LoraConfig(target_modules=["emb"], lora_bias=True))
