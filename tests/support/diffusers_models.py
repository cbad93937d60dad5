"""Tiny seeded diffusers models (a UNet2DConditionModel and an SD3 transformer), their inputs, and the checks of
diffusers' own LoRA file layout that both families run (diffusers loads with peft underneath).

Every builder is deterministic: the same call gives the same weights in any process.
"""
from __future__ import annotations

import contextlib
import io
import json

import peft
import torch
from diffusers import SD3Transformer2DModel, UNet2DConditionModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

import surgery
from surgery.cli.main import main as cli_main
from surgery.integrations.diffusers_lora import WEIGHT_NAME, load_diffusers_lora, save_diffusers_lora
from tests.models.parity import TOL, Family, assert_meaningful, max_diff, peft_wrapped
from tests.support.helpers import perturb_adapters

SEQ = 5        # text tokens of the conditioning
BATCH = 2


def _seeded(builder, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return builder().eval()


def unet_config(**overrides) -> dict:
    values = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, sample_size=8,
                  attention_head_dim=8, norm_num_groups=32, in_channels=4, out_channels=4,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    values.update(overrides)
    return values


def tiny_unet(seed: int = 0, **overrides) -> nn.Module:
    return _seeded(lambda: UNet2DConditionModel(**unet_config(**overrides)), seed)


def sd3_config(**overrides) -> dict:
    values = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
                  num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=16,
                  pos_embed_max_size=16)
    values.update(overrides)
    return values


def tiny_sd3(seed: int = 0, **overrides) -> nn.Module:
    return _seeded(lambda: SD3Transformer2DModel(**sd3_config(**overrides)), seed)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def latents(seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, 4, 8, 8, generator=_gen(seed))


def timesteps() -> torch.Tensor:
    return torch.tensor([10, 700])


def text(seed: int = 2) -> torch.Tensor:
    return torch.randn(BATCH, SEQ, 32, generator=_gen(seed))


def pooled(seed: int = 3) -> torch.Tensor:
    return torch.randn(BATCH, 16, generator=_gen(seed))


def noise_target(seed: int = 4) -> torch.Tensor:
    """The random 'noise' the training steps regress the prediction onto."""
    return torch.randn(BATCH, 4, 8, 8, generator=_gen(seed))


def unet_predict(model: nn.Module) -> torch.Tensor:
    return model(latents(), timesteps(), encoder_hidden_states=text()).sample


def sd3_predict(model: nn.Module) -> torch.Tensor:
    return model(hidden_states=latents(), encoder_hidden_states=text(), pooled_projections=pooled(),
                 timestep=timesteps()).sample


# -- the two families: LoRA on attention projections and convolutions ----------------------------------
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_shortcut", "proj_in", "proj_out"]
# joint attention (image and text streams) and the patch embedding, a strided Conv2d
SD3_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "pos_embed.proj"]


def no_grad(forward):
    """`forward` run under torch.no_grad (a Family's output)."""
    def run(model):
        with torch.no_grad():
            return forward(model)
    return run


def mse_to_noise(forward):
    """The denoising loss of a training step: MSE of the predicted noise against a fixed random target."""
    def loss(model):
        return torch.nn.functional.mse_loss(forward(model), noise_target())
    return loss


# r=4 with alpha 8: a scale other than 1, which must travel with a file (a guess would give alpha = r)
UNET = Family(
    build=tiny_unet,
    lora=dict(r=4, lora_alpha=8, target_modules=UNET_TARGETS, lora_dropout=0.0),
    output=no_grad(unet_predict),
    loss=mse_to_noise(unet_predict),
)
# the last block is context_pre_only: its text queries (add_q_proj) feed only the text output the model drops,
# so a LoRA there could never train
SD3 = Family(
    build=tiny_sd3,
    lora=dict(r=4, lora_alpha=8, target_modules=SD3_TARGETS, lora_dropout=0.0,
              exclude_modules=[f"transformer_blocks.{sd3_config()['num_layers'] - 1}.attn.add_q_proj"]),
    output=no_grad(sd3_predict),
    loss=mse_to_noise(sd3_predict),
)


# -- diffusers' LoRA file layout, both ways (the checks each family runs) --------------------------------
def surgery_injected(family, **overrides) -> nn.Module:
    """The family's base model given a surgery LoRA in place (inject_adapter_in_model), random factors."""
    model = family.build()
    surgery.inject_adapter_in_model(surgery.LoraConfig(**{**family.lora, **overrides}), model)
    perturb_adapters(model, biases=False)
    return model.eval()


def diffusers_adapted(family) -> nn.Module:
    """The family's base model given a LoRA by diffusers' own add_adapter (peft underneath), random factors."""
    model = family.build()
    model.add_adapter(peft.LoraConfig(**family.lora))
    perturb_adapters(model, biases=False)
    return model.eval()


