"""diffusers' LoRA file layout (surgery.integrations.diffusers_lora): what is written, what is inferred from a
file without metadata, which modules are adapted, and every kind of hostile input refused with a message that
names the key or field, the value and what would be valid; a refused load leaves the model as it was.

The tiny SD3 transformer stands for a diffusers model (diffusers' own writer is the reference); a small torch
module with a Linear, a Conv2d and a name that is also another module's tail covers targeting and refusals.
"""
import json

import pytest
import torch
from diffusers.loaders import SD3LoraLoaderMixin
from peft.utils import get_peft_model_state_dict as peft_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import surgery
from surgery.errors import CheckpointError
from surgery.integrations.diffusers_lora import (METADATA_KEY, WEIGHT_NAME, load_diffusers_lora,
                                                 read_diffusers_lora, save_diffusers_lora)
from tests.models.parity import TOL, max_diff
from tests.support import diffusers_models as dm
from tests.support.helpers import perturb_adapters, write_pickle_payload


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.to_q = nn.Linear(8, 8)
        self.proj_out = nn.Linear(8, 8)

    def forward(self, x):
        h = self.conv(x)
        t = self.proj_out(self.to_q(h.flatten(2).transpose(1, 2)))
        return t.transpose(1, 2).reshape_as(h)


class Tiny(nn.Module):
    """Top-level proj_out is also the tail of blocks.N.proj_out: a name-suffix match would take all three."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.proj_out = nn.Linear(8, 8)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.proj_out(x.flatten(2).transpose(1, 2))


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().eval()


def pixels() -> torch.Tensor:
    return torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(5))


def out(model) -> torch.Tensor:
    with torch.no_grad():
        return model(pixels())


def tiny_file(tmp_path, **lora) -> tuple:
    """A surgery-injected Tiny with random factors saved in diffusers' layout: (file, model)."""
    model = tiny()
    surgery.inject_adapter_in_model(surgery.LoraConfig(**{"r": 2, "target_modules": ["to_q", "conv"], **lora}), model)
    perturb_adapters(model, biases=False)
    return save_diffusers_lora(model, tmp_path, prefix="unet"), model


def _read(path):
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()


# -- the layout ------------------------------------------------------------------------------------------
def test_file_is_what_diffusers_save_lora_weights_writes(tmp_path):
    theirs = dm.diffusers_adapted(dm.SD3)
    SD3LoraLoaderMixin.save_lora_weights(str(tmp_path / "d"), transformer_lora_layers=peft_state_dict(theirs),
                                         transformer_lora_adapter_metadata=theirs.peft_config["default"].to_dict())
    ours = dm.SD3.build()
    surgery.inject_adapter_in_model(surgery.LoraConfig(**dm.SD3.lora), ours)
    surgery.set_peft_model_state_dict(ours, peft_state_dict(theirs))   # the same adapter tensors
    save_diffusers_lora(ours, tmp_path / "s", prefix="transformer")
    (want, want_header), (got, got_header) = _read(tmp_path / "d" / WEIGHT_NAME), _read(tmp_path / "s" / WEIGHT_NAME)
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want)
    assert all(k.startswith("transformer.") and "base_model" not in k for k in got)
    assert got_header.keys() == want_header.keys() == {"format", METADATA_KEY}
    want_meta, got_meta = json.loads(want_header[METADATA_KEY]), json.loads(got_header[METADATA_KEY])
    targets = "transformer.target_modules"   # a set in both libraries: its list order is arbitrary
    assert set(got_meta.pop(targets)) == set(want_meta.pop(targets))
    assert got_meta == want_meta


def test_prefix_none_is_the_layout_of_model_save_lora_adapter(tmp_path):
    theirs = dm.diffusers_adapted(dm.SD3)
    theirs.save_lora_adapter(str(tmp_path / "d"))
    ours = load_diffusers_lora(dm.SD3.build(), tmp_path / "d", prefix=None)
    save_diffusers_lora(ours, tmp_path / "s", prefix=None)
    (want, want_header), (got, got_header) = _read(tmp_path / "d" / WEIGHT_NAME), _read(tmp_path / "s" / WEIGHT_NAME)
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want)
    assert json.loads(got_header[METADATA_KEY])["r"] == json.loads(want_header[METADATA_KEY])["r"]


