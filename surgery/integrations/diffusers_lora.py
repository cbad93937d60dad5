"""diffusers' LoRA file layout (``pytorch_lora_weights.safetensors``), read and written for surgery LoRA adapters.

diffusers keeps a LoRA as one safetensors file per pipeline (what ``pipeline.save_lora_weights`` and
``model.save_lora_adapter`` write, and ``pipeline.load_lora_weights`` / ``model.load_lora_adapter`` read):

* tensors under PEFT's checkpoint names without ``base_model.model.``, each prefixed by its pipeline component:
  ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight`` (``lora_B.weight``, and
  ``lora_B.bias`` / ``lora_magnitude_vector`` for lora_bias / DoRA); ``transformer.`` and ``text_encoder.``
  for other components, none at all from ``model.save_lora_adapter``;
* the LoRA config in the safetensors header: ``__metadata__["lora_adapter_metadata"]`` is the JSON of PEFT's
  ``LoraConfig.to_dict()``, its keys prefixed by the component the same way (``"unet.r"``, ...);
* files written before that metadata existed: the rank of each module is ``lora_B.shape[1]`` (the most common
  one becomes ``r``, the others ``rank_pattern``), alpha equals the rank (scale 1), the targets are the
  modules the keys name;
* the older layouts diffusers still converts on load: ``<module>.lora.down.weight`` / ``lora.up.weight``
  (its LoRACompatible layers) and ``<attn>.processor.to_q_lora.down.weight`` (attention processors; ``to_out_lora``
  is ``to_out.0``). kohya / A1111 files (``lora_unet_...`` keys) are refused, not guessed at.

API:

``save_diffusers_lora(model, save_directory, prefix="unet", adapter_name="default",
weight_name="pytorch_lora_weights.safetensors") -> Path``
    Write one adapter of ``model`` (a model given adapters by ``inject_adapter_in_model``, or a surgery
    ``PeftModel``) as diffusers does; ``prefix=None`` writes ``save_lora_adapter``'s unprefixed layout. Atomic.
``diffusers_lora_state_dict(model, prefix="unet", adapter_name="default") -> (tensors, metadata)``
    What that file holds, for callers that combine components into one file.
``read_diffusers_lora(path, weight_name=None) -> (tensors, metadata or None)``
    A file, or a directory holding ``weight_name`` (default: ``pytorch_lora_weights.safetensors``, else its only
    ``.safetensors`` file). safetensors only: nothing is ever unpickled.
``load_diffusers_lora(model, path_or_state_dict, prefix="unet", adapter_name="default", *, metadata=None,
weight_name=None) -> model``
    Infer the LoraConfig (from the metadata, else from the keys, as diffusers does), add the adapter to ``model``
    (in place on a plain model, as ``inject_adapter_in_model``; ``add_adapter`` on a ``PeftModel``, not
    activated, as its ``load_adapter``) and load the tensors. Every key, dtype and shape is checked; on any error
    the model is left as it was.

Every refusal is a ``CheckpointError`` naming the key or field, the value found and what would be valid.
"""
from __future__ import annotations

import json
import os
import re
import struct
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..api import inject_adapter_in_model
from ..checkpoint.atomic import atomic_write
from ..checkpoint.state import get_peft_model_state_dict, set_peft_model_state_dict
from ..errors import CheckpointError, PeftWarning, TargetNotFoundError, closest
from ..facade.peft_model import PeftModel
from ..methods.lora.config import LoraConfig
from ..plan.planner import plan
from ..rewrite.merge import unwrap
from ..rewrite.trainable import adapter_layers

