"""The checks every model family in tests/models runs against real PEFT (the test-only oracle).

A Family says how to build the seeded base model, which LoRA config to apply (the same kwargs for both
libraries), and how to run the model: the output tensor compared and the training loss.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

import surgery
from surgery.archs import bundled_config_dict, load_model_for_planning, resolve_config
from surgery.cli.main import main as cli_main
from tests.support.helpers import max_diff, perturb_adapters

TOL = 1e-5          # float32 parity: same tensors, same ops
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Family:
    build: Callable[[], nn.Module]                    # the seeded base model (a fresh one per call)
    lora: dict                                        # LoraConfig kwargs (task_type included)
    output: Callable[[nn.Module], torch.Tensor]       # the forward compared across libraries (no_grad inside)
    loss: Callable[[nn.Module], torch.Tensor]         # a real training loss
    saved: tuple = field(default=())                  # modules_to_save expected, relative to the base model

    def surgery(self, **overrides):
        """surgery's get_peft_model on a fresh base, with the family's config (and `overrides`)."""
        return surgery.get_peft_model(self.build(), surgery.LoraConfig(**{**self.lora, **overrides}))

    def peft(self, **overrides):
        """Real PEFT's get_peft_model on a fresh base, with the same config."""
        import peft

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return peft.get_peft_model(self.build(), peft.LoraConfig(**{**self.lora, **overrides}))


def peft_wrapped(model: nn.Module) -> tuple[list[str], list[str]]:
    """(LoRA layer paths, modules_to_save paths) of a PEFT model, relative to its base model."""
    from peft.utils.other import ModulesToSaveWrapper

    names = [(n.removeprefix(PEFT_PREFIX), m) for n, m in model.named_modules()]
    return (sorted(n for n, m in names if hasattr(m, "lora_A")),
            sorted(n for n, m in names if isinstance(m, ModulesToSaveWrapper)))


def check_plan(family: Family) -> None:
    """surgery.plan names exactly the modules PEFT wraps (LoRA layers and modules_to_save), and the model is
    untouched by the dry run."""
    base = family.build()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    p = surgery.plan(base, surgery.LoraConfig(**family.lora))
    lora_paths, saved = peft_wrapped(family.peft())
    assert lora_paths, "the config must adapt something"
    assert sorted(p.paths()) == lora_paths
    assert sorted(m.path for m in p.modules_to_save) == saved == sorted(family.saved)
    assert not any(hasattr(m, "lora_A") for m in base.modules())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def _is_adapter(name: str) -> bool:
    return "lora_" in name or ".modules_to_save." in name


