"""DoRA on nn.Conv1d/2d/3d and nn.Embedding against real PEFT: the same state-dict keys and shapes (the magnitude is
`lora_magnitude_vector.<adapter>.weight`, (1, out, 1...) for convs and (embedding_dim,) for embeddings), the same
initial magnitude, forward, gradients, merged / unmerged weights and checkpoints.

Tolerances (float32): outputs 1e-5 and weights 1e-5 relative to their magnitude. surgery's row norm comes from a
decomposition (no W + sBA temporary) where PEFT forms the matrix, so the two differ by float32 rounding only.
Half precision: one unit in the last place of the base dtype, as tests/methods/lora/test_half_precision.py.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import surgery
from surgery.methods.lora.dora import DoraMagnitude
from tests.support.helpers import max_diff, perturb_adapters

peft = pytest.importorskip("peft")

TOL = 1e-5
ULP = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}


class ConvNet(nn.Module):
    """One conv (the target) and a Linear head; `conv` takes the ConvNd kwargs."""

    def __init__(self, dim: int = 2, c_in: int = 4, c_out: int = 6, **conv):
        super().__init__()
        conv = {"kernel_size": 3, "padding": 1, **conv}
        self.conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim](c_in, c_out, **conv)
        self.head = nn.Linear(c_out, 3)
        self.dim = dim

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(2).mean(-1))

    def inputs(self, batch: int = 3) -> torch.Tensor:
        size = {1: (11,), 2: (7, 6), 3: (3, 5, 4)}[self.dim]
        return torch.randn(batch, self.conv.in_channels, *size, generator=torch.Generator().manual_seed(5))


class ScaledEmbedding(nn.Embedding):
    """Gemma-style: the forward multiplies the lookup by embed_scale."""

    def __init__(self, *args, embed_scale: float = 2.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.embed_scale = embed_scale

    def forward(self, ids):
        return super().forward(ids) * self.embed_scale


class EmbedNet(nn.Module):
    def __init__(self, scaled: bool = False, vocab: int = 20, dim: int = 6):
        super().__init__()
        self.emb = (ScaledEmbedding if scaled else nn.Embedding)(vocab, dim, padding_idx=0)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids):
        return self.head(self.emb(ids)).mean(1)

    def inputs(self, batch: int = 3) -> torch.Tensor:
        return torch.randint(0, self.emb.num_embeddings, (batch, 5), generator=torch.Generator().manual_seed(5))


BASES = {
    "conv2d": lambda: ConvNet(2),
    "conv2d_strided_nobias": lambda: ConvNet(2, stride=2, bias=False),
    "conv2d_1x1": lambda: ConvNet(2, kernel_size=1, padding=0),
    "conv2d_dilated": lambda: ConvNet(2, dilation=2, padding=2),
    "conv1d": lambda: ConvNet(1),
    "conv3d": lambda: ConvNet(3, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
    "embedding": lambda: EmbedNet(),
    "embedding_scaled": lambda: EmbedNet(scaled=True),
}
PEFT_RUNS = [k for k in BASES if k != "conv2d_dilated"]   # PEFT's lora_A ignores dilation (shapes mismatch)


def _targets(name):
    return ["emb"] if name.startswith("embedding") else ["conv"]


def _seeded(name):
    torch.manual_seed(0)
    return BASES[name]()


def _pair(name, perturb=True, **kwargs):
    """(base, peft model, surgery model holding peft's weights); both in eval mode."""
    base = _seeded(name)
    config = dict(target_modules=_targets(name), r=4, lora_alpha=8, use_dora=True, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config))
    if perturb:
        perturb_adapters(theirs)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**config))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return base, theirs.eval(), ours.eval()


def _layer(model):
    inner = model.get_base_model()
    return inner.conv if hasattr(inner, "conv") else inner.emb


def _close(got, want, tol=TOL):
    scale = max(want.float().abs().max().item(), 1.0)
    assert max_diff(got, want) <= tol * scale, max_diff(got, want)


