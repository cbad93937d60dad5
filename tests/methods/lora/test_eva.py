"""EVA (init_lora_weights="eva", get_eva_state_dict, initialize_lora_eva_weights) against peft 0.21.2 on the same
tiny models and synthetic batches: surgery's IncrementalPCA, the EVA state dict (names, order, shapes, dtypes,
values), the ranks per layer after redistribution, rank_pattern / alpha_pattern / target_modules, lora_A / lora_B,
logits, layers whose rank comes out 0, and saving and loading both ways.

Tolerance: 1e-5 against peft (both run the same float32/float64 arithmetic and the same seeded low-rank SVD;
measured 0.0). One documented difference: with whiten=True peft divides the shared components of layers fed the
same input once per layer (in place, on views), surgery once; the test states both.
"""
from __future__ import annotations

import copy
import json
import warnings

import peft
import pytest
import torch
from peft.tuners.tuners_utils import _find_minimal_target_modules
from peft.utils.incremental_pca import IncrementalPCA as PeftIncrementalPCA
from safetensors.torch import load_file

import surgery
from surgery.methods.lora.eva_load import minimal_suffixes
from surgery.methods.lora.eva_pca import IncrementalPCA
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff

TOL = 1e-5
LLAMA = ["q_proj", "v_proj", "down_proj"]   # q and v share their input: one SVD for both
PREFIX = "base_model.model."


def batches(n=6, batch=4, seq=12, seed=0, labels=False, padded=True):
    """Synthetic language-modelling batches: token ids, an attention mask with padding, optional labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 128, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        if padded:
            mask[:, -3:] = 0
        item = {"input_ids": ids, "attention_mask": mask}
        if labels:
            item["labels"] = torch.where(torch.rand(batch, seq, generator=g) < 0.3, -100, ids)
        out.append(item)
    return out


def _configs(eva=None, **kwargs):
    kwargs.setdefault("init_lora_weights", "eva")
    theirs = peft.LoraConfig(**kwargs, eva_config=peft.EvaConfig(**eva) if eva is not None else None)
    ours = surgery.LoraConfig(**kwargs, eva_config=surgery.EvaConfig(**eva) if eva is not None else None)
    return ours, theirs


def _models(base, eva=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = _configs(eva, **kwargs)
        return surgery.get_peft_model(copy.deepcopy(base), ours), peft.get_peft_model(copy.deepcopy(base), theirs)


def _assert_same_state_dict(ours: dict, theirs: dict):
    assert list(ours) == list(theirs)   # the same layers, in the same order
    for key in theirs:
        assert ours[key].shape == theirs[key].shape and ours[key].dtype == theirs[key].dtype, key
        assert max_diff(ours[key], theirs[key]) <= TOL, key


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _lora_layers(model):
    return {n.removeprefix(PREFIX): m for n, m in model.named_modules()
            if hasattr(m, "lora_A") and "default" in getattr(m, "r", {})}


def _ranks(model):
    return {n: m.r["default"] for n, m in _lora_layers(model).items()}


# -- the incremental PCA -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [dict(n_components=5), dict(n_components=6, lowrank=True, lowrank_seed=42),
                                    dict(n_components=4, lowrank=True, lowrank_q=9, lowrank_niter=2, lowrank_seed=1)])
def test_incremental_pca_equals_peft(kwargs):
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(30, 16, generator=g) @ torch.randn(16, 16, generator=g) + 3.0 for _ in range(4)]
    ours, theirs = IncrementalPCA(**kwargs), PeftIncrementalPCA(**kwargs)
    for x in data:
        ours.partial_fit(x)
        theirs.partial_fit(x)
        for key in ("components_", "singular_values_", "mean_", "var_", "explained_variance_",
                    "explained_variance_ratio_", "noise_variance_", "n_samples_seen_"):
            a, b = getattr(ours, key), getattr(theirs, key)
            assert a.dtype == b.dtype and max_diff(a, b) <= TOL, key
    assert max_diff(ours.transform(data[0]), theirs.transform(data[0])) <= TOL
    fitted, reference = IncrementalPCA(n_components=3, batch_size=25), PeftIncrementalPCA(n_components=3, batch_size=25)
    x = torch.cat(data)
    assert max_diff(fitted.fit(x).components_, reference.fit(x).components_) <= TOL
    assert list(IncrementalPCA.gen_batches(23, 5, 4)) == list(PeftIncrementalPCA.gen_batches(23, 5, 4))


def test_incremental_pca_components_are_the_principal_directions():
    """Against the math: keeping every component (nothing truncated, so the update is exact), after each batch
    the singular values and vectors are those of all rows so far, centred, and the ratios S^2 / (n total var);
    the signs make each component's largest entry positive."""
    g = torch.Generator().manual_seed(3)
    data = [torch.randn(40, 8, generator=g, dtype=torch.float64) * torch.arange(1, 9) for _ in range(3)]
    pca = IncrementalPCA(n_components=8)
    for i, x in enumerate(data):
        pca.partial_fit(x)
        seen = torch.cat(data[: i + 1])
        _, S, Vh = torch.linalg.svd(seen - seen.mean(0), full_matrices=False)
        assert max_diff(pca.singular_values_, S) <= 1e-9
        assert max_diff(pca.components_.abs(), Vh.abs()) <= 1e-9
        assert max_diff(pca.explained_variance_ratio_, S**2 / (seen.var(0, unbiased=False).sum() * len(seen))) <= 1e-9
    rows = pca.components_.abs().argmax(dim=1)
    assert (pca.components_[torch.arange(8), rows] > 0).all()