__all__ = ["WEIGHT_NAME", "METADATA_KEY", "save_diffusers_lora", "diffusers_lora_state_dict",
           "read_diffusers_lora", "load_diffusers_lora"]

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
PEFT_PREFIX = "base_model.model."
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# <module>.<entry>: the entries a LoRA adapter's checkpoint holds per module
_KEY = re.compile(r"^(?P<path>.+?)\.(?P<entry>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_magnitude_vector)$")
VALID_ENTRIES = "lora_A.weight, lora_B.weight, lora_B.bias, lora_magnitude_vector"
# diffusers' older names -> PEFT's (what its convert_unet_state_dict_to_peft rewrites); the first that fits applies
_OLD_NAMES = tuple((re.compile(rf"\.{old}\.(down|up)\."), new) for old, new in (
    ("to_q_lora", "to_q"), ("to_k_lora", "to_k"), ("to_v_lora", "to_v"), ("to_out_lora", "to_out.0"), ("lora", "")))
_FACTOR = {"down": "lora_A", "up": "lora_B"}
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")
MAX_HEADER = 100_000_000   # safetensors' own limit on the JSON header


# --------------------------------------------------------------------------- writing


def diffusers_lora_state_dict(model: nn.Module, prefix: Optional[str] = "unet",
                              adapter_name: str = "default") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of one LoRA adapter in diffusers' layout: keys and metadata fields under `prefix.`."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or adapter_name not in configs:
        known = list(configs) if isinstance(configs, dict) else []
        raise CheckpointError(f"adapter_name = {adapter_name!r}: {type(model).__name__} has no such adapter; "
                              f"adapters: {known or 'none (add one with inject_adapter_in_model or get_peft_model)'}")
    config = configs[adapter_name]
    if not isinstance(config, LoraConfig):
        raise CheckpointError(f"adapter {adapter_name!r} is {config.peft_type.value}; diffusers' LoRA layout holds "
                              f"LoRA adapters only (save it with save_pretrained instead)")
    lead = f"{prefix}." if prefix else ""
    tensors = {}
    for key, tensor in get_peft_model_state_dict(model, adapter_name=adapter_name).items():
        key = key.removeprefix(PEFT_PREFIX)
        if not _KEY.match(key):   # e.g. a modules_to_save copy: diffusers has no place for it
            raise CheckpointError(f"{key}: diffusers' LoRA layout has no place for this tensor (entries per module: "
                                  f"{VALID_ENTRIES}); drop modules_to_save / trainable tokens, or save_pretrained")
        tensors[lead + key] = tensor.detach().to("cpu").contiguous().clone()
    metadata = {lead + k: v for k, v in config.to_dict().items()}
    return tensors, metadata


def save_diffusers_lora(model: nn.Module, save_directory: Union[str, os.PathLike], prefix: Optional[str] = "unet",
                        adapter_name: str = "default", weight_name: str = WEIGHT_NAME) -> Path:
    """Write `adapter_name` of `model` as diffusers' save_lora_weights does; returns the file written."""
    if not isinstance(weight_name, str) or not weight_name.endswith(".safetensors") or \
            os.path.basename(weight_name) != weight_name:
        raise CheckpointError(f"weight_name = {weight_name!r}: must be a file name ending in .safetensors "
                              f"(e.g. {WEIGHT_NAME!r}); surgery writes no pickle")
    directory = Path(save_directory)
    if directory.is_file():
        raise CheckpointError(f"save_directory = {str(directory)!r} is a file; pass a directory")
    tensors, metadata = diffusers_lora_state_dict(model, prefix, adapter_name)
    header = {"format": "pt", METADATA_KEY: json.dumps(metadata, indent=2, sort_keys=True)}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / weight_name
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return path


# --------------------------------------------------------------------------- reading


def _weights_file(path: Path, weight_name: Optional[str]) -> Path:
    if path.is_dir():
        if weight_name is not None:
            return path / weight_name
        if (path / WEIGHT_NAME).is_file():
            return path / WEIGHT_NAME
        found = sorted(p.name for p in path.glob("*.safetensors"))
        if len(found) == 1:
            return path / found[0]
        raise CheckpointError(f"{str(path)!r} holds no {WEIGHT_NAME} and {len(found)} other .safetensors files "
                              f"{found}; pass weight_name= to pick one")
    return path


