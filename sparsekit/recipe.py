"""The recipe format: pruning settings (pattern, sparsity, bank size or banks, block) for every
layer or per layer, read from YAML/JSON or a dict, and the copy prune records in a model's
``metadata_props[METADATA_KEY]`` (itself a valid recipe).  docs/prune.md describes both.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import numpy as np
import onnx

from .errors import SparsekitError
from .patterns import PATTERNS, parse_block, positive_int

__all__ = ["METADATA_KEY", "RECIPE_VERSION", "SPEC_KEYS", "load_recipe", "check_spec", "merge_specs",
           "check_combination", "recipe_overrides", "write_metadata"]

METADATA_KEY = "sparsekit.recipe"
RECIPE_VERSION = 1

SPEC_KEYS = ("pattern", "sparsity", "bank_size", "banks", "block")
# Keys of the metadata entries, accepted (and ignored) in recipe layer entries so that the
# recipe stored in a pruned model can be fed back as a recipe.
_INFO_KEYS = ("op", "weight", "achieved")


# --------------------------------------------------------------------------- settings

def _check_prune_sparsity(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise SparsekitError(f"{where}sparsity must be a number in [0, 1), got {v!r}")
    s = float(v)
    if not (0.0 <= s < 1.0):
        raise SparsekitError(f"{where}sparsity must be in [0, 1), got {v!r}")
    return s


def check_spec(d: Dict[str, Any], where: str, allow_info: bool) -> Dict[str, Any]:
    """Validate one settings dict (recipe default / layer entry / keyword args); normalise it.

    ``where`` prefixes error messages; ``allow_info`` accepts (and drops) the informational keys
    of a metadata entry.  Only the keys present are returned.
    """
    if not isinstance(d, dict):
        raise SparsekitError(f"{where}expected a mapping of settings, got {type(d).__name__}")
    allowed = SPEC_KEYS + (_INFO_KEYS if allow_info else ())
    for k in d:
        if k not in allowed:
            raise SparsekitError(
                f"{where}unknown key {k!r} (expected {', '.join(SPEC_KEYS)})")
    out: Dict[str, Any] = {}
    if "pattern" in d:
        if d["pattern"] not in PATTERNS:
            raise SparsekitError(
                f"{where}unknown pattern {d['pattern']!r} (expected {', '.join(PATTERNS)})")
        out["pattern"] = d["pattern"]
    if "sparsity" in d:
        out["sparsity"] = _check_prune_sparsity(d["sparsity"], where)
    bs, nb = d.get("bank_size"), d.get("banks")
    if bs is not None and nb is not None:
        raise SparsekitError(f"{where}give bank_size or banks, not both")
    if bs is not None:
        out["bank_size"] = positive_int(bs, f"{where}bank_size")
    if nb is not None:
        out["banks"] = positive_int(nb, f"{where}banks")
    if "block" in d:
        out["block"] = None if d["block"] is None else _parse_block(d["block"], where)
    return out


def _parse_block(b, where: str) -> Tuple[int, int]:
    try:
        return parse_block(b)
    except SparsekitError as e:
        raise SparsekitError(f"{where}{e}") from None


def merge_specs(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` updated by ``over``; a ``bank_size`` in ``over`` clears an inherited ``banks``
    and vice versa."""
    out = dict(base)
    if "bank_size" in over:
        out.pop("banks", None)
    if "banks" in over:
        out.pop("bank_size", None)
    out.update(over)
    return out


def check_combination(spec: Dict[str, Any], where: str) -> None:
    """Reject settings that are valid one by one but not together (bank with an AxB block, A > 1)."""
    if spec.get("pattern") == "bank" and spec.get("block") is not None:
        a, b = spec["block"]
        if a != 1:
            raise SparsekitError(f"{where}the bank pattern takes 1xB blocks (B output rows), "
                                 f"got {a}x{b}")


# --------------------------------------------------------------------------- recipe files

