"""Adapter files of every kind: DoRA, LoHa and LoKr (also as LyCORIS writes them for kohya's scripts, and as
peft writes them), bottleneck adapters and prefixes. LoRA files are io/lora_files.py's, which `read_adapter`
and `save_adapter` hand them to; a file that mixes kinds per module (LyCORIS's LoCon beside LoHa) is read here.

Every format stores a module's tensors under its adapter layer's own keys (`adapter_state_dict`: peft's
names), or under LyCORIS's for kohya; a module's kind follows from its keys, and the options that make the
layer (`create`) from its tensors' shapes, but for what shapes cannot tell (alpha, a bottleneck's activation):

    format     keys (U-Net; `text_encoder` / `lora_te_` likewise)      alpha and the rest
    latentlab  `unet.<module>.<key>`: lora_A.weight, lora_B.weight,     header `options`: JSON {"unet.<module>":
               lora_magnitude_vector (DoRA), hada_w1_a .. hada_t2,       {"rank", "alpha"} or {"activation"}},
               lokr_w1 .. lokr_t2, down.weight .. up.bias (bottleneck), beside `kind`, `targets`, the base
               prefix.kv (a prefix: its keys and values, frozen)        fingerprints and the user's metadata
    kohya      `lora_unet_<module, "." -> "_">.<key>`, LyCORIS's keys:  `<name>.alpha` (missing: alpha = r)
               lora_down.weight / lora_up.weight (+ dora_scale for
               DoRA), hada_*, lokr_*: DoRA, LoHa and LoKr, mixed too
    peft       a folder: adapter_model.safetensors                     adapter_config.json: LoraConfig with
               (`base_model.model.<module>.<key>`), the U-Net           use_dora, LoHaConfig, LoKrConfig

LyCORIS's conventions (KohakuBlueleaf/LyCORIS, lycoris/modules/{locon,loha,lokr}.py), where they are not
peft's: LoHa's and LoKr's factors are peft's tensors under the same names, scaled by alpha / r with r their
rank (LoKr's: lokr_w1_b's or lokr_w2_b's rows), except a LoKr whose w1 and w2 are both whole, which LyCORIS
(and ComfyUI) apply at scale 1 whatever alpha: written so with alpha / r folded into w1. DoRA's `dora_scale`
is the magnitude m, of shape (out, 1) or (out, 1, 1, 1) (`wd_on_output`, LyCORIS's default since 2025); the
older (1, in, ...) normalises each input's weights instead, another method, and is refused. LyCORIS's DoRA at
a multiplier s != 1 blends the scale (W0 + cBA)(1 + s (g - 1)), ours the weight (adapters/dora.py): the same at 1.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..adapters.base import AdapterLayer
from ..adapters.bottleneck import BottleneckLayer
from ..adapters.dora import DoRALayer
from ..adapters.inject import adapter_layers
from ..adapters.loha import LoHaLayer
from ..adapters.lokr import LoKrLayer, factorization
from ..adapters.lora import DEFAULT_ADAPTER, LoRALayer
from ..adapters.lycoris import LycorisLayer
from ..adapters.prefix import CLIPPrefixLayer, PrefixLayer
from ..errors import CheckpointError, LatentlabError
from ..models.attention import Attention
from ..models.clip import CLIPAttention
from .checkpoint import atomic_write, read_json
from .lora_files import MARKER as LORA_MARKER
from .lora_files import (DIFFUSERS_METADATA, KOHYA_PREFIXES, MAX_SCALE, PARTS, PEFT_CONFIG, PEFT_WEIGHTS, LoRAFile,
                         _check_base, _commonest, _header_json, _kohya_alpha, _match, _names, _pattern_value,
                         _peft_config, _positive, _read_safetensors, _short, _shown, _unwrapped_name, base_fingerprint,
                         locate, peft_alphas, read_lora, save_lora, with_metadata, write_safetensors)

MARKER = "latentlab_adapter"  # header key of the latentlab format for kinds other than LoRA: its version
KINDS: dict[str, type[AdapterLayer]] = {"LoRA": LoRALayer, "DoRA": DoRALayer, "LoHa": LoHaLayer, "LoKr": LoKrLayer,
                                        "bottleneck": BottleneckLayer, "prefix": PrefixLayer}
# the key sets a module of each kind holds (its layer's adapter_state_dict keys)
_LOKR_W1 = ({"lokr_w1"}, {"lokr_w1_a", "lokr_w1_b"})
_LOKR_W2 = ({"lokr_w2"}, {"lokr_w2_a", "lokr_w2_b"}, {"lokr_w2_a", "lokr_w2_b", "lokr_t2"})
_HADA = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}
KEY_SETS = {
    "LoRA": [{"lora_A.weight", "lora_B.weight"}],
    "DoRA": [{"lora_A.weight", "lora_B.weight", "lora_magnitude_vector"}],
    "LoHa": [_HADA, _HADA | {"hada_t1", "hada_t2"}],
    "LoKr": [w1 | w2 for w1 in _LOKR_W1 for w2 in _LOKR_W2],
    "bottleneck": [{"down.weight", "down.bias", "up.weight", "up.bias"}],
    "prefix": [{"prefix.kv"}],
}
# each key's accepted numbers of dimensions
DIMS = {"lora_A.weight": (2, 4), "lora_B.weight": (2, 4), "lora_magnitude_vector": (1, 2, 4),
        **{k: (2,) for k in _HADA}, "hada_t1": (4,), "hada_t2": (4,), "lokr_w1": (2,), "lokr_w1_a": (2,),
        "lokr_w1_b": (2,), "lokr_w2": (2, 4), "lokr_w2_a": (2,), "lokr_w2_b": (2,), "lokr_t2": (4,),
        "down.weight": (2,), "down.bias": (1,), "up.weight": (2,), "up.bias": (1,), "prefix.kv": (3,)}
# key layouts: (part, module, key) from a file's key; a format's first matching pattern wins, and of formats
# fitting as many keys, the first
_OURS = "|".join(re.escape(k) for k in DIMS) + r"|lora_magnitude_vector\.weight"
_LYCORIS = r"lora_down|lora_up|alpha|dora_scale|hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2"
LAYOUTS = {
    "kohya": [rf"(?P<part>lora_unet|lora_te[12]?)_(?P<module>[^.]+)\.(?P<role>{_LYCORIS})(?:\.weight)?"],
    "latentlab": [rf"(?P<part>unet|temporal|text_encoder|text_encoder_2)\.(?P<module>.+)\.(?P<role>{_OURS})"],
    "peft": [rf"base_model\.model\.(?P<module>.+)\.(?P<role>{_OURS})",
             rf"(?P<module>.+)\.(?P<role>{_OURS})"],  # one network's (get_peft_model_state_dict of a model)
}
ROLES = {"lora_down": "lora_A.weight", "lora_up": "lora_B.weight", "dora_scale": "lora_magnitude_vector",
         "lora_magnitude_vector.weight": "lora_magnitude_vector"}
LYCORIS_KEYS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
                "lora_magnitude_vector": "dora_scale"}
# a key of another kind than LoRA
NOT_LORA = re.compile(r".*\.(?:hada_\w+|lokr_\w+|dora_scale|lora_magnitude_vector(?:\.weight)?)")
PEFT_TYPES = {"DoRA": "LORA", "LoHa": "LOHA", "LoKr": "LOKR"}
FORMATS = {"latentlab": tuple(KINDS), "kohya": ("LoRA", "DoRA", "LoHa", "LoKr"), "peft": ("DoRA", "LoHa", "LoKr")}


@dataclass
class AdapterModule:
    """One adapted layer's adapter in a file: its kind (a layer label), its tensors by the layer's
    adapter_state_dict keys, and what their shapes do not tell."""

    kind: str
    tensors: dict[str, torch.Tensor]
    alpha: float | None = None  # None: alpha = r
    rank: int | None = None  # the rank, where the tensors do not give it (a LoKr whose factors are both whole)
    activation: str | None = None  # a bottleneck's nonlinearity (None: the layer's default)
    layer: AdapterLayer | None = field(default=None, repr=False, compare=False)  # the layer it was saved from

    def options(self) -> dict:
        """What the latentlab header keeps of it."""
        if self.kind == "bottleneck":
            return {"activation": self.activation}
        return {} if self.kind == "prefix" else {"rank": self.rank, "alpha": self.alpha}


@dataclass
class AdapterFile:
    """An adapter file in the adapters' spelling: per network ("unet", "text_encoder") its modules, by their
    names in the file."""

    path: Path
    format: str  # a key of FORMATS
    parts: dict[str, dict[str, AdapterModule]]
    metadata: dict[str, str] = field(default_factory=dict)
    flat_names: bool = False  # kohya: module names with every "." written "_"

    name = LoRAFile.name

    @property
    def kinds(self) -> set[str]:
        return {m.kind for modules in self.parts.values() for m in modules.values()}


# ---------------------------------------------------------------------- writing


def _saved(layer: AdapterLayer, adapter: str) -> AdapterModule:
    """Adapter `adapter` of `layer` as a file keeps it (on the CPU); a prefix as its keys and values now."""
    state = {k: v.detach().cpu() for k, v in layer.adapter_state_dict(adapter).items()}
    if isinstance(layer, PrefixLayer) and "prefix.kv" not in state:
        with torch.no_grad():  # still reparameterised: freeze a copy of its values
            state = {"prefix.kv": layer.prefix[adapter]().detach().cpu()}
    saved = AdapterModule(layer.label, state, layer=layer)
    if isinstance(layer, (LoRALayer, LycorisLayer)):
        saved.rank, saved.alpha = layer.rank(adapter), layer.alpha[adapter]
    if isinstance(layer, BottleneckLayer):
        saved.activation = layer.activation[adapter]
    return saved


def adapter_modules(parts: dict[str, nn.Module], adapter: str) -> dict[str, dict[str, AdapterModule]]:
    """{part: {module: AdapterModule}} of adapter `adapter` in the networks holding it, each module named as
    the layer it wraps (a layer inside another adapter layer's base without `.base`)."""
    found = {}
    for p, model in parts.items():
        layers = list(adapter_layers(model))
        wrapped = sorted((n for n, _ in layers), key=len, reverse=True)
        modules = {_unwrapped_name(n, wrapped): _saved(layer, adapter) for n, layer in layers
                   if adapter in layer.adapters}
        if modules:
            found[p] = modules
    return found


def _header(parts: dict[str, nn.Module], modules: dict, metadata: dict | None) -> dict[str, str]:
    """What every format writes: the kinds, each module's options, the targets, the base fingerprints, and
    the user's metadata."""
    kinds = sorted({m.kind for ms in modules.values() for m in ms.values()})
    header = {"format": "pt", MARKER: "1", "kind": ", ".join(kinds),
              "options": json.dumps({f"{p}.{m}": a.options() for p, ms in modules.items() for m, a in ms.items()}),
              "targets": json.dumps({p: sorted(ms) for p, ms in modules.items()}),
              **{f"base_fingerprint.{p}": base_fingerprint(parts[p]) for p in modules}}
    return with_metadata(header, metadata, "adapter")


def _write(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
    write_safetensors(path, tensors, header, "adapter")


def _write_latentlab(path: Path, modules: dict, header: dict) -> None:
    _write(path, {f"{p}.{m}.{k}": t for p, ms in modules.items() for m, a in ms.items() for k, t in a.tensors.items()},
           header)


def _lycoris(module: AdapterModule) -> dict[str, torch.Tensor]:
    """A module's tensors under LyCORIS's keys, with its alpha (see the module docstring for DoRA and LoKr)."""
    t = {LYCORIS_KEYS.get(k, k): v for k, v in module.tensors.items()}
    alpha = module.alpha
    if module.kind == "DoRA":  # m as (out, 1) or (out, 1, 1, 1)
        t["dora_scale"] = t["dora_scale"].reshape(-1, *[1] * (t["lora_down.weight"].dim() - 1))
    if module.kind == "LoKr" and "lokr_w1" in t and "lokr_w2" in t:  # applied at scale 1: alpha / r into w1
        w1 = t["lokr_w1"]
        t["lokr_w1"], alpha = (w1.float() * (alpha / module.rank)).to(w1.dtype), float(module.rank)
    t["alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return t


def _write_kohya(path: Path, modules: dict, header: dict) -> None:
    tensors = {}
    for p, ms in modules.items():
        if p not in KOHYA_PREFIXES:
            raise LatentlabError(f"the kohya format names only {', '.join(KOHYA_PREFIXES)}; not {p!r}")
        for m, module in ms.items():
            tensors.update({f"{KOHYA_PREFIXES[p]}_{m.replace('.', '_')}.{k}": t for k, t in _lycoris(module).items()})
    every = [a for ms in modules.values() for a in ms.values()]
    kinds = {a.kind for a in every}
    algo = "lokr" if "LoKr" in kinds else "loha" if "LoHa" in kinds else "locon"
    args = {"algo": algo, **({"dora_wd": "True"} if "DoRA" in kinds else {})}
    _write(path, tensors, {**header, "ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps(args),
                           "ss_network_dim": str(_commonest(a.rank for a in every)),
                           "ss_network_alpha": str(_commonest(a.alpha for a in every))})


def _factors_made(module: AdapterModule, options: dict) -> bool:
    """Whether the layer makes `module`'s factors (keys and shapes) from these options, as peft would; the
    random state is left as it was."""
    device = module.layer.base.weight.device
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
        made = module.layer.make_factors(module.rank, **options)
    return {k: v.shape for k, v in made.items()} == {k: v.shape for k, v in module.tensors.items()}


def _peft_structure(kind: str, modules: dict[str, AdapterModule]) -> dict:
    """The LoHaConfig / LoKrConfig options (ours: tucker, decompose_both, factor) that make every module's
    factors as they are, since peft makes them from its config; refused if none does."""
    tucker = any("hada_t1" in a.tensors or "lokr_t2" in a.tensors for a in modules.values())
    tried = [{"tucker": tucker}]
    if kind == "LoKr":
        splits = {a.tensors["lokr_w1"].shape[0] if "lokr_w1" in a.tensors else a.tensors["lokr_w1_a"].shape[0]
                  for a in modules.values()}
        both = any("lokr_w1_a" in a.tensors for a in modules.values())
        tried = [{"tucker": tucker, "decompose_both": both, "factor": f} for f in (-1, *sorted(splits))]
    for options in tried:
        if all(_factors_made(a, options) for a in modules.values()):
            return options
    raise LatentlabError(f"these {kind} factors follow no one peft {kind}Config (their shapes take several sets of "
                         "options); save them as latentlab or kohya")


def _write_peft(path: Path, modules: dict, header: dict) -> None:
    kinds = {a.kind for ms in modules.values() for a in ms.values()}
    if len(kinds) != 1 or not kinds <= set(PEFT_TYPES):
        raise LatentlabError(f"the peft format holds one adapter kind of {', '.join(PEFT_TYPES)}; this adapter is "
                             f"{', '.join(sorted(kinds))}: save it as latentlab")
    if set(modules) != {"unet"}:
        raise LatentlabError(f"the peft format holds one network, the U-Net; this adapter is in "
                             f"{', '.join(sorted(modules))}: save it as latentlab or kohya")
    kind, unet = kinds.pop(), modules["unet"]
    config = _peft_config({m: a.rank for m, a in unet.items()}, {m: a.alpha for m, a in unet.items()})
    if kind == "DoRA":
        config.update(use_dora=True, use_rslora=False, lora_dropout=0.0, bias="none", fan_in_fan_out=False,
                      init_lora_weights=True)
    else:
        options = _peft_structure(kind, unet)
        config["alpha"] = config.pop("lora_alpha")
        config.update(use_effective_conv2d=options["tucker"], rank_dropout=0.0, module_dropout=0.0, init_weights=True)
        if kind == "LoKr":
            config.update(decompose_both=options["decompose_both"], decompose_factor=options["factor"],
                          rank_dropout_scale=False)
    config = {"peft_type": PEFT_TYPES[kind], **config, "inference_mode": True, "modules_to_save": None,
              "task_type": None, "base_model_name_or_path": None}
    _write(path / PEFT_WEIGHTS, {f"base_model.model.{m}.{k}": t for m, a in unet.items() for k, t in a.tensors.items()},
           header)
    atomic_write(path / PEFT_CONFIG, json.dumps(config, indent=2) + "\n")


WRITERS = {"latentlab": _write_latentlab, "kohya": _write_kohya, "peft": _write_peft}


def save_adapter(path: str | Path, parts: dict[str, nn.Module], adapter: str = DEFAULT_ADAPTER, *,
                 format: str = "latentlab", metadata: dict | None = None) -> None:
    """Write adapter `adapter` of the networks in `parts` ({"unet": unet, "text_encoder": te}; those holding it),
    of any kind, as a file of `format` (FORMATS: the kinds each holds; peft: a folder), with `metadata` (strings,
    or JSON) in its header. A LoRA is io/lora_files.py's `save_lora` (which also writes diffusers' format); a
    prefix is saved frozen, as its keys and values now."""
    kinds = {layer.label for m in parts.values() for _, layer in adapter_layers(m) if adapter in layer.adapters}
    if kinds <= {"LoRA"}:  # (none: save_lora says what is loaded)
        save_lora(path, parts, adapter, format=format, metadata=metadata)
        return
    if format not in FORMATS or not kinds <= set(FORMATS[format]):
        accepted = [f for f, held in FORMATS.items() if kinds <= set(held)]
        raise LatentlabError(f"adapter {adapter!r} ({', '.join(sorted(kinds))}) cannot be written as {format!r}; "
                             f"accepted: {', '.join(accepted)}")
    modules = adapter_modules(parts, adapter)
    WRITERS[format](Path(path), modules, _header(parts, modules, metadata))


# ---------------------------------------------------------------------- reading


def _lora_only(path: Path) -> bool:
    """Whether a file holds LoRA alone (read_lora reads it, with its messages): no key of another kind and no
    latentlab adapter header. An unreadable file counts as LoRA: read_lora says what is wrong with it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys, header = list(f.keys()), dict(f.metadata() or {})
    except (SafetensorError, ValueError, OSError):
        return True
    ours = MARKER in header and LORA_MARKER not in header  # (a LoRA file's user metadata may hold the key)
    return not ours and not any(NOT_LORA.fullmatch(k) for k in keys)


def _parse(path: Path, state: dict[str, torch.Tensor]) -> tuple[str, dict]:
    """(format, {part: {module: {key: tensor}}}), keys as the adapters name them (and kohya's `alpha`); every
    key must fit the layout that fits the most keys."""
    fits = {f: sum(_match(k, patterns) is not None for k in state) for f, patterns in LAYOUTS.items()}
    fmt = max(fits, key=fits.get)
    wrong = [k for k in state if _match(k, LAYOUTS[fmt]) is None]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} keys are not the {fmt} layout's LoRA, DoRA, LoHa, LoKr, "
                              f"bottleneck or prefix weights, e.g. {_names(wrong)} (LyCORIS's OFT, IA3, GLoRA, full "
                              "and Tucker LoCon are not read)")
    entries: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        m = _match(key, LAYOUTS[fmt])
        part = PARTS.get(m.groupdict().get("part"), m.groupdict().get("part"))
        entries.setdefault(part, {}).setdefault(m["module"], {})[ROLES.get(m["role"], m["role"])] = tensor
    return fmt, entries


def _kind(keys: set[str]) -> str | None:
    """The kind whose keys these are (LoRA's are also DoRA's: the first that fits), None if several kinds'."""
    return next((kind for kind, sets in KEY_SETS.items() if keys <= set().union(*sets)), None)


def _kinds(path: Path, entries: dict) -> dict[str, dict[str, str]]:
    """{part: {module: kind}}; a module holding keys of several kinds, or one kind's keys that do not go
    together (LoHa without hada_w2_b), is refused naming it."""
    kinds = {}
    for part, modules in entries.items():
        keys = {m: set(t) - {"alpha"} for m, t in modules.items()}
        mixed = sorted(m for m, k in keys.items() if _kind(k) is None)
        if mixed:
            k = keys[mixed[0]]
            why = ("LyCORIS's weight decomposition (dora_scale) of LoHa and LoKr is not read; accepted: dora_scale "
                   "beside lora_down and lora_up (DoRA)") if "lora_magnitude_vector" in k else "one kind per module"
            raise CheckpointError(f"{path}: {len(mixed)} modules of {part} hold keys of several adapter kinds "
                                  f"({', '.join(sorted(k))}), e.g. {_names(mixed)}: {why}")
        kinds[part] = {m: _kind(k) for m, k in keys.items()}
        broken = {m: _missing(kinds[part][m], k) for m, k in keys.items() if k not in KEY_SETS[kinds[part][m]]}
        if broken:
            m = sorted(broken)[0]
            raise CheckpointError(f"{path}: {len(broken)} {kinds[part][m]} modules of {part} lack a weight or hold "
                                  f"weights that do not go together, e.g. {_shown(m)} ({broken[m]})")
    return kinds


def _missing(kind: str, keys: set[str]) -> str:
    """What a module of `kind` holding `keys` lacks: the keys of its nearest complete set, or which clash."""
    wanted = [s - keys for s in KEY_SETS[kind] if keys <= s]
    if wanted:
        return "no " + ", ".join(sorted(min(wanted, key=len)))
    return "has " + ", ".join(sorted(keys)) + "; accepted: " + " or ".join("+".join(sorted(s)) for s in KEY_SETS[kind])


def _check_tensors(path: Path, entries: dict, kinds: dict) -> None:
    """Floating point, each key's number of dimensions with none of them empty, finite."""
    for part, modules in entries.items():
        tensors = {(m, k): t for m, ts in modules.items() for k, t in ts.items() if k != "alpha"}
        checks = [(lambda k, t: t.is_floating_point(), "are not floating point (float32, float16, bfloat16 or "
                                                       "float64)"),
                  (lambda k, t: t.dim() in DIMS[k] and 0 not in t.shape, "have a wrong number of dimensions or an "
                                                                          "empty one"),
                  (lambda k, t: bool(t.isfinite().all()), "hold NaN or infinite values")]
        for ok, what in checks:
            bad = sorted((m, k) for (m, k), t in tensors.items() if not ok(k, t))
            if bad:
                raise CheckpointError(f"{path}: {len(bad)} {kinds[part][bad[0][0]]} weights of {part} {what}, e.g. "
                                      f"{_names(f'{m}.{k}' for m, k in bad)}")


def _rank(module: AdapterModule) -> int | None:
    """The rank r its tensors give (a LoKr's whole factors give none: then the one it was given)."""
    key = next((k for k in ("lora_A.weight", "hada_w1_b", "lokr_w1_b", "lokr_w2_b") if k in module.tensors), None)
    return module.tensors[key].shape[0] if key else module.rank


def _kohya_options(path: Path, entries: dict, modules: dict) -> None:
    """LyCORIS's alphas (missing: alpha = r); a LoKr of whole factors is applied at scale 1, its alpha being
    the rank LyCORIS made it with; DoRA's dora_scale as the magnitude (out,)."""
    for p, ms in modules.items():
        flipped = sorted(m for m, a in ms.items() if a.kind == "DoRA"
                         and a.tensors["lora_magnitude_vector"].shape[0] != a.tensors["lora_magnitude_vector"].numel())
        if flipped:
            shape = list(ms[flipped[0]].tensors["lora_magnitude_vector"].shape)
            raise CheckpointError(f"{path}: {len(flipped)} DoRA magnitudes (dora_scale) of {p} are of shape {shape}, "
                                  "LyCORIS's decomposition over each input (wd_on_output=False), which is not read; "
                                  f"accepted: (out, 1) or (out, 1, 1, 1), e.g. {_names(flipped)}")
        for m, a in ms.items():
            alpha = entries[p][m].get("alpha")
            a.alpha = None if alpha is None else _kohya_alpha(path, p, m, alpha)
            if a.kind == "DoRA":
                a.tensors["lora_magnitude_vector"] = a.tensors["lora_magnitude_vector"].flatten()
            if a.kind == "LoKr" and _rank(a) is None:
                a.rank = int(a.alpha) if a.alpha is not None and a.alpha.is_integer() else None
                a.alpha = None  # alpha = r: scale 1


def _peft_ranks(where: str, config: dict, modules: dict[str, AdapterModule]) -> dict[str, int]:
    """r per module from a peft config: r, or its rank_pattern."""
    patterns = config.get("rank_pattern") or {}
    if not isinstance(patterns, dict):
        raise CheckpointError(f"{where}: rank_pattern must be a JSON object {{module pattern: rank}}; got "
                              f"{_short(patterns)}")
    for key in patterns:
        try:
            re.compile(rf"(.*\.)?({key})$")
        except (re.error, RecursionError, OverflowError):
            raise CheckpointError(f"{where}: rank_pattern key {_short(key)} is not a regular expression") from None
    ranks = {m: _pattern_value(patterns, m, config.get("r", 8)) for m in modules}
    bad = sorted(m for m, r in ranks.items() if type(r) is not int or r < 1)
    if bad:
        raise CheckpointError(f"{where}: r (or rank_pattern) must be a positive integer; got {_short(ranks[bad[0]])} "
                              f"for {_shown(bad[0])}")
    return ranks


def _peft_options(path: Path, config: dict, modules: dict) -> None:
    """alpha (and a whole LoKr's r) from a peft adapter_config.json, whose peft_type must be the weights' kind."""
    where, peft_type, unet = f"{path.parent / PEFT_CONFIG}", config.get("peft_type"), modules["unet"]
    kind = {t: k for k, t in PEFT_TYPES.items()}.get(peft_type)
    if kind is None:
        raise CheckpointError(f"{where}: peft type {_short(peft_type)} is not read; accepted: LORA (use_dora for "
                              "DoRA), LOHA, LOKR")
    kinds = {a.kind for a in unet.values()}
    if kinds != {kind}:
        raise CheckpointError(f"{where} says {peft_type} ({kind}), but the weights are "
                              f"{' and '.join(sorted(kinds))}'s")
    hints = _peft_ranks(where, config, unet)
    alphas = peft_alphas(where, config, {m: _rank(a) or hints[m] for m, a in unet.items()},
                         "lora_alpha" if peft_type == "LORA" else "alpha")
    for m, a in unet.items():
        a.alpha, a.rank = alphas[m], hints[m]


def _latentlab_options(path: Path, header: dict[str, str], modules: dict) -> None:
    """Our header's `options`; without it, diffusers' (save_lora_weights of a peft DoRA: lora_adapter_metadata)."""
    if MARKER in header:
        stored = _header_json(path, header, "options") if "options" in header else {}
        if not isinstance(stored, dict) or not all(isinstance(v, dict) for v in stored.values()):
            raise CheckpointError(f"{path}: header field 'options' must be a JSON object of objects "
                                  f"{{\"<part>.<module>\": {{option: value}}}}; got {_short(stored)}")
        for p, ms in modules.items():
            for m, a in ms.items():
                _take_options(path, f"{p}.{m}", stored.get(f"{p}.{m}", {}), a)
    elif DIFFUSERS_METADATA in header:
        packed = _header_json(path, header, DIFFUSERS_METADATA)
        where = f"{path}: header field {DIFFUSERS_METADATA!r}"
        if not isinstance(packed, dict):
            raise CheckpointError(f"{where} must be a JSON object of LoraConfig arguments; got {_short(packed)}")
        for p, ms in modules.items():
            config = {k.removeprefix(f"{p}."): v for k, v in packed.items() if k.startswith(f"{p}.")}
            config = config or (packed if "lora_alpha" in packed else {})
            if config:
                alphas = peft_alphas(where, config, {m: _rank(a) or 1 for m, a in ms.items()})
                for m, a in ms.items():
                    a.alpha = alphas[m]


def _take_options(path: Path, name: str, options: dict, module: AdapterModule) -> None:
    """One module's `options` entry: alpha (a positive number), rank (a positive integer), activation (text)."""
    where = f"header field 'options' of {_shown(name)}"
    if options.get("alpha") is not None:
        module.alpha = _positive(path, f"{where}: alpha", options["alpha"])
    rank, activation = options.get("rank"), options.get("activation")
    if rank is not None and (type(rank) is not int or rank < 1):
        raise CheckpointError(f"{path}: {where}: rank must be a positive integer; got {_short(rank)}")
    if activation is not None and not isinstance(activation, str):
        raise CheckpointError(f"{path}: {where}: activation must be a name; got {_short(activation)}")
    module.rank, module.activation = rank, activation


def _check_scales(path: Path, modules: dict) -> None:
    """Every module's alpha / r at most MAX_SCALE (as for LoRA: beyond it, weights overflow)."""
    for p, ms in modules.items():
        scales = {m: a.alpha / _rank(a) for m, a in ms.items() if a.alpha is not None and _rank(a)}
        bad = sorted(m for m, s in scales.items() if s > MAX_SCALE)
        if bad:
            raise CheckpointError(f"{path}: {len(bad)} modules of {p} have alpha / r of {scales[bad[0]]:g}; accepted: "
                                  f"at most {MAX_SCALE:g}, e.g. {_names(bad)}")


def _read(given: Path, folder: Path, path: Path) -> AdapterFile:
    state, header = _read_safetensors(path)
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    fmt, entries = _parse(path, state)
    kinds = _kinds(path, entries)
    _check_tensors(path, entries, kinds)
    modules = {p: {m: AdapterModule(kinds[p][m], {k: t for k, t in ts.items() if k != "alpha"})
                   for m, ts in ms.items()} for p, ms in entries.items()}
    if fmt == "kohya":
        _kohya_options(path, entries, modules)
    elif fmt == "peft" and (folder / PEFT_CONFIG).is_file():
        _peft_options(path, read_json(folder / PEFT_CONFIG), modules)
    elif fmt == "latentlab":
        _latentlab_options(path, header, modules)
    _check_scales(path, modules)
    return AdapterFile(path=given, format=fmt, parts=modules, metadata=header, flat_names=fmt == "kohya")


def read_adapter(path: str | Path, kind: str | None = None) -> LoRAFile | AdapterFile:
    """An adapter file of any kind and format (or a folder: a peft adapter, or diffusers' save_lora_weights), its
    format and each module's kind detected from its keys: a LoRAFile (io/lora_files.py `read_lora`) where it
    holds LoRA alone, else an AdapterFile. `kind` (a KINDS label, any case): refuse a file that holds none of
    that kind. Pickles, unknown keys, incomplete modules and bad values are refused in one line."""
    given, folder, file = locate(path)
    found = read_lora(given) if _lora_only(file) else _read(given, folder, file)
    if kind is not None:
        labels = {k.lower(): k for k in KINDS}
        if not isinstance(kind, str) or kind.lower() not in labels:
            raise LatentlabError(f"unknown adapter kind {kind!r}; accepted: {', '.join(KINDS)}")
        if labels[kind.lower()] not in found.kinds:
            raise CheckpointError(f"{given} holds {' and '.join(sorted(found.kinds))} adapters, not "
                                  f"{labels[kind.lower()]}")
    return found


# ---------------------------------------------------------------------- translating to a model's names

WRAPPED = (nn.Linear, nn.Conv2d, Attention, CLIPAttention)  # what the adapter kinds wrap


def _layer_names(model: nn.Module) -> dict[str, str]:
    """{a layer's name as files spell it: its name in the model} for every linear layer, convolution and
    attention; one an adapter layer wraps under that layer's name, and one inside an adapter layer's base
    without `.base`."""
    names: dict[str, str] = {}

    def walk(module: nn.Module, live: str, name: str) -> None:
        if isinstance(module, AdapterLayer):
            names.setdefault(name, live)
            walk(module.base, f"{live}.base" if live else "base", name)
            return
        if isinstance(module, WRAPPED) and live:
            names.setdefault(name, live)
        for child, sub in module.named_children():
            walk(sub, f"{live}.{child}" if live else child, f"{name}.{child}" if name else child)

    walk(model, "", "")
    return names


def _lokr_options(base: nn.Module, module: AdapterModule) -> dict:
    """`LoKrLayer.create`'s options that make this module's factors for `base`: the split `factor` (one that
    splits W0's widths as w1 does), `decompose_both`, `tucker` and r (a whole w2 needs r >= max(b, d) / 2)."""
    t, rank = module.tensors, _rank(module)
    options = {"decompose_both": "lokr_w1_a" in t, "tucker": "lokr_t2" in t, "factor": -1}
    if isinstance(base, (nn.Linear, nn.Conv2d)):  # (anything else: wrapping it is refused)
        out, inputs = base.weight.shape[:2]
        a, c = t["lokr_w1"].shape if "lokr_w1" in t else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
        options["factor"] = next((f for f in (-1, a, c) if factorization(out, f) == (a, out // a)
                                  and factorization(inputs, f) == (c, inputs // c)), -1)
    if rank is None:  # both factors whole
        rank = max(module.rank or 1, math.ceil(max(t["lokr_w2"].shape[:2]) / 2))
    return {"rank": rank, **options}


def _layer_state(layer: nn.Module, module: AdapterModule) -> tuple[type, dict, dict]:
    """(kind, create's options, tensors) of a file's module for the model's `layer` (load_adapter_parts)."""
    base = layer
    while isinstance(base, AdapterLayer):
        base = base.base
    kind, t = KINDS[module.kind], module.tensors
    if module.kind == "prefix":  # hidden 1: the MLP that freezing drops at once
        kind = CLIPPrefixLayer if isinstance(base, CLIPAttention) else PrefixLayer
        return kind, {"length": t["prefix.kv"].shape[1], "hidden": 1}, t
    if module.kind == "bottleneck":
        activation = {"activation": module.activation} if module.activation else {}
        return kind, {"width": t["down.weight"].shape[0], **activation}, t
    options = _lokr_options(base, module) if module.kind == "LoKr" else {"rank": _rank(module)}
    if module.kind == "LoHa":
        options["tucker"] = "hada_t1" in t
    return kind, {**options, "alpha": module.alpha}, t


def _resolve(model: nn.Module, part: str, file: AdapterFile) -> dict[str, tuple[type, dict, dict]]:
    """The part's modules under the model's names (kohya's looked up in a map built forward from the live names,
    as io/lora_files.py does; CLIP names written without `text_model.` find it again)."""
    names = _layer_names(model)
    if file.flat_names:
        flat = {n.replace(".", "_"): live for n, live in names.items()}
        rename = {m: flat.get(m) for m in file.parts[part]}
    else:
        rename = {m: next((names[n] for n in (m, f"text_model.{m}") if n in names), None) for m in file.parts[part]}
    unknown = sorted(m for m, n in rename.items() if n is None)
    if unknown:
        kind = _commonest(file.parts[part][m].kind for m in unknown)
        raise CheckpointError(f"{file.path}: {len(unknown)} {kind} modules are not layers of this model's {part} "
                              f"(is the file for another base model?), e.g. {_names(unknown)}")
    inner_first = sorted(rename.items(), key=lambda item: -len(item[1]))  # wrapping one leaves the outer names
    return {live: _layer_state(model.get_submodule(live), file.parts[part][m]) for m, live in inner_first}


def adapter_states(parts: dict[str, nn.Module], file: AdapterFile, check_base: bool = True) \
        -> dict[str, dict[str, tuple[type, dict, dict]]]:
    """The file's adapter as {part: {module: (kind, options, tensors)}} under each network's module names, for
    the networks in `parts`: what adapters/inject.py `load_adapter_parts` adds. A part the networks lack, a
    module a network lacks, or (with `check_base`) another base model's fingerprint raises CheckpointError."""
    missing = sorted(set(file.parts) - set(parts))
    if missing:
        raise CheckpointError(f"{file.path} adapts {', '.join(missing)}, which this model does not have "
                              f"(is the file for another base model?)")
    if check_base:
        _check_base(parts, file)
    return {p: _resolve(parts[p], p, file) for p in file.parts}
