"""A diffusers UNet2DConditionModel, for real: plan, train, save/load both ways with PEFT and in diffusers' own
LoRA file layout, merge, and `surgery plan` on the bundled Stable Diffusion 1.5 UNet.

LoRA r=4 (alpha 8, so a scale other than 1 must travel with the file) on the attention projections (to_q, to_k,
to_v, to_out.0: Linear) and the convolutions (resnets' conv1 / conv2 / conv_shortcut: 3x3 and 1x1 Conv2d; the
transformer blocks' proj_in / proj_out: 1x1 Conv2d in this UNet). The shared checks run through TestUNet.
"""
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from torch import nn

import surgery
from tests.models import parity
from tests.support import diffusers_models as dm

UNET = dm.UNET


class TestUNet(parity.FamilyChecks):
    family = UNET


def test_convolutions_and_attention_are_both_adapted():
    # the point of this family: 3x3 and 1x1 convolutions get conv LoRA layers next to the Linear projections
    p = surgery.plan(UNET.build(), surgery.LoraConfig(**UNET.lora))
    kinds = {rw.path.rsplit(".", 1)[-1] if not rw.path.endswith("to_out.0") else "to_out.0": rw.base_type
             for rw in p.rewrites}
    assert {kinds[n] for n in ("conv1", "conv2", "conv_shortcut", "proj_in", "proj_out")} == {"Conv2d"}
    assert {kinds[n] for n in ("to_q", "to_k", "to_v", "to_out.0")} == {"Linear"}
    model = UNET.surgery()
    conv = model.get_base_model().get_submodule("down_blocks.0.resnets.0.conv1")
    assert isinstance(conv.get_base_layer(), nn.Conv2d) and conv.get_base_layer().kernel_size == (3, 3)
    # PEFT's conv LoRA: A is a conv with the base kernel, B a 1x1 conv
    assert tuple(conv.lora_A["default"].weight.shape) == (4, 32, 3, 3)
    assert tuple(conv.lora_B["default"].weight.shape) == (32, 4, 1, 1)


def test_surgery_file_loads_in_diffusers(tmp_path):
    dm.check_surgery_file_in_diffusers(UNET, "unet", tmp_path)


def test_diffusers_files_load_in_surgery(tmp_path):
    dm.check_diffusers_file_in_surgery(UNET, "unet", StableDiffusionLoraLoaderMixin, tmp_path)


def test_old_lora_down_up_layout_reads_the_same_in_both(tmp_path):
    dm.check_old_layout(UNET, "unet", tmp_path)


def _pipeline_load(directory: str, unet) -> None:
    state, alphas, metadata = StableDiffusionLoraLoaderMixin.lora_state_dict(directory, return_lora_metadata=True)
    assert alphas is None and metadata   # a PEFT-named file: no kohya alphas; the config came from the header
    StableDiffusionLoraLoaderMixin.load_lora_into_unet(state, alphas, unet, adapter_name="default", metadata=metadata)


def test_pipeline_loader_reads_surgery_file(tmp_path):
    dm.check_pipeline_reads_surgery_file(UNET, "unet", _pipeline_load, tmp_path)


def test_cli_plans_bundled_stable_diffusion_unet(tmp_path, monkeypatch):
    lora = dict(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    table = parity.check_cli_plan("stable-diffusion-v1-5-unet", lora, tmp_path, monkeypatch)
    # cross-attention keys and values read the 768-wide CLIP text states
    assert "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k" in table and "320x768" in table


def test_cli_plans_convolutions_of_a_local_unet_config(tmp_path):
    data = dm.check_cli_plans_local_config(UNET, tmp_path)
    assert {r["base_type"] for r in data["rewrites"]} == {"Conv2d", "Linear"}


def test_cli_refuses_what_is_not_a_diffusers_model(tmp_path, capsys):
    from surgery.cli.main import main

    cfg = tmp_path / "lora.json"
    cfg.write_text('{"peft_type": "LORA", "target_modules": ["to_q"]}')
    (tmp_path / "pipe").mkdir()   # a pipeline's model_index.json read as a config: name the component instead
    (tmp_path / "pipe" / "config.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (tmp_path / "typo.json").write_text('{"_class_name": "UNet2DConditinModel"}')
    (tmp_path / "custom.json").write_text('{"_class_name": ["my_module", "MyUNet"]}')   # remote code
    for source, needle in ((tmp_path / "pipe", "is a pipeline (model_index.json), not a model"),
                           (tmp_path / "typo.json", "did you mean 'UNet2DConditionModel'?"),
                           (tmp_path / "custom.json", "needs remote code")):
        assert main(["plan", str(source), "--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert needle in err and "_class_name" in err and "Traceback" not in err
    assert main(["plan", "stable-diffusion-v1-5-unet", "--config", str(cfg), "--task", "CAUSAL_LM"]) == 2
    assert "no task heads" in capsys.readouterr().err