def load_recipe(recipe) -> Optional[Dict[str, Any]]:
    """Read and validate a recipe (path to YAML/JSON, or a dict).

    Returns ``{"default": {...}, "layers": {key: {...}}}`` with validated, normalised settings.
    A bare number as a layer entry is short for ``{"sparsity": number}``.
    """
    if recipe is None:
        return None
    if isinstance(recipe, (str, os.PathLike)):
        p = Path(recipe)
        if not p.is_file():
            raise SparsekitError(f"{p}: no such recipe file")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise SparsekitError(f"{p}: could not read recipe ({e})") from None
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml  # YAML also reads JSON
                data = yaml.safe_load(text)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SparsekitError(f"{p}: not a valid recipe file ({first})") from None
        where = f"recipe {p.name}: "
    elif isinstance(recipe, dict):
        data = recipe
        where = "recipe: "
    else:
        raise SparsekitError(f"recipe must be a path or a dict, got {type(recipe).__name__}")
    if not isinstance(data, dict):
        raise SparsekitError(f"{where}expected a mapping with 'default' and/or 'layers'")
    for k in data:
        if k not in ("version", "default", "layers"):
            raise SparsekitError(f"{where}unknown key {k!r} (expected default, layers)")
    if "version" in data and data["version"] != RECIPE_VERSION:
        raise SparsekitError(f"{where}unsupported version {data['version']!r} (expected 1)")
    default = check_spec(data.get("default") or {}, f"{where}default: ", allow_info=False)
    layers_in = data.get("layers") or {}
    if not isinstance(layers_in, dict):
        raise SparsekitError(f"{where}'layers' must map layer names (or regexes) to settings")
    layers: Dict[str, Dict[str, Any]] = {}
    for key, val in layers_in.items():
        if not isinstance(key, str) or not key:
            raise SparsekitError(f"{where}layer keys must be non-empty strings, got {key!r}")
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            val = {"sparsity": val}
        layers[key] = check_spec(val if val is not None else {}, f"{where}layer {key!r}: ",
                                 allow_info=True)
    return {"default": default, "layers": layers}


def _key_matches(key: str, name: str) -> bool:
    if key == name:
        return True
    try:
        return re.fullmatch(key, name) is not None
    except re.error:
        return False


def recipe_overrides(recipe: Dict[str, Any], layer_names: List[str]
                     ) -> Tuple[Dict[str, Dict[str, Any]], Set[str]]:
    """The per-layer settings a loaded recipe gives ``layer_names`` (candidate layers, graph order).

    Returns ``(overrides, listed)``: each listed layer's merged settings (regex keys in recipe
    order, then the key equal to its name) and the names of the layers any key matches.  A key
    that matches none of the layers is an error.
    """
    for key in recipe["layers"]:
        if not any(_key_matches(key, name) for name in layer_names):
            known = ", ".join(layer_names[:8])
            more = ", ..." if len(layer_names) > 8 else ""
            raise SparsekitError(f"recipe layer {key!r} matches no prunable layer "
                                 f"(layers: {known}{more})")
    overrides: Dict[str, Dict[str, Any]] = {}
    listed: Set[str] = set()
    for name in layer_names:
        ov: Dict[str, Any] = {}
        exact = None
        for key, spec in recipe["layers"].items():
            if key == name:
                exact = spec
            elif _key_matches(key, name):
                ov = merge_specs(ov, spec)
        if exact is not None:
            ov = merge_specs(ov, exact)
        if exact is not None or any(_key_matches(k, name) for k in recipe["layers"]):
            listed.add(name)
            overrides[name] = ov
    return overrides, listed


# --------------------------------------------------------------------------- metadata

def recorded_layers(model: onnx.ModelProto) -> Dict[str, Any]:
    """The per-layer entries prune recorded under ``METADATA_KEY`` ({} when there are none or
    the value is not readable): what convert, inspect and finetune read back."""
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            try:
                layers = json.loads(p.value).get("layers", {})
            except (ValueError, AttributeError):
                return {}
            return layers if isinstance(layers, dict) else {}
    return {}


def write_metadata(model: onnx.ModelProto, entries: Dict[str, Dict[str, Any]],
                   current: Iterable[str], notes: List[str]) -> None:
    """Record ``entries`` (layer name -> metadata entry) under ``METADATA_KEY``, in place.

    Entries of an earlier run survive for the layers named in ``current`` (this run's candidate
    layers) that are not in ``entries`` now; an unreadable earlier value is replaced, with a note.
    """
    current = set(current)
    layers: Dict[str, Any] = {}
    old = next((p for p in model.metadata_props if p.key == METADATA_KEY), None)
    if old is not None:
        try:
            prev = json.loads(old.value)
            for k, v in (prev.get("layers") or {}).items():
                if k in current:
                    layers[k] = v
        except (ValueError, AttributeError):
            notes.append(f"existing {METADATA_KEY} metadata was not valid JSON; replaced")
    for name, layer_entry in entries.items():
        layers[name] = layer_entry
    value = json.dumps({"version": RECIPE_VERSION, "layers": layers}, sort_keys=False)
    if old is not None:
        old.value = value
    else:
        entry = model.metadata_props.add()
        entry.key = METADATA_KEY
        entry.value = value