def test_without_metadata_ranks_and_alpha_are_inferred_as_diffusers_does(tmp_path):
    # mixed ranks, no metadata: r = the most common rank, the others in rank_pattern, alpha = rank (scale 1)
    source = dm.surgery_injected(dm.SD3, lora_alpha=4, rank_pattern={"pos_embed.proj": 2}, alpha_pattern={
        "pos_embed.proj": 2})
    tensors = {f"transformer.{k}": v.contiguous() for k, v in surgery.get_peft_model_state_dict(source).items()}
    save_file(tensors, str(tmp_path / WEIGHT_NAME))
    assert read_diffusers_lora(tmp_path)[1] is None
    ours = load_diffusers_lora(dm.SD3.build(), tmp_path, prefix="transformer")
    config = ours.peft_config["default"]
    assert (config.r, config.lora_alpha) == (4, 4)
    assert config.rank_pattern == config.alpha_pattern == {r"^pos_embed\.proj": 2}
    theirs = dm.SD3.build()
    theirs.load_lora_adapter(str(tmp_path), prefix="transformer", weight_name=WEIGHT_NAME, adapter_name="default")
    expected = dm.SD3.output(source)
    assert max_diff(dm.SD3.output(theirs), expected) <= TOL and max_diff(dm.SD3.output(ours), expected) <= TOL


def test_only_the_modules_the_file_names_are_adapted(tmp_path):
    # as PEFT injecting from a state dict: the top-level proj_out only, not every module whose name ends so
    import peft

    model = tiny()
    surgery.inject_adapter_in_model(surgery.LoraConfig(r=2, target_modules=["proj_out"]), model)
    perturb_adapters(model, biases=False)
    tensors = {k: v for k, v in surgery.get_peft_model_state_dict(model).items() if not k.startswith("blocks.")}
    save_file({f"unet.{k}": v.contiguous() for k, v in tensors.items()}, str(tmp_path / WEIGHT_NAME))
    ours = load_diffusers_lora(tiny(), tmp_path)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=2, target_modules=["proj_out"]), tiny(), state_dict=tensors)
    assert dm.lora_paths(ours) == dm.lora_paths(theirs) == ["proj_out"]


def test_one_component_of_a_pipeline_file_is_loaded(tmp_path):
    file, model = tiny_file(tmp_path)
    tensors, metadata = read_diffusers_lora(file)
    other = {f"text_encoder.layers.0.q_proj.lora_{f}.weight": torch.zeros(2, 8) for f in "AB"}
    save_file({**tensors, **other}, str(file), metadata={"format": "pt", METADATA_KEY: json.dumps(metadata)})
    loaded = load_diffusers_lora(tiny(), file, prefix="unet")
    assert dm.lora_paths(loaded) == ["blocks.0.conv", "blocks.0.to_q", "blocks.1.conv", "blocks.1.to_q"]
    assert max_diff(out(loaded), out(model)) <= TOL
    with pytest.raises(CheckpointError, match=r"prefix = 'transformer'.*\['text_encoder', 'unet'\]"):
        load_diffusers_lora(tiny(), file, prefix="transformer")


def test_two_files_into_one_plain_model_keep_both_configs(tmp_path):
    first, _ = tiny_file(tmp_path / "a")
    second, _ = tiny_file(tmp_path / "b", target_modules=["proj_out"])
    model = load_diffusers_lora(tiny(), first)
    load_diffusers_lora(model, second, adapter_name="other")
    assert set(model.peft_config) == {"default", "other"}
    for name, file in (("default", first), ("other", second)):
        saved = {k.removeprefix("unet."): v for k, v in read_diffusers_lora(file)[0].items()}
        mine = surgery.get_peft_model_state_dict(model, adapter_name=name)
        assert mine.keys() == saved.keys() and all(mine[k].equal(saved[k]) for k in saved)
    with pytest.raises(CheckpointError, match="'other' is already in use"):
        load_diffusers_lora(model, second, adapter_name="other")