# -- the EVA state dict --------------------------------------------------------------------------------------
EVA_SETTINGS = [dict(rho=2.0, tau=0.9), dict(rho=2.0, tau=0.0), dict(rho=1.0, tau=0.9), dict(rho=1.0001, tau=0.95),
                dict(rho=2.0, tau=0.9, use_label_mask=False), dict(rho=3.0, tau=0.8, adjust_scaling_factors=False)]


@pytest.mark.parametrize("eva", EVA_SETTINGS, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_state_dict_of_a_peft_model_equals_peft(eva):
    ours, theirs = _models(tm.tiny_llama(), eva, r=4, target_modules=LLAMA)
    data = batches(labels=True)
    mine = surgery.get_eva_state_dict(ours, data, show_progress_bar=False)
    _assert_same_state_dict(mine, peft.get_eva_state_dict(theirs, data, show_progress_bar=False))
    assert all(k.startswith(PREFIX) for k in mine)
    assert sum(v.shape[0] for v in mine.values()) == 4 * 6   # the rank budget is kept
    assert max(v.shape[0] for v in mine.values()) <= round(4 * eva["rho"])


def test_state_dict_of_a_plain_gpt2_with_labels_equals_peft():
    """A plain model with its config (names as in the model); Conv1D layers; the label mask drops tokens."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = _configs(dict(rho=2.0, tau=0.95), r=4, target_modules=["c_attn", "c_fc", "c_proj"])
    data = batches(n=5, labels=True, padded=False)
    base = tm.tiny_gpt2()
    mine = surgery.get_eva_state_dict(copy.deepcopy(base), data, ours, show_progress_bar=False)
    _assert_same_state_dict(mine, peft.get_eva_state_dict(copy.deepcopy(base), data, theirs, show_progress_bar=False))
    unmasked = surgery.get_eva_state_dict(copy.deepcopy(base), batches(n=5, padded=False), ours,
                                          show_progress_bar=False)
    assert any(max_diff(mine[k][:1].abs(), unmasked[k][:1].abs()) > 1e-3 for k in mine)   # the mask mattered


def test_custom_functions_and_a_partial_layer_mapping_equal_peft():
    """forward_fn, prepare_model_inputs_fn=None and a {layer: function} mapping naming one layer (the others
    get the flattened input), as PEFT's GPU test does."""
    def layer_rows(x, model_input, name):
        return x[0].reshape(-1, x[0].size(-1))

    def forward(model, batch):
        return model(input_ids=batch["input_ids"])

    ours, theirs = _models(tm.tiny_llama(), dict(tau=0.9), r=4, target_modules=["q_proj", "down_proj"])
    data = batches(n=4)
    name = PREFIX + "model.layers.0.mlp.down_proj"
    kwargs = dict(forward_fn=forward, prepare_model_inputs_fn=None, show_progress_bar=False)
    mapping = {name: layer_rows}
    mine = surgery.get_eva_state_dict(ours, data, prepare_layer_inputs_fn=mapping, **kwargs)
    assert mapping == {name: layer_rows}   # the caller's mapping is left as it was (peft pops from it)
    _assert_same_state_dict(mine, peft.get_eva_state_dict(theirs, data, prepare_layer_inputs_fn={name: layer_rows},
                                                          **kwargs))


@pytest.mark.parametrize("targets", [["q_proj", "down_proj"], LLAMA])
def test_whitening_divides_by_the_root_of_the_singular_values(targets):
    """whiten=True: lora_A = V_k^T / sqrt(S_k). Layers with inputs of their own equal peft. For layers sharing an
    input (q, v) peft divides the shared rows again for each further layer (in place on views of one tensor):
    surgery divides once, and peft's rows are surgery's divided once more per extra layer holding them."""
    base, data = tm.tiny_llama(), batches()
    plain_ours, _ = _models(base, dict(tau=0.9), r=4, target_modules=targets)
    plain = surgery.get_eva_state_dict(plain_ours, data, show_progress_bar=False)
    ours, theirs = _models(base, dict(tau=0.9, whiten=True), r=4, target_modules=targets)
    mine = surgery.get_eva_state_dict(ours, data, show_progress_bar=False)
    reference = peft.get_eva_state_dict(theirs, data, show_progress_bar=False)
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in reference.items()}
    for key, rows in mine.items():
        scale = rows / plain[key]   # one factor per row: 1 / sqrt(s_i)
        assert max_diff(scale, scale[:, :1].expand_as(scale)) <= 1e-6
        group = [k for k in mine if k.rsplit(".", 2)[0] == key.rsplit(".", 2)[0] and k.endswith(("q_proj", "v_proj"))]
        shared = [k for k in group if k != key] if "v_proj" in targets else []
        extra = torch.tensor([sum(mine[k].shape[0] > i for k in shared) for i in range(rows.shape[0])])
        expected = rows * scale ** extra.view(-1, 1).to(rows.dtype) if key.endswith(("q_proj", "v_proj")) else rows
        assert max_diff(reference[key], expected) <= TOL, key