@pytest.mark.parametrize("name", PEFT_RUNS)
def test_keys_shapes_and_initial_magnitude_equal_peft(name):
    base, theirs, ours = _pair(name, perturb=False)
    theirs_sd, ours_sd = theirs.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in theirs_sd.items()}
    key = next(k for k in ours_sd if "lora_magnitude_vector" in k)
    assert key.endswith("lora_magnitude_vector.default.weight")
    fresh = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(target_modules=_targets(name), r=4,
                                                                          use_dora=True))
    _close(fresh.state_dict()[key], theirs_sd[key])   # B (or embedding A) is zero: m = ||W|| per row
    x = base.inputs()
    with torch.no_grad():
        assert max_diff(fresh(x), base(x)) <= TOL   # and the output is the base's
    assert fresh.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


@pytest.mark.parametrize("name", PEFT_RUNS)
def test_magnitude_of_non_zero_factors_equals_peft(name):
    """With init_lora_weights=False both libraries compute m = ||W + s B A|| from non-zero factors."""
    base, theirs, ours = _pair(name, perturb=False, init_lora_weights=False)
    recomputed = DoraMagnitude.for_layer(_layer(ours), "default").weight   # from peft's factors, loaded
    _close(recomputed, _layer(theirs).lora_magnitude_vector["default"].weight)


@pytest.mark.parametrize("name", PEFT_RUNS)
def test_forward_and_gradients_equal_peft(name):
    base, theirs, ours = _pair(name)
    x = base.inputs()
    with torch.no_grad():
        want = theirs(x)
        assert max_diff(want, base(x)) > 1e-3, "the adapter must change the output"
        _close(ours(x), want)
    for model in (theirs, ours):
        model.train()
        model.zero_grad()
        model(x).square().sum().backward()
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    assert any("lora_magnitude_vector" in n for n in grads)
    for n, p in ours.named_parameters():
        if p.requires_grad:
            _close(p.grad, grads[n], tol=1e-4)


@pytest.mark.parametrize("name", ["conv2d", "conv2d_strided_nobias", "conv1d", "conv3d"])
def test_dropout_in_training_equals_peft(name):
    """With lora_dropout both recompute the base output on the dropped input (the same random stream)."""
    base, theirs, ours = _pair(name, lora_dropout=0.3)
    x = base.inputs()
    outs = []
    for model in (theirs, ours):
        model.train()
        torch.manual_seed(7)
        outs.append(model(x))
    _close(outs[1], outs[0])
    torch.manual_seed(7)
    assert max_diff(theirs(x), theirs.eval()(x)) > 1e-4   # dropout did act


@pytest.mark.parametrize("name", PEFT_RUNS)
@pytest.mark.parametrize("safe", [False, True])
def test_merge_and_unmerge_equal_peft(name, safe):
    base, theirs, ours = _pair(name)
    x = base.inputs()
    with torch.no_grad():
        unmerged = ours(x)
    original = _layer(ours).get_base_layer().weight.detach().clone()
    for model in (theirs, ours):
        model.merge_adapter(safe_merge=safe)
    merged_theirs = _layer(theirs).get_base_layer().weight
    merged_ours = _layer(ours).get_base_layer().weight
    _close(merged_ours, merged_theirs)
    with torch.no_grad():
        _close(ours(x), unmerged)
        _close(ours(x), theirs(x))
    for model in (theirs, ours):
        model.unmerge_adapter()
    _close(_layer(ours).get_base_layer().weight, original)
    _close(_layer(ours).get_base_layer().weight, _layer(theirs).get_base_layer().weight)
    with torch.no_grad():
        unloaded = copy.deepcopy(ours).merge_and_unload()
        _close(unloaded(x), unmerged)
    assert type(_layer_of(unloaded, name)) is type(_layer_of(base, name))


def _layer_of(module, name):
    return module.emb if name.startswith("embedding") else module.conv