def train(model: nn.Module, family: Family, steps: int = 4, lr: float = 1e-2) -> list[float]:
    """AdamW on the trainable parameters; checks after each backward that gradients reach every adapter tensor
    and nothing else."""
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(_is_adapter(n) for n in trainable), sorted(trainable)
    optimizer = torch.optim.AdamW(trainable.values(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = family.loss(model)
        loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad == trainable.keys(), sorted(with_grad ^ trainable.keys())
        optimizer.step()
        losses.append(loss.item())
    return losses


def check_training(family: Family) -> None:
    """A few AdamW steps with surgery: the loss falls, gradients reach only LoRA factors and modules_to_save
    copies, every trainable tensor changes and the base weights stay as they were."""
    model = family.surgery()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".modules_to_save." in n for n in names) == bool(family.saved)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train(model, family)
    assert losses[-1] < losses[0], losses
    after = dict(model.named_parameters())
    for n, old in before.items():
        changed = not torch.equal(after[n], old)
        assert changed == (n in names), n


def trained_surgery(family: Family):
    """A surgery model whose adapters are non-zero (trained), in eval mode."""
    model = family.surgery()
    train(model, family)
    return model.eval()


def assert_meaningful(adapted: torch.Tensor, family: Family) -> None:
    """The adapter changes the output: an identity adapter would make every parity check trivial."""
    assert max_diff(adapted, family.output(family.build())) > 1e-3


def peft_with_weights(family: Family):
    """A PEFT model with random LoRA factors and perturbed modules_to_save copies, in eval mode."""
    model = family.peft()
    perturb_adapters(model, biases=False)   # lora_* and the modules_to_save copies; base tensors untouched
    return model.eval()


def check_loaded_elsewhere(family: Family, model, load: Callable, tmp_path) -> tuple[float, nn.Module]:
    """`model` (one library's, non-zero adapter) saves; `load` (the other library's PeftModel.from_pretrained)
    puts the adapter on a fresh base: the same modules are adapted and the outputs agree.
    Returns (the diff, the loaded model)."""
    expected = family.output(model)
    assert_meaningful(expected, family)
    model.save_pretrained(tmp_path)
    loaded = load(family.build(), tmp_path).eval()
    assert sorted(loaded.targeted_module_names) == sorted(model.targeted_module_names)
    diff = max_diff(family.output(loaded), expected)
    assert diff <= TOL, diff
    return diff, loaded


def check_surgery_save_peft_load(family: Family, tmp_path) -> float:
    """surgery trains and saves; PEFT loads the adapter: same outputs, the same modules_to_save wrapped."""
    import peft

    diff, loaded = check_loaded_elsewhere(family, trained_surgery(family), peft.PeftModel.from_pretrained, tmp_path)
    assert peft_wrapped(loaded)[1] == sorted(family.saved)
    return diff


def check_peft_save_surgery_load(family: Family, tmp_path) -> float:
    """PEFT saves an adapter with non-zero weights; surgery loads it: same outputs."""
    return check_loaded_elsewhere(family, peft_with_weights(family), surgery.PeftModel.from_pretrained, tmp_path)[0]


def check_training_matches_peft(family: Family, tmp_path) -> float:
    """From the same starting adapter (PEFT's init, loaded into surgery), the same AdamW steps give the same
    losses and the same trained outputs in both libraries. Dropout off: its random masks are not shared."""
    theirs = family.peft(lora_dropout=0.0)
    theirs.save_pretrained(tmp_path)
    ours = surgery.PeftModel.from_pretrained(family.build(), tmp_path, is_trainable=True)
    our_losses, their_losses = train(ours, family), train(theirs, family)
    assert max(abs(a - b) for a, b in zip(our_losses, their_losses)) <= TOL, (our_losses, their_losses)
    diff = max_diff(family.output(ours.eval()), family.output(theirs.eval()))
    assert diff <= TOL, diff
    return diff


def check_merge(family: Family, tmp_path) -> tuple[float, float]:
    """surgery's merge_and_unload gives a plain model whose output equals the unmerged adapted one, and
    equals PEFT's merge of the same adapter tensors. Returns (vs unmerged, vs PEFT merged)."""
    import peft

    model = trained_surgery(family)
    unmerged = family.output(model)
    assert_meaningful(unmerged, family)
    model.save_pretrained(tmp_path)
    peft_merged = peft.PeftModel.from_pretrained(family.build(), tmp_path).merge_and_unload().eval()
    merged = model.merge_and_unload().eval()
    assert type(merged) is type(family.build())
    assert not any("lora" in k or "modules_to_save" in k for k in merged.state_dict())
    assert merged.state_dict().keys() == peft_merged.state_dict().keys()
    out = family.output(merged)
    vs_unmerged, vs_peft = max_diff(out, unmerged), max_diff(out, family.output(peft_merged))
    assert vs_unmerged <= TOL, vs_unmerged   # W + s*B@A in float32: ~1e-7 here, far inside 1e-5
    assert vs_peft <= TOL, vs_peft
    return vs_unmerged, vs_peft


def both_refuse(family: Family, **overrides) -> tuple[str, str]:
    """Both libraries refuse a config that matches nothing, with PEFT's error class. Returns the messages."""
    import peft
    import pytest

    with pytest.raises(peft.NoMatchingPeftModuleError) as theirs:
        family.peft(**overrides)
    with pytest.raises(surgery.NoMatchingPeftModuleError) as ours:
        family.surgery(**overrides)
    assert isinstance(ours.value, ValueError)
    return str(theirs.value), str(ours.value)


def check_cli_plan(name: str, lora: dict, tmp_path, monkeypatch) -> str:
    """`surgery plan <bundled name>` lists exactly the modules PEFT wraps on the same architecture (built on
    the meta device) and prints PEFT's print_trainable_parameters line; offline, the bundled config also
    answers for its Hub id. Returns the table."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # huggingface_hub reads it at import: patch the constant too
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    hub_id = bundled_config_dict(name)["_name_or_path"]
    by_id = resolve_config(hub_id, cache_dir=tmp_path / "empty-cache")
    assert by_id.name_or_path == hub_id and by_id.to_dict() == resolve_config(name).to_dict()
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"peft_type": "LORA", **lora}))
    runs = {}
    for fmt in ("json", "table"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert cli_main(["plan", name, "--config", str(cfg), "--format", fmt]) == 0
        runs[fmt] = buf.getvalue()
    data = json.loads(runs["json"])
    oracle = Family(build=lambda: load_model_for_planning(name), lora=lora, output=None, loss=None).peft()
    lora_paths, saved = peft_wrapped(oracle)
    assert sorted(r["path"] for r in data["rewrites"]) == lora_paths
    assert sorted(m["path"] for m in data["modules_to_save"]) == saved
    trainable, total = oracle.get_nb_trainable_parameters()
    line = f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
    assert runs["table"].strip().endswith(line)
    assert all(path in runs["table"] for path in lora_paths + saved)
    return runs["table"]


class FamilyChecks:
    """The checks every family runs, as pytest tests: a test module subclasses this (its name starting with
    Test) and sets `family`. Not collected here: this module's name does not start with test_."""

    family: Family

    def test_plan_names_exactly_the_modules_peft_wraps(self):
        check_plan(self.family)

    def test_training_moves_only_the_adapter(self):
        check_training(self.family)

    def test_training_matches_peft_step_for_step(self, tmp_path):
        check_training_matches_peft(self.family, tmp_path)

    def test_surgery_adapter_loads_in_peft_with_equal_outputs(self, tmp_path):
        check_surgery_save_peft_load(self.family, tmp_path)

    def test_peft_adapter_loads_in_surgery_with_equal_outputs(self, tmp_path):
        check_peft_save_surgery_load(self.family, tmp_path)

    def test_merge_equals_unmerged_and_peft_merge(self, tmp_path):
        check_merge(self.family, tmp_path)


__all__ = ["Family", "FamilyChecks", "TOL", "both_refuse", "check_cli_plan", "check_merge",
           "check_peft_save_surgery_load", "check_plan", "check_surgery_save_peft_load", "check_training",
           "check_training_matches_peft", "max_diff", "peft_with_weights", "peft_wrapped", "train",
           "trained_surgery"]
