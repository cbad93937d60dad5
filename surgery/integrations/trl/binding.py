"""TRL's trainer modules, bound to surgery beside peft.

TRL 1.x handles adapter models through names each trainer module imports from peft at import time
(`PeftConfig`, `get_peft_model`, `BaseTunerLayer`, ...) and through accelerate's `is_peft_model`, which is
`isinstance(model, peft.PeftModel)`. Given a surgery model, TRL therefore takes its full-model paths: it patches
the PeftModel's forward with its fused LM head (which then reads `.last_hidden_state` off a CausalLMOutput and
crashes), would load a second copy of the weights as the DPO/GRPO reference model, and refuses
`peft_config=<surgery config>` (`isinstance(peft_config, peft.PeftConfig)`).

`bind()` widens those names in TRL's trainer modules so that each also accepts surgery's objects, and changes
nothing for peft's: `is_peft_model` is true for either library's models, the classes become (peft's, surgery's)
tuples (TRL uses them in isinstance only), `get_peft_model` dispatches on the config's library. Where peft is
not installed the names TRL could not import are surgery's, and `is_peft_available()` is true in those modules
(TRL checks it before using an adapter). The rest is TRL's own code: the reference model is the base with the
adapter disabled, gradient checkpointing enables input grads, the fused head is put on the base model.

Why not subclasses overriding TRL's methods: the peft branches are spread over each trainer's __init__ and its
loss code (reference log-probs, adapter switching); binding the names TRL branches on keeps TRL's behaviour
exactly, and the tests pin it per TRL version (.ci/constraints.txt).
"""
from __future__ import annotations

import importlib
import types

from ...config.base import PeftConfig as SurgeryConfig
from ...facade.peft_model import PeftModel as SurgeryModel
from ...facade.tasks import get_peft_model as surgery_get_peft_model
from ...methods.base_layer import AdapterLayer
from ...methods.lora.config import LoraConfig as SurgeryLoraConfig
from ...methods.prompt.config import PrefixTuningConfig as SurgeryPrefixConfig

# TRL's modules that branch on peft (trl 1.16); a module TRL does not have is skipped
TRAINER_MODULES = ("trl.trainer.sft_trainer", "trl.trainer.dpo_trainer", "trl.trainer.grpo_trainer",
                   "trl.trainer.reward_trainer", "trl.trainer.rloo_trainer", "trl.trainer.kto_trainer",
                   "trl.trainer.base_trainer")
# trl.trainer.utils builds configs from LoraConfig (get_peft_config) and checks is_peft_available in use_adapter
UTILS_MODULE = "trl.trainer.utils"
# the PEFT release whose API and format surgery follows (what TRL's version checks compare against)
PEFT_COMPATIBLE_VERSION = "0.21.2"

_bound: set[str] = set()


def _peft():
    try:
        return importlib.import_module("peft")
    except ImportError:
        return None


def is_surgery_model(model) -> bool:
    from accelerate.utils import extract_model_from_parallel

    return isinstance(extract_model_from_parallel(model), SurgeryModel)


def _widened_is_peft_model(original):
    def is_peft_model(model) -> bool:
        return is_surgery_model(model) or bool(original(model))

    is_peft_model.__doc__ = "accelerate's is_peft_model, also true for surgery's models (surgery.integrations.trl)"
    return is_peft_model


def _dispatching_get_peft_model(peft_get_peft_model):
    def get_peft_model(model, peft_config, *args, **kwargs):
        if isinstance(peft_config, SurgeryConfig) or peft_get_peft_model is None:
            return surgery_get_peft_model(model, peft_config, *args, **kwargs)
        return peft_get_peft_model(model, peft_config, *args, **kwargs)

    return get_peft_model


def _classes(peft_module, path: str, ours: type) -> tuple:
    """(peft's class at `path`, surgery's), or (surgery's,) without peft."""
    if peft_module is None:
        return (ours,)
    owner, _, name = path.rpartition(".")
    module = importlib.import_module(f"peft{'.' + owner if owner else ''}")
    return (getattr(module, name), ours)


def bind() -> None:
    """Widen TRL's peft names to surgery's objects (idempotent; peft's objects keep working)."""
    peft = _peft()
    names = {
        "PeftConfig": _classes(peft, "PeftConfig", SurgeryConfig),
        "PeftModel": _classes(peft, "PeftModel", SurgeryModel),
        "LoraConfig": _classes(peft, "LoraConfig", SurgeryLoraConfig),
        "PrefixTuningConfig": _classes(peft, "PrefixTuningConfig", SurgeryPrefixConfig),
        "BaseTunerLayer": _classes(peft, "tuners.tuners_utils.BaseTunerLayer", AdapterLayer),
        "get_peft_model": _dispatching_get_peft_model(getattr(peft, "get_peft_model", None)),
        "peft": peft if peft is not None else types.SimpleNamespace(__version__=PEFT_COMPATIBLE_VERSION),
        "is_peft_available": lambda: True,
    }
    for module_name in TRAINER_MODULES:
        if module_name in _bound:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        module.__dict__.update(names)
        if "is_peft_model" in module.__dict__:
            module.is_peft_model = _widened_is_peft_model(module.is_peft_model)
        _bound.add(module_name)
    if UTILS_MODULE not in _bound:
        utils = importlib.import_module(UTILS_MODULE)
        utils.is_peft_available = names["is_peft_available"]
        if peft is None:   # get_peft_config builds a LoraConfig: surgery's, where peft is absent
            utils.__dict__.update(LoraConfig=SurgeryLoraConfig, PeftConfig=SurgeryConfig, PeftModel=SurgeryModel)
        _bound.add(UTILS_MODULE)