@pytest.mark.parametrize("name", ["conv2d", "conv3d", "embedding"])
def test_two_dora_adapters_merge_like_peft(name):
    """The second adapter's norm comes from the unmerged weight (the first taken out), as in PEFT."""
    base = _seeded(name)
    models = []
    for lib in (peft, surgery):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = lib.get_peft_model(copy.deepcopy(base), lib.LoraConfig(target_modules=_targets(name), r=4,
                                                                       use_dora=True))
            m.add_adapter("other", lib.LoraConfig(target_modules=_targets(name), r=2, use_dora=True))
        models.append(m)
    theirs, ours = models
    perturb_adapters(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for m in models:   # both adapters active, set on the layers (the same call in both libraries)
        for module in m.modules():
            if hasattr(module, "lora_magnitude_vector"):
                module.set_adapter(["default", "other"])
        m.eval()
    x = base.inputs()
    with torch.no_grad():
        _close(ours(x), theirs(x))
        for m in models:
            m.merge_adapter(["default", "other"])
        _close(_layer(ours).get_base_layer().weight, _layer(theirs).get_base_layer().weight)
        _close(ours(x), theirs(x))


@pytest.mark.parametrize("name", ["conv2d", "conv1d", "embedding_scaled"])
def test_checkpoints_load_across_libraries(name, tmp_path):
    base, theirs, ours = _pair(name)
    x = base.inputs()
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    in_ours = surgery.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs").eval()
    with torch.no_grad():
        want = theirs(x)
        _close(in_peft(x), want)
        _close(in_ours(x), want)


@pytest.mark.parametrize("name", ["conv2d", "embedding"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_with_float32_adapters_equals_peft(name, dtype):
    base = _seeded(name).to(dtype)
    config = dict(target_modules=_targets(name), r=4, lora_alpha=8, use_dora=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config))
    perturb_adapters(theirs, biases=False)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**config))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = base.inputs()
    x = x.to(dtype) if x.is_floating_point() else x
    with torch.no_grad():
        want = theirs.eval()(x)
        got = ours.eval()(x)
    assert got.dtype == want.dtype == dtype
    assert max_diff(got, want) <= 2 * ULP[dtype] * max(want.float().abs().max().item(), 1e-3)


# -- behaviour of our own -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["conv2d", "conv3d", "embedding"])
def test_mixed_batch_with_dora_equals_per_sample_forwards(name):
    """PEFT refuses adapter_names with DoRA (ValueError); surgery runs each DoRA adapter on its own rows, which
    equals running each sample with its adapter alone (its norm is per adapter, not per sample)."""
    base = _seeded(name)
    model = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(
        target_modules=_targets(name), r=4, use_dora=True, init_lora_weights=False))
    model.add_adapter("plain", surgery.LoraConfig(target_modules=_targets(name), r=2, init_lora_weights=False))
    perturb_adapters(model)
    model.eval()
    x = base.inputs(batch=4)
    names = ["default", "plain", "__base__", "default"]
    with torch.no_grad():
        mixed = model(x, adapter_names=names)
        for i, adapter in enumerate(names):
            if adapter == "__base__":
                with model.disable_adapter():
                    alone = model(x[i:i + 1])
            else:
                model.set_adapter(adapter)
                alone = model(x[i:i + 1])
            _close(mixed[i], alone[0], tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules=_targets(name),
                                                                          use_dora=True)).eval()
    with pytest.raises(ValueError, match="DoRA"):   # the oracle's behaviour, documented here
        theirs(x, adapter_names=["default", "__base__", "default", "default"])


@pytest.mark.parametrize("name", ["conv2d", "embedding"])
def test_delete_adapter_drops_every_per_adapter_entry(name):
    base = _seeded(name)
    model = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(target_modules=_targets(name),
                                                                          use_dora=True))
    model.add_adapter("other", surgery.LoraConfig(target_modules=_targets(name), use_dora=True))
    layer = _layer(model)
    assert set(layer.use_dora) == {"default", "other"}
    model.delete_adapter("other")
    for attr in ("r", "lora_alpha", "scaling", "use_dora"):
        assert set(getattr(layer, attr)) == {"default"}, attr
    assert set(layer.lora_magnitude_vector) == {"default"}
    assert not any(".other" in k for k in model.state_dict())


def test_magnitude_is_trainable_and_only_the_adapter_trains():
    model = surgery.get_peft_model(ConvNet(2), surgery.LoraConfig(target_modules=["conv"], use_dora=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"base_model.model.conv.lora_A.default.weight", "base_model.model.conv.lora_B.default.weight",
                         "base_model.model.conv.lora_magnitude_vector.default.weight"}


def test_meta_device_magnitude_has_peft_shape():
    with torch.device("meta"):
        conv, emb = ConvNet(3), EmbedNet()
    for module, target, shape in ((conv, "conv", (1, 6, 1, 1, 1)), (emb, "emb", (6,))):
        model = surgery.get_peft_model(module, surgery.LoraConfig(target_modules=[target], use_dora=True))
        magnitude = _layer(model).lora_magnitude_vector["default"].weight
        assert magnitude.device.type == "meta" and tuple(magnitude.shape) == shape