def lora_paths(model: nn.Module) -> list[str]:
    """Module paths holding a LoRA (surgery's or peft's layers), relative to the base model."""
    return sorted(n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A"))


def assert_same_output(model: nn.Module, expected: torch.Tensor, family) -> float:
    """The family's output of `model` equals `expected` within float32 parity (TOL); returns the difference."""
    diff = max_diff(family.output(model), expected)
    assert diff <= TOL, diff
    return diff


def check_surgery_file_in_diffusers(family, prefix: str, tmp_path) -> float:
    """surgery writes the file; diffusers' load_lora_adapter puts it on a fresh base: same modules, same output."""
    ours = surgery_injected(family)
    expected = family.output(ours)
    assert_meaningful(expected, family)
    written = save_diffusers_lora(ours, tmp_path, prefix=prefix)
    assert written == tmp_path / WEIGHT_NAME and sorted(p.name for p in tmp_path.iterdir()) == [WEIGHT_NAME]
    theirs = family.build()
    theirs.load_lora_adapter(str(tmp_path), prefix=prefix, weight_name=WEIGHT_NAME, adapter_name="default")
    assert lora_paths(theirs) == lora_paths(ours)
    # the metadata carried the config: diffusers rebuilt the same r and alpha (alpha != r, so it was not guessed)
    assert (theirs.peft_config["default"].r, theirs.peft_config["default"].lora_alpha) == \
        (family.lora["r"], family.lora["lora_alpha"])
    return assert_same_output(theirs, expected, family)


def check_diffusers_file_in_surgery(family, prefix: str, pipeline_cls, tmp_path) -> tuple[float, float]:
    """diffusers writes the file, with model.save_lora_adapter (no component prefix) and with the pipeline's
    save_lora_weights (prefixed); surgery's load_diffusers_lora reads both onto a fresh base: same output."""
    theirs = diffusers_adapted(family)
    expected = family.output(theirs)
    theirs.save_lora_adapter(str(tmp_path / "model"))
    layers = get_peft_model_state_dict(theirs)
    metadata = theirs.peft_config["default"].to_dict()
    pipeline_cls.save_lora_weights(str(tmp_path / "pipeline"), **{f"{prefix}_lora_layers": layers,
                                                                  f"{prefix}_lora_adapter_metadata": metadata})
    diffs = []
    for folder, component in (("model", None), ("pipeline", prefix)):
        ours = load_diffusers_lora(family.build(), tmp_path / folder, prefix=component)
        assert lora_paths(ours) == lora_paths(theirs)
        assert ours.peft_config["default"].lora_alpha == family.lora["lora_alpha"]
        diffs.append(assert_same_output(ours.eval(), expected, family))
    return tuple(diffs)


def old_key(key: str) -> str:
    """A PEFT-named key in diffusers' older names (the inverse of its convert_unet_state_dict_to_peft): attention
    projections as processor LoRA layers, every other module as a LoRACompatible layer's lora.down / lora.up."""
    path, factor = key.rsplit(".lora_", 1)
    part = {"A.weight": "down.weight", "B.weight": "up.weight"}[factor]
    head, _, name = path.rpartition(".")
    if name in ("to_q", "to_k", "to_v"):
        return f"{head}.processor.{name}_lora.{part}"
    if path.endswith(".to_out.0"):
        return f"{path.removesuffix('.to_out.0')}.processor.to_out_lora.{part}"
    return f"{path}.lora.{part}"


def check_old_layout(family, prefix: str, tmp_path) -> tuple[float, float]:
    """A file in the older lora.down / lora.up layout, built from a surgery adapter's tensors (alpha = r: those
    files carry no alpha, and diffusers reads them with scale 1): diffusers and surgery both read it to the
    adapter's output."""
    source = surgery_injected(family, lora_alpha=family.lora["r"])
    expected = family.output(source)
    tensors = {f"{prefix}.{old_key(k)}": v.contiguous() for k, v in surgery.get_peft_model_state_dict(source).items()}
    assert not any("lora_A" in k or "lora_B" in k for k in tensors)
    save_file(tensors, str(tmp_path / "old.safetensors"))
    theirs = family.build()
    theirs.load_lora_adapter(str(tmp_path), prefix=prefix, weight_name="old.safetensors", adapter_name="default")
    ours = load_diffusers_lora(family.build(), tmp_path / "old.safetensors", prefix=prefix)
    assert lora_paths(ours) == lora_paths(theirs) == lora_paths(source)
    return assert_same_output(theirs, expected, family), assert_same_output(ours.eval(), expected, family)


def check_pipeline_reads_surgery_file(family, prefix: str, pipeline_load, tmp_path) -> float:
    """The pipeline's own reader reads surgery's file, metadata included: `pipeline_load(directory, model)` runs
    what the pipeline's load_lora_weights runs (lora_state_dict, then load_lora_into_<component>)."""
    ours = surgery_injected(family)
    expected = family.output(ours)
    save_diffusers_lora(ours, tmp_path, prefix=prefix)
    theirs = family.build()
    pipeline_load(str(tmp_path), theirs)
    assert theirs.peft_config["default"].lora_alpha == family.lora["lora_alpha"]
    return assert_same_output(theirs, expected, family)


def check_cli_plans_local_config(family, tmp_path) -> dict:
    """`surgery plan <local diffusers model directory>` (its config.json has _class_name, no model_type) lists
    exactly the modules PEFT wraps on the real model. Returns the plan's JSON."""
    family.build().save_config(tmp_path / "model")
    cfg = tmp_path / "lora.json"
    cfg.write_text(json.dumps({"peft_type": "LORA", **family.lora}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["plan", str(tmp_path / "model"), "--config", str(cfg), "--format", "json"]) == 0
    data = json.loads(out.getvalue())
    assert sorted(r["path"] for r in data["rewrites"]) == peft_wrapped(family.peft())[0]
    return data