# -- the initialised model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, {"use_rslora": True}, {"lora_alpha": 16, "rank_pattern": {"down_proj": 2}},
                                   {"use_dora": True}], ids=["plain", "rslora", "patterns", "dora"])
@pytest.mark.parametrize("eva", [dict(rho=2.0, tau=0.9), dict(rho=2.0, tau=0.9, adjust_scaling_factors=False)],
                         ids=["adjusted", "not-adjusted"])
def test_initialised_model_equals_peft(eva, extra):
    ours, theirs = _models(tm.tiny_llama(), eva, r=4, target_modules=LLAMA, **extra)
    scaling_before = {n: m.scaling["default"] for n, m in _lora_layers(ours).items()}
    data = batches()
    surgery.initialize_lora_eva_weights(ours, data, show_progress_bar=False)
    peft.initialize_lora_eva_weights(theirs, data, show_progress_bar=False)
    mine, other = ours.peft_config["default"], theirs.peft_config["default"]
    assert mine.rank_pattern == other.rank_pattern and mine.alpha_pattern == other.alpha_pattern
    assert mine.target_modules == other.target_modules
    assert _ranks(ours) == _ranks(theirs) and len(set(_ranks(ours).values())) > 1   # ranks were redistributed
    a, b = ours.state_dict(), theirs.state_dict()
    assert set(a) == set(b) and max(max_diff(a[k], b[k]) for k in a) <= TOL
    ids = data[0]["input_ids"]
    assert max_diff(_logits(ours, ids), _logits(theirs, ids)) <= TOL
    if eva.get("adjust_scaling_factors", True) and not extra.get("use_rslora"):   # alpha' / r' = alpha / r
        assert all(m.scaling["default"] == scaling_before[n] for n, m in _lora_layers(ours).items())
    plan_ranks = {rw.path: rw.params["r"] for rw in ours.plan().rewrites}
    assert plan_ranks == _ranks(ours)   # the plan still describes the model
    assert ours.plan().trainable_params == ours.get_nb_trainable_parameters()[0]