def _check_container(path: Path) -> None:
    """Refuse what is not a complete safetensors file, saying which (pickle, truncated, other)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
        if head.startswith(_PICKLE_MAGIC):
            raise CheckpointError(f"{path} is a pickled (torch.save) checkpoint, not a safetensors file; surgery "
                                  f"never unpickles (it can run code): convert it to .safetensors first")
        if len(head) < 9:
            raise CheckpointError(f"{path} is truncated: {size} bytes, less than a safetensors header")
        (length,) = struct.unpack("<Q", head[:8])
        if head[8:9] != b"{":
            raise CheckpointError(f"{path} is not a safetensors file (byte 8 is {head[8:9]!r}, a safetensors "
                                  f"header starts with '{{')")
        if length > MAX_HEADER:
            raise CheckpointError(f"{path}: header length {length} exceeds {MAX_HEADER} bytes; not a LoRA file")
        if 8 + length > size:
            raise CheckpointError(f"{path} is truncated: its header says {length} header bytes, the file holds "
                                  f"{size - 8} after the length field")
        fh.seek(8)
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path} is not a safetensors file: its header is not JSON ({exc})") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        raise CheckpointError(f"{path} is truncated: its header describes {needed} bytes, the file holds {size}")


def read_diffusers_lora(path: Union[str, os.PathLike], weight_name: Optional[str] = None
                        ) -> tuple[dict[str, torch.Tensor], Optional[dict[str, Any]]]:
    """(tensors, the parsed lora_adapter_metadata or None) of a diffusers LoRA file or directory."""
    file = _weights_file(Path(path), weight_name)
    if not file.is_file():
        raise CheckpointError(f"no LoRA file at {str(file)!r} (a diffusers LoRA is a .safetensors file, by default "
                              f"{WEIGHT_NAME})")
    _check_container(file)
    try:
        tensors = load_file(str(file), device="cpu")
        with safe_open(str(file), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is truncated or corrupted: {exc}") from None
    raw = header.get(METADATA_KEY)
    if raw is None:
        return tensors, None
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: __metadata__[{METADATA_KEY!r}] is not JSON ({exc}); it should hold the "
                              f"LoraConfig as a JSON object") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{file}: __metadata__[{METADATA_KEY!r}] holds a JSON {type(metadata).__name__}; "
                              f"it should hold the LoraConfig as a JSON object")
    return tensors, metadata


# --------------------------------------------------------------------------- keys and config


def _component(tensors: dict, metadata: Optional[dict], prefix: Optional[str]):
    """({key in PEFT's names: (key in the file, tensor)}, metadata) of one pipeline component, its prefix removed."""
    odd = next((k for k in tensors if not isinstance(k, str)), None)
    if odd is not None:
        raise CheckpointError(f"key {odd!r} is a {type(odd).__name__}; the keys of a LoRA state dict are strings")
    lead = f"{prefix}." if prefix else ""
    picked: dict[str, tuple[str, Any]] = {}
    for key, tensor in tensors.items():
        if not key.startswith(lead):
            continue
        name = _peft_key(key.removeprefix(lead))
        if name in picked:
            raise CheckpointError(f"{key} and {picked[name][0]} are the same tensor ({name}) under two names; "
                                  f"keep one of them")
        picked[name] = (key, tensor)
    if not picked and prefix:
        found = sorted({k.split(".", 1)[0] for k in tensors})
        raise CheckpointError(f"prefix = {prefix!r}: no key starts with {lead!r}; the keys start with "
                              f"{found[:5]} (pass the component they belong to, or prefix=None for a file written "
                              f"without component prefixes, as model.save_lora_adapter writes)")
    if metadata is not None and prefix:
        metadata = {k.removeprefix(lead): v for k, v in metadata.items() if k.startswith(lead)} or None
    return picked, metadata


def _peft_key(key: str) -> str:
    """diffusers' older names of a key in PEFT's names (a key already in PEFT's names is kept)."""
    key = key.replace(".processor.", ".")
    for pattern, new in _OLD_NAMES:
        match = pattern.search(key)
        if match:
            return f"{key[:match.start()]}{'.' + new if new else ''}.{_FACTOR[match.group(1)]}.{key[match.end():]}"
    return key


def _checked_entries(state: dict[str, tuple[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
    """{module path: {entry: tensor}}, every key, dtype and factor pair checked (errors name the file's keys)."""
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in state):
        example = next(k for k in state if k.startswith("lora_"))
        raise CheckpointError(f"{example}: a kohya / A1111 key; this layout is not supported (convert the file to "
                              f"diffusers' layout first, e.g. load it into a diffusers pipeline and save_lora_weights)")
    if not state:
        raise CheckpointError("the file holds no LoRA tensors (0 keys); expected <module>.lora_A.weight / "
                              "<module>.lora_B.weight pairs")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for name, (key, tensor) in state.items():
        match = _KEY.match(name)
        if match is None:
            raise CheckpointError(f"unknown key {key!r}: a diffusers LoRA key is [<component>.]<module>.<entry>, entry "
                                  f"one of {VALID_ENTRIES} (or the older lora.down/lora.up names)")
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in FLOAT_DTYPES:
            kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"{key} holds {kind}; expected a floating-point tensor "
                                  f"({', '.join(str(d).removeprefix('torch.') for d in FLOAT_DTYPES)})")
        modules.setdefault(match["path"], {})[match["entry"]] = tensor
    for path, entries in modules.items():
        for needed in ("lora_A.weight", "lora_B.weight"):
            if needed not in entries:
                raise CheckpointError(f"{path}.{needed} is missing: the file holds {sorted(entries)} for {path}, "
                                      f"and a LoRA needs both lora_A.weight and lora_B.weight")
        a, b = entries["lora_A.weight"], entries["lora_B.weight"]
        if a.ndim < 2 or b.ndim < 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{path}: lora_A.weight {tuple(a.shape)} and lora_B.weight {tuple(b.shape)} do not "
                                  f"fit together; lora_A's dim 0 and lora_B's dim 1 are the rank and must be equal")
    return modules


def _inferred_config(modules: dict[str, dict[str, torch.Tensor]]) -> LoraConfig:
    """diffusers' rules for a file without metadata: r = the most common rank, alpha = rank everywhere."""
    ranks = {path: entries["lora_B.weight"].shape[1] for path, entries in modules.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {f"^{re.escape(path)}": rank for path, rank in ranks.items() if rank != r}   # anchored: this module only
    return LoraConfig(r=r, lora_alpha=r, rank_pattern=pattern, alpha_pattern=dict(pattern),
                      target_modules=list(modules),
                      use_dora=any("lora_magnitude_vector" in e for e in modules.values()),
                      lora_bias=any("lora_B.bias" in e for e in modules.values()))


def _config_from_metadata(metadata: dict) -> LoraConfig:
    peft_type = str(metadata.get("peft_type") or "LORA")
    if peft_type.upper() != "LORA":
        raise CheckpointError(f"{METADATA_KEY}.peft_type = {peft_type!r}: only LoRA files are read here (valid: "
                              f"'LORA')")
    return LoraConfig.from_dict(metadata, strict=False)   # keys of a newer PEFT: dropped with a warning, as PEFT


def _exact_targets(config: LoraConfig, base: nn.Module, paths: list[str], adapter_name: str,
                   from_metadata: bool) -> LoraConfig:
    """The config, adapting exactly the modules the file holds (PEFT's rule when it injects from a state dict)."""
    names = dict(base.named_modules())
    for path in paths:
        if path not in names:
            hint = closest(path, names)
            raise CheckpointError(f"{path}.lora_A.weight names module {path!r}, which {type(base).__name__} does not "
                                  f"have{f'; closest: {hint}' if hint else ''} (a file for another model?)")
    config = config.copy()
    try:
        planned = set(plan(base, config, adapter_name, strict_targets=False).paths())
    except TargetNotFoundError:
        planned = set()
    if planned == set(paths):
        return config
    if from_metadata:
        warnings.warn(f"{METADATA_KEY}.target_modules = {config.target_modules!r} selects other modules than the "
                      f"file holds ({len(planned)} vs {len(paths)}); the file's modules are adapted, as PEFT does",
                      PeftWarning, stacklevel=3)
    # a path that is also the dotted tail of another module's name would select that one too: match in full
    clash = any(n != p and n.endswith("." + p) for p in paths for n in names)
    config.target_modules = f"(?:{'|'.join(re.escape(p) for p in paths)})" if clash else list(paths)
    return config


# --------------------------------------------------------------------------- loading


def load_diffusers_lora(model: nn.Module, path_or_state_dict: Union[str, os.PathLike, dict],
                        prefix: Optional[str] = "unet", adapter_name: str = "default", *,
                        metadata: Optional[dict] = None, weight_name: Optional[str] = None) -> nn.Module:
    """Add a LoRA adapter read from diffusers' layout to `model` and load its tensors; returns `model`.

    prefix: the pipeline component whose keys to take (None: the keys carry no component prefix). metadata: the
    lora_adapter_metadata dict (its keys prefixed as the tensors'), for a state dict passed in memory or to
    override the file's. weight_name: the file to read in a directory."""
    if isinstance(path_or_state_dict, dict):
        tensors, file_metadata = path_or_state_dict, None
    else:
        tensors, file_metadata = read_diffusers_lora(path_or_state_dict, weight_name)
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError(f"metadata = {type(metadata).__name__}: expected the LoraConfig as a dict")
    named, meta = _component(tensors, metadata if metadata is not None else file_metadata, prefix)
    modules = _checked_entries(named)
    config = _config_from_metadata(meta) if meta else _inferred_config(modules)
    is_peft_model = isinstance(model, PeftModel)
    base = model.get_base_model() if is_peft_model else model
    existing = getattr(model, "peft_config", None)
    if isinstance(existing, dict) and adapter_name in existing:
        raise CheckpointError(f"adapter_name = {adapter_name!r} is already in use; adapters: {list(existing)}")
    config = _exact_targets(config, base, list(modules), adapter_name, from_metadata=bool(meta))
    lead = PEFT_PREFIX if is_peft_model else ""
    state = {lead + name: tensor for name, (_, tensor) in named.items()}
    if is_peft_model:
        model.add_adapter(adapter_name, config)
    else:
        inject_adapter_in_model(config, model, adapter_name)   # adds to the model's configs, as PEFT
    try:
        _check_places(model, adapter_name, state, lead)
        set_peft_model_state_dict(model, state, adapter_name)
    except Exception:
        _remove(model, adapter_name, is_peft_model)
        raise
    return model


def _check_places(model: nn.Module, adapter_name: str, state: dict, lead: str) -> None:
    """Every tensor of the file has a place in the new adapter (its config may lack lora_bias or use_dora)."""
    places = set(get_peft_model_state_dict(model, adapter_name=adapter_name))
    extra = sorted(k for k in state if k not in places)
    if extra:
        key = extra[0].removeprefix(lead)
        module = _KEY.match(key)["path"]
        here = sorted(k.removeprefix(lead) for k in places if k.removeprefix(lead).startswith(module + "."))
        raise CheckpointError(f"{key}: the adapter its config describes has no place for it ({len(extra)} such "
                              f"key(s)); for {module} it holds {here} (lora_B.bias needs lora_bias=True, "
                              f"lora_magnitude_vector needs use_dora=True)")


def _remove(model: nn.Module, adapter_name: str, is_peft_model: bool) -> None:
    """Undo a failed load: the adapter's parts go, layers left without adapters are unwrapped."""
    if is_peft_model:
        model.delete_adapter(adapter_name)
        return
    for fqn, layer in list(adapter_layers(model)):
        if adapter_name in layer.adapter_names():
            layer.delete_adapter(adapter_name)
            if not layer.adapter_names():
                unwrap(model, fqn, layer)
    model.peft_config.pop(adapter_name, None)
    if not model.peft_config:
        del model.peft_config