def test_dora_and_lora_bias_are_inferred_from_the_keys(tmp_path):
    file, source = tiny_file(tmp_path, use_dora=True, lora_bias=True, lora_alpha=2)   # alpha = r: as inferred
    tensors, _ = read_diffusers_lora(file)
    assert any(k.endswith("lora_magnitude_vector") for k in tensors) and any(k.endswith("lora_B.bias") for k in tensors)
    save_file(tensors, str(file))   # the same tensors, without the metadata
    loaded = load_diffusers_lora(tiny(), file)
    config = loaded.peft_config["default"]
    assert config.use_dora and config.lora_bias and config.lora_alpha == config.r == 2
    assert max_diff(out(loaded), out(source)) <= TOL


def test_write_is_atomic(tmp_path, monkeypatch):
    file, model = tiny_file(tmp_path)
    before = file.read_bytes()
    import surgery.integrations.diffusers_lora as module

    def broken(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(module, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_diffusers_lora(model, tmp_path)
    assert file.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [WEIGHT_NAME]


# -- hostile input -------------------------------------------------------------------------------------
def _rewrite(file, change) -> None:
    tensors, metadata = read_diffusers_lora(file)
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt", METADATA_KEY: json.dumps(metadata)})


def _refused(source, pattern, **kwargs):
    """The load is refused with `pattern` in the message, and a fresh model is left exactly as it was."""
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=pattern):
        load_diffusers_lora(model, source, **kwargs)
    assert not hasattr(model, "peft_config") and dm.lora_paths(model) == []
    assert model.state_dict().keys() == before.keys() and all(v.equal(before[k]) for k, v in model.state_dict().items())


KEY = "unet.blocks.0.to_q.lora_A.weight"


@pytest.mark.parametrize("change, pattern", [
    (lambda t: t.update({KEY: t[KEY].to(torch.int64)}),
     r"^unet\.blocks\.0\.to_q\.lora_A\.weight holds torch\.int64; expected a floating-point tensor \(float16, "),
    (lambda t: t.update({"unet.blocks.0.to_q.dora_scale": torch.ones(8)}),
     r"unknown key 'unet\.blocks\.0\.to_q\.dora_scale'.*lora_A\.weight, lora_B\.weight"),
    (lambda t: t.update({"unet.blocks.0.to_q.lora.down.weight": t[KEY].clone()}),   # the old name of a key it has
     r"unet\.blocks\.0\.to_q\.lora(_A|\.down)\.weight and unet\.blocks\.0\.to_q\.lora(_A|\.down)\.weight are the same"),
    (lambda t: t.update({"unet.blocks.0.to_k.lora_A.weight": torch.zeros(2, 8),
                         "unet.blocks.0.to_k.lora_B.weight": torch.zeros(8, 2)}),
     r"names module 'blocks\.0\.to_k', which Tiny does not have; closest: \['blocks\.0\.to_q'"),
    (lambda t: t.update({KEY: torch.zeros(2, 5)}),
     r"shape mismatch at blocks\.0\.to_q\.lora_A\.weight: checkpoint \(2, 5\) vs model \(2, 8\)"),
    (lambda t: t.update({KEY: torch.zeros(3, 8)}),
     r"blocks\.0\.to_q: lora_A\.weight \(3, 8\) and lora_B\.weight \(8, 2\) do not fit together"),
    (lambda t: t.pop("unet.blocks.1.conv.lora_B.weight"),
     r"blocks\.1\.conv\.lora_B\.weight is missing: the file holds \['lora_A\.weight'\]"),
    (lambda t: t.update({"unet.blocks.0.to_q.lora_B.bias": torch.zeros(8)}),
     r"blocks\.0\.to_q\.lora_B\.bias: the adapter its config describes has no place for it.*lora_bias=True"),
])
def test_bad_tensors_are_refused_naming_the_key(tmp_path, change, pattern):
    file, _ = tiny_file(tmp_path)
    _rewrite(file, change)
    _refused(file, pattern)


def test_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    write_pickle_payload(tmp_path / "evil.safetensors", marker)
    _refused(tmp_path / "evil.safetensors", r"evil\.safetensors is a pickled \(torch.save\) checkpoint")
    torch.save({"x": torch.zeros(2)}, tmp_path / WEIGHT_NAME)   # the zip container torch.save writes
    _refused(tmp_path, r"pytorch_lora_weights\.safetensors is a pickled")
    assert not marker.exists()


@pytest.mark.parametrize("cut, pattern", [
    (lambda data: data[:-10], r"is truncated: its header describes \d+ bytes, the file holds \d+"),
    (lambda data: data[:40], r"is truncated: its header says \d+ header bytes, the file holds 32"),
    (lambda data: data[:5], r"is truncated: 5 bytes, less than a safetensors header"),
    (lambda data: b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", r"is not a safetensors file \(byte 8 is"),
    (lambda data: b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage", r"its header is not JSON"),
])
def test_broken_files_are_refused(tmp_path, cut, pattern):
    file, _ = tiny_file(tmp_path)
    file.write_bytes(cut(file.read_bytes()))
    _refused(file, pattern)


@pytest.mark.parametrize("metadata, pattern", [
    ("{not json", rf"__metadata__\['{METADATA_KEY}'\] is not JSON"),
    ("[1, 2]", rf"__metadata__\['{METADATA_KEY}'\] holds a JSON list; it should hold the LoraConfig"),
    (json.dumps({"unet.peft_type": "LOHA", "unet.r": 2}), r"peft_type = 'LOHA': only LoRA files are read"),
])
def test_bad_metadata_is_refused_naming_the_field(tmp_path, metadata, pattern):
    file, _ = tiny_file(tmp_path)
    save_file(read_diffusers_lora(file)[0], str(file), metadata={"format": "pt", METADATA_KEY: metadata})
    _refused(file, pattern)


def test_other_sources_are_refused(tmp_path):
    _refused({"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(2, 8)}, "kohya / A1111 key",
             prefix=None)
    _refused({"unet.blocks.0.to_q.lora_A.weight": [0.0] * 8, "unet.blocks.0.to_q.lora_B.weight": torch.zeros(8, 1)},
             r"^unet\.blocks\.0\.to_q\.lora_A\.weight holds list; expected a floating-point tensor")
    _refused({3: torch.zeros(2)}, r"key 3 is a int; the keys of a LoRA state dict are strings")
    _refused(tmp_path / "nowhere", r"no LoRA file at .*nowhere")
    (tmp_path / "empty").mkdir()
    save_file({}, str(tmp_path / "empty" / WEIGHT_NAME))
    _refused(tmp_path / "empty", r"holds no LoRA tensors \(0 keys\)", prefix=None)
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "b.safetensors").write_bytes(b"")
    _refused(tmp_path, r"holds no pytorch_lora_weights\.safetensors and 2 other .*\['a\.safetensors', 'b\.safe")


def test_bad_save_arguments_are_refused(tmp_path):
    _, model = tiny_file(tmp_path)
    with pytest.raises(CheckpointError, match=r"weight_name = 'lora\.bin': must be a file name ending in "):
        save_diffusers_lora(model, tmp_path, weight_name="lora.bin")
    with pytest.raises(CheckpointError, match=r"adapter_name = 'style'.*adapters: \['default'\]"):
        save_diffusers_lora(model, tmp_path, adapter_name="style")
    with pytest.raises(CheckpointError, match="is a file; pass a directory"):
        save_diffusers_lora(model, tmp_path / WEIGHT_NAME)
    with pytest.raises(CheckpointError, match="Tiny has no such adapter; adapters: none"):
        save_diffusers_lora(tiny(), tmp_path)