def test_a_rank_of_zero_takes_the_adapter_off_and_saves_and_loads_both_ways(tmp_path):
    """PEFT's GPU test: a layer given 0 rows loses its adapter; the saved adapter loads in either library and
    runs the same."""
    base, data = tm.tiny_llama(), batches()
    ours, theirs = _models(base, dict(tau=0.9), r=4, target_modules=LLAMA)
    state = surgery.get_eva_state_dict(ours, data, show_progress_bar=False)
    gone = PREFIX + "model.layers.0.self_attn.q_proj"
    state[gone] = state[gone][:0]
    surgery.initialize_lora_eva_weights(ours, eva_state_dict=state)
    peft.initialize_lora_eva_weights(theirs, eva_state_dict={k: v.clone() for k, v in state.items()})
    assert type(ours.base_model.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert gone.removeprefix(PREFIX) not in ours.targeted_module_names
    assert ours.plan().trainable_params == ours.get_nb_trainable_parameters()[0]
    assert ours.peft_config["default"].target_modules == theirs.peft_config["default"].target_modules
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    mine, other = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("ours", "theirs"))
    assert mine == other
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("ours", "theirs"))
    assert set(a) == set(b) and max(max_diff(a[k], b[k]) for k in a) <= TOL
    ids = data[0]["input_ids"]
    expected = _logits(ours, ids)
    assert max_diff(_logits(theirs, ids), expected) <= TOL
    for loaded in (peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours"),
                   surgery.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs"),
                   peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours", low_cpu_mem_usage=True)):
        assert max_diff(_logits(loaded, ids), expected) <= TOL
        assert type(loaded.base_model.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_a_state_dict_of_the_plain_model_initialises_the_peft_model():
    """PEFT's documented flow: get_eva_state_dict(model, dataloader, peft_config) on the plain model, then
    initialize_lora_eva_weights(peft_model, eva_state_dict=...). Its keys are paths in the base model; surgery
    accepts them (peft 0.21.2 matches only base_model.model.<path> and re-initialises every layer instead)."""
    base, data = tm.tiny_llama(), batches()
    ours, _ = _models(base, dict(tau=0.9), r=4, target_modules=LLAMA)
    config = surgery.LoraConfig(r=4, target_modules=LLAMA, init_lora_weights="eva", eva_config=surgery.EvaConfig(tau=0.9))
    plain = surgery.get_eva_state_dict(copy.deepcopy(base), data, config, show_progress_bar=False)
    assert set(plain) == {k.removeprefix(PREFIX) for k in surgery.get_eva_state_dict(ours, data, show_progress_bar=False)}
    surgery.initialize_lora_eva_weights(ours, eva_state_dict=plain)
    layers = dict(ours.named_modules())
    for path, rows in plain.items():
        assert torch.equal(layers[PREFIX + path].lora_A["default"].weight, rows.float())


def test_unsupported_layers_are_initialised_as_lora_with_peft_warning():
    """Embedding targets are not EVA's: re-initialised with init_lora_weights=True, warned about (PEFT's words);
    ranks, patterns and targets still equal peft's."""
    ours, theirs = _models(tm.tiny_llama(), dict(tau=0.9), r=4, target_modules=["q_proj", "embed_tokens"])
    data = batches()
    with pytest.warns(UserWarning, match="the following layers were initialized with init_lora_weights=True because "
                                         "they were not found in the eva state_dict:") as record:
        surgery.initialize_lora_eva_weights(ours, data, show_progress_bar=False)
    assert "['model.embed_tokens']" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.initialize_lora_eva_weights(theirs, data, show_progress_bar=False)
    mine, other = ours.peft_config["default"], theirs.peft_config["default"]
    assert (mine.target_modules, mine.rank_pattern, mine.alpha_pattern) == \
           (other.target_modules, other.rank_pattern, other.alpha_pattern)
    embedding = ours.base_model.model.model.embed_tokens
    assert torch.count_nonzero(embedding.lora_embedding_A["default"]) == 0   # LoRA's embedding init: A = 0


def test_twenty_targets_or_more_are_saved_as_peft_minimal_suffixes(tmp_path):
    """From 20 adapted layers on, target_modules is PEFT's shortest suffixes. Here one down_proj gets rank 0: surgery's
    suffixes leave it out ('0.mlp.down_proj', '2.mlp.down_proj'); peft 0.21.2 does not count the removed layer
    among the others and writes 'down_proj', which selects it again when the adapter is loaded."""
    base = tm.tiny_llama(num_hidden_layers=3)
    ours, theirs = _models(base, dict(tau=0.9, rho=1.5), r=2, target_modules="all-linear")
    data = batches(n=4)
    surgery.initialize_lora_eva_weights(ours, data, show_progress_bar=False)
    peft.initialize_lora_eva_weights(theirs, data, show_progress_bar=False)
    assert _ranks(ours) == _ranks(theirs) and len(_ranks(ours)) == 20   # 21 linear layers, one removed
    assert ours.peft_config["default"].rank_pattern == theirs.peft_config["default"].rank_pattern
    paths = [n for n, _ in base.named_modules() if n]

    def selected(suffixes):
        return {p for p in paths if any(p == s or p.endswith("." + s) for s in suffixes)}

    mine, other = ours.peft_config["default"].target_modules, theirs.peft_config["default"].target_modules
    assert selected(mine) == set(_ranks(ours))
    assert selected(other) == set(_ranks(ours)) | {"model.layers.1.mlp.down_proj"}
    assert mine == minimal_suffixes(set(_ranks(ours)), set(paths) - set(_ranks(ours)))
    ours.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert set(_ranks(loaded)) == set(_ranks(ours))
    ids = data[0]["input_ids"]
    assert max_diff(_logits(loaded, ids), _logits(ours, ids)) <= TOL
    names = [f"model.layers.{i}.{kind}.{leaf}" for i in range(4) for kind, leaf in
             (("self_attn", "q_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))]
    for targets, others in ((names[:9], names[9:]), (names[::2], names[1::2]), (names, ["lm_head"])):
        assert minimal_suffixes(targets, others) == _find_minimal_target_modules(targets, others)


def test_rebuilt_adapters_keep_float32_and_train():
    """On a bf16 base the factors are float32 (autocast) before EVA and after a rank change; they train."""
    ours, _ = _models(tm.tiny_llama().to(torch.bfloat16), dict(tau=0.9), r=4, target_modules=LLAMA)
    surgery.initialize_lora_eva_weights(ours, batches(), show_progress_bar=False)
    lora = {n: p for n, p in ours.named_parameters() if "lora_" in n}
    assert {p.dtype for p in lora.values()} == {torch.float32} and all(p.requires_grad for p in lora.values())
    assert all(not p.requires_grad for n, p in ours.named_parameters() if "lora_" not in n)
    ours(input_ids=batches()[0]["input_ids"]).logits.float().sum().backward()
    assert all(p.grad is not None for n, p in lora.items() if "lora_B" in n)


def test_an_adapter_on_the_meta_device_is_built_by_eva():
    """LoraModel(..., low_cpu_mem_usage=True) leaves the factors on the meta device: EVA builds them (as PEFT),
    with the same result as on a materialised adapter."""
    base, data = tm.tiny_llama(), batches()
    config = surgery.LoraConfig(r=4, target_modules=LLAMA, init_lora_weights="eva", eva_config=surgery.EvaConfig(tau=0.9))
    tuner = surgery.LoraModel(copy.deepcopy(base), config.copy(), "default", low_cpu_mem_usage=True)
    assert tuner.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.device.type == "meta"
    surgery.initialize_lora_eva_weights(tuner, data, show_progress_bar=False)
    reference, _ = _models(base, dict(tau=0.9), r=4, target_modules=LLAMA)
    surgery.initialize_lora_eva_weights(reference, data, show_progress_bar=False)
    expected = {k.removeprefix("base_model."): v for k, v in reference.state_dict().items() if "lora_A" in k}
    mine = {k: v for k, v in tuner.state_dict().items() if "lora_A" in k}
    assert set(mine) == set(expected) and max(max_diff(mine[k], expected[k]) for k in mine) <= TOL


def test_a_single_process_group_gathers_the_same_rows(tmp_path):
    """Under torch.distributed (gloo, one rank) the rows are gathered across ranks: the same result, with PEFT's
    warning."""
    import torch.distributed as dist

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config, _ = _configs(dict(tau=0.9), r=4, target_modules=LLAMA)
    base, data = tm.tiny_llama(), batches(n=4)
    expected = surgery.get_eva_state_dict(copy.deepcopy(base), data, config, show_progress_bar=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        with pytest.warns(UserWarning, match="EVA initialization will gather tensors from all ranks"):
            gathered = surgery.get_eva_state_dict(copy.deepcopy(base), data, config)   # with its progress bar
    finally:
        dist.destroy_process_group()
    _assert_same_state_dict(gathered, expected)


class _AttentionMLP(torch.nn.Module):
    """Embedding, nn.MultiheadAttention and two Linear layers."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(128, 16)
        self.attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)
        self.lin = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        return self.head(torch.relu(self.lin(self.attn(h, h, h)[0])))


def test_multihead_attention_and_embedding_targets_keep_the_default_init():
    """EVA initialises the Linear layers; the MultiheadAttention and Embedding adapters get init_lora_weights=True
    (PEFT's rule). peft 0.21.2 fails on this model (it hooks MHA's inner out_proj, which MHA's forward never calls:
    IndexError); the Linear layers' components equal peft's on the model without the MHA target."""
    torch.manual_seed(0)
    base = _AttentionMLP().eval()
    data = batches(n=5, padded=False)
    ours, _ = _models(base, dict(tau=0.9), r=2, target_modules=["attn", "lin", "head", "emb"])
    state = surgery.get_eva_state_dict(ours, data, show_progress_bar=False)
    assert list(state) == [PREFIX + "lin", PREFIX + "head"]
    with pytest.warns(UserWarning, match=r"not found in the eva state_dict: \['emb', 'attn'\]"):
        surgery.initialize_lora_eva_weights(ours, eva_state_dict=state)
    assert ours.peft_config["default"].target_modules == ["lin", "head", "emb", "attn"]
    for name in ("lin", "head"):
        layer = getattr(ours.base_model.model, name)
        assert torch.equal(layer.lora_A["default"].weight, state[PREFIX + name].float())
    linear_only_ours, linear_only_theirs = _models(base, dict(tau=0.9), r=2, target_modules=["lin", "head", "emb"])
    _assert_same_state_dict(surgery.get_eva_state_dict(linear_only_ours, data, show_progress_bar=False),
                            peft.get_eva_state_dict(linear_only_theirs, data, show_progress_bar=False))
