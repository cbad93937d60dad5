"""A diffusers transformer (SD3Transformer2DModel, the MMDiT of Stable Diffusion 3), for real: plan, train,
save/load both ways with PEFT and in diffusers' own LoRA file layout, merge, and `surgery plan` on a local config.

LoRA r=4 (alpha 8) on both streams of the joint attention (to_q/k/v, to_out.0 for the image tokens; add_q/k/v_proj,
to_add_out for the text tokens) and on the patch embedding pos_embed.proj, a Conv2d with kernel = stride = 2.
The last block is context_pre_only: it has no to_add_out, and its text queries (add_q_proj) feed only the text
output the model drops, so a LoRA there could never train: exclude_modules leaves it out.
The shared checks run through TestSD3Transformer.
"""
from diffusers.loaders import SD3LoraLoaderMixin
from torch import nn

import surgery
from tests.models import parity
from tests.support import diffusers_models as dm

SD3 = dm.SD3


class TestSD3Transformer(parity.FamilyChecks):
    family = SD3


def test_both_streams_and_the_strided_patch_embedding_are_adapted():
    paths = parity.peft_wrapped(SD3.peft())[0]
    last = dm.sd3_config()["num_layers"] - 1
    assert "pos_embed.proj" in paths
    assert "transformer_blocks.0.attn.to_add_out" in paths
    assert f"transformer_blocks.{last}.attn.to_add_out" not in paths   # context_pre_only: not there to adapt
    assert f"transformer_blocks.{last}.attn.add_q_proj" not in paths   # excluded
    assert f"transformer_blocks.{last}.attn.add_k_proj" in paths and "transformer_blocks.0.attn.add_q_proj" in paths
    patch = SD3.surgery().get_base_model().pos_embed.proj
    base = patch.get_base_layer()
    assert isinstance(base, nn.Conv2d) and base.stride == (2, 2)
    # A keeps the base conv's kernel and stride (it sees the same patches); B is a 1x1 conv
    assert patch.lora_A["default"].stride == base.stride and patch.lora_A["default"].kernel_size == base.kernel_size
    assert patch.lora_B["default"].kernel_size == (1, 1)


def test_surgery_file_loads_in_diffusers(tmp_path):
    dm.check_surgery_file_in_diffusers(SD3, "transformer", tmp_path)


def test_diffusers_files_load_in_surgery(tmp_path):
    dm.check_diffusers_file_in_surgery(SD3, "transformer", SD3LoraLoaderMixin, tmp_path)


def test_old_lora_down_up_layout_reads_the_same_in_both(tmp_path):
    dm.check_old_layout(SD3, "transformer", tmp_path)


def _pipeline_load(directory: str, transformer) -> None:
    state, metadata = SD3LoraLoaderMixin.lora_state_dict(directory, return_lora_metadata=True)
    assert metadata   # the config came from the file's header
    SD3LoraLoaderMixin.load_lora_into_transformer(state, transformer, adapter_name="default", metadata=metadata)


def test_pipeline_loader_reads_surgery_file(tmp_path):
    dm.check_pipeline_reads_surgery_file(SD3, "transformer", _pipeline_load, tmp_path)


def test_surgery_loads_a_diffusers_file_into_its_peft_model(tmp_path):
    # a second adapter, from diffusers' layout, next to one trained with surgery: only the named one changes
    from surgery.integrations.diffusers_lora import load_diffusers_lora

    theirs = dm.diffusers_adapted(SD3)
    theirs.save_lora_adapter(str(tmp_path))
    model = SD3.surgery()
    first = {k: v.clone() for k, v in surgery.get_peft_model_state_dict(model).items()}
    assert load_diffusers_lora(model, tmp_path, prefix=None, adapter_name="style") is model
    assert model.active_adapter == "default"   # as PeftModel.load_adapter: loaded, not activated
    assert all(v.equal(first[k]) for k, v in surgery.get_peft_model_state_dict(model).items())
    model.set_adapter("style")
    dm.assert_same_output(model.eval(), SD3.output(theirs), SD3)


def test_cli_plans_a_local_transformer_config(tmp_path):
    data = dm.check_cli_plans_local_config(SD3, tmp_path)
    patch = [r for r in data["rewrites"] if r["path"] == "pos_embed.proj"]
    assert len(patch) == 1 and patch[0]["base_type"] == "Conv2d"
