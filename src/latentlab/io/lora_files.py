"""LoRA files: the ecosystem's formats, read into and written from the adapters' own state dicts.

The one place that knows LoRA files' key names; adapters/lora.py knows only `<module>.lora_A.weight`.
In every format an adapted weight is W = W0 + s (alpha / r) B A, with A the down-projection (r x in,
or r x in x k x k), B the up-projection (out x r, or out x r x 1 x 1), alpha stored with the file
(or alpha = r) and s the multiplier chosen when loading (1: as trained, 0: the base model exactly).

    format     keys                                                   alpha
    latentlab  `unet.<module>.lora_A.weight` / `.lora_B.weight`,       header: `alpha` (one number, or JSON
               `text_encoder.` likewise (diffusers reads it too)        per module) and diffusers'
                                                                       `lora_adapter_metadata`
    kohya      `lora_unet_<module, "." -> "_">.lora_down.weight` /      `<name>.alpha` (missing: alpha = r)
               `.lora_up.weight`, `lora_te_` for the text encoder
    diffusers  `unet.<module>.lora.down.weight` / `.lora.up.weight`,    none: alpha = r (written with alpha / r
               `text_encoder.<module>.lora_linear_layer.down.weight`   folded into up); the PEFT spelling's
               (read also: `to_q_lora`, and the PEFT spelling          from `lora_adapter_metadata`
               without a latentlab header)
    peft       a folder: adapter_model.safetensors                    adapter_config.json: lora_alpha,
               (`base_model.model.<module>.lora_A.weight`), the U-Net  alpha_pattern; rsLoRA read as
                                                                       alpha = lora_alpha sqrt(r)

The files written also carry, in their header, a fingerprint of each adapted network's base weights
(`base_fingerprint`), so that loading a LoRA into another base model is refused. Pickles are refused.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch import nn

from ..adapters.base import AdapterLayer
from ..adapters.inject import adapter_layers
from ..adapters.lora import DEFAULT_ADAPTER, LoRALayer, adapters_of, lora_alphas, lora_layers, lora_state_dict
from ..errors import CheckpointError, LatentlabError
from .checkpoint import atomic_write, read_json

FORMATS = ("latentlab", "kohya", "diffusers", "peft")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
MARKER = "latentlab_lora"  # header key of the latentlab format: its version
DIFFUSERS_METADATA = "lora_adapter_metadata"  # header key diffusers reads LoraConfig arguments from (JSON)
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"  # in the folder save_lora_weights writes
FINGERPRINT_SAMPLES = 64
MAX_SCALE = 1e4  # alpha / r read from a file: trained LoRAs stay far below; beyond, weights overflow to inf

# key layouts: (part, module, role) from a key; a format's first matching pattern wins
_PART = r"(?P<part>unet|temporal|text_encoder|text_encoder_2)"  # temporal: a video model's (video_pipeline.py)
LAYOUTS = {
    "kohya": [r"(?P<part>lora_unet|lora_te[12]?)_(?P<module>.+)\.(?P<role>lora_down|lora_up|alpha)(?:\.weight)?"],
    "peft": [r"base_model\.model\.(?P<module>.+)\.(?P<role>lora_A|lora_B)\.weight"],
    "diffusers": [rf"{_PART}\.(?P<module>.+)\.(?P<role>lora_A|lora_B)\.weight",
                  rf"{_PART}\.(?P<module>.+?)(?:\.lora|\.lora_linear_layer|_lora)\.(?P<role>down|up)\.weight",
                  r"(?P<module>.+)\.(?P<role>lora_A|lora_B)\.weight"],  # one network's (diffusers' save_lora_adapter)
}
ROLES = {"lora_down": "A", "lora_up": "B", "lora_A": "A", "lora_B": "B", "down": "A", "up": "B", "alpha": "alpha"}
PARTS = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2",
         None: "unet"}


@dataclass
class LoRAFile:
    """A LoRA file in the adapters' spelling: per network ("unet", "text_encoder") a state dict
    {"<module>.lora_A.weight": A, "<module>.lora_B.weight": B} and the modules' alphas."""

    path: Path
    format: str  # one of FORMATS
    parts: dict[str, dict[str, torch.Tensor]]
    alphas: dict[str, dict[str, float]]
    metadata: dict[str, str] = field(default_factory=dict)
    flat_names: bool = False  # kohya: module names with every "." written "_"; lora_states looks them up

    @property
    def name(self) -> str:
        """The default adapter name: the file's (or folder's) name, as an identifier."""
        return re.sub(r"\W", "_", self.path.name if self.path.is_dir() else self.path.stem) or DEFAULT_ADAPTER

    @property
    def kinds(self) -> set[str]:
        """The adapter kinds the file holds, by their layers' labels (io/adapter_files.py reads the others)."""
        return {"LoRA"}


# ---------------------------------------------------------------------- base fingerprint


def _base_parameters(module: nn.Module) -> list[tuple[str, torch.Tensor, AdapterLayer | None]]:
    """(name, W0 or another parameter, the adapter layer owning it as W0), named as without adapters:
    `x.base.weight` is `x.weight`, and the adapters' own tensors (of any kind) are left out. Sorted by name."""
    wrapped = dict(adapter_layers(module))
    own = {id(p) for layer in wrapped.values() for n, p in layer.named_parameters() if not n.startswith("base.")}
    owner = {id(w): layer for layer in wrapped.values() if isinstance(w := getattr(layer.base, "weight", None),
                                                                        torch.Tensor)}
    prefixes = sorted(wrapped, key=len, reverse=True)
    found = []
    for name, p in module.named_parameters():
        if id(p) not in own:
            found.append((_unwrapped_name(name, prefixes), p, owner.get(id(p))))
    return sorted(found, key=lambda item: item[0])


def _unwrapped_name(name: str, wrapped: list[str]) -> str:
    """A parameter's name without the `.base` of the adapter layers around it (innermost first)."""
    for layer in wrapped:
        head = f"{layer}.base." if layer else "base."
        if name.startswith(head):
            return _unwrapped_name(f"{layer}.{name[len(head):]}" if layer else name[len(head):], wrapped)
    return name


@torch.no_grad()
def _sample(name: str, p: torch.Tensor, layer: AdapterLayer | None) -> float:
    """One element of W0, at an index fixed by the name; adapters merged into W are subtracted."""
    index = int(hashlib.sha256(name.encode()).hexdigest()[:12], 16) % p.numel()
    value = p.detach().flatten()[index].float()
    for adapter, scaling in (layer.merged.items() if layer is not None else ()):
        value = value - layer.delta_weight(adapter, scaling).flatten()[index]
    return float(value)


def base_fingerprint(module: nn.Module) -> str:
    """`v1:<h>:<x>`, a fingerprint of a network's base weights. h: sha256 of every parameter's name and
    shape; x: float32 values (hex) of FINGERPRINT_SAMPLES parameters spread evenly over the sorted
    names, one element each at an index fixed by the name. Adapter wrapping is ignored (W0 counts under its
    own name) and merged adapters are subtracted, so adapters, their merging and a cast to float16 or
    bfloat16 change only x's last digits; compare with `same_base`."""
    params = _base_parameters(module)
    digest = hashlib.sha256("".join(f"{n}:{tuple(p.shape)};" for n, p, _ in params).encode()).hexdigest()
    n, filled = FINGERPRINT_SAMPLES, [item for item in params if item[1].numel()]
    picks = filled if len(filled) <= n else [filled[round(i * (len(filled) - 1) / (n - 1))] for i in range(n)]
    values = [_sample(*pick) for pick in picks]
    return f"v1:{digest}:{struct.pack(f'<{len(values)}f', *values).hex()}"


def same_base(a: str, b: str, rtol: float = 1e-2) -> bool:
    """Whether two fingerprints name the same base weights: names and shapes exactly, the sampled values
    within `rtol` (float16 or bfloat16 storage moves them by up to 0.4%)."""
    pa, pb = a.split(":"), b.split(":")
    if len(pa) != 3 or pa[:2] != pb[:2] or len(pa[2]) != len(pb[2]) or len(pa[2]) % 8:
        return False
    x, y = (struct.unpack(f"<{len(s) // 8}f", bytes.fromhex(s)) for s in (pa[2], pb[2]))
    return all(abs(u - v) <= rtol * max(abs(u), abs(v)) + 1e-4 for u, v in zip(x, y))


# ---------------------------------------------------------------------- writing


def _ranks(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, int]]:
    return {p: {k.removesuffix(".lora_A.weight"): v.shape[0] for k, v in s.items() if k.endswith(".lora_A.weight")}
            for p, s in states.items()}


def _flat(table: dict[str, dict]) -> dict[str, object]:
    """{part: {module: v}} -> {"part.module": v}."""
    return {f"{p}.{m}": v for p, t in table.items() for m, v in t.items()}


def _commonest(values) -> object:
    return collections.Counter(values).most_common(1)[0][0]


def _one_or_each(values: dict[str, float]) -> str:
    """JSON: the number all modules share, or {module: number}."""
    return json.dumps(next(iter(values.values())) if len(set(values.values())) == 1 else values)


def _peft_config(ranks: dict[str, int], alphas: dict[str, float], strip: str = "") -> dict:
    """LoraConfig arguments for these modules (named without `strip`): the commonest r and alpha, the
    others as patterns."""
    r, alpha = _commonest(ranks.values()), _commonest(alphas.values())
    return {"r": r, "lora_alpha": alpha, "target_modules": sorted(m.removeprefix(strip) for m in ranks),
            "rank_pattern": {m.removeprefix(strip): v for m, v in ranks.items() if v != r},
            "alpha_pattern": {m.removeprefix(strip): v for m, v in alphas.items() if v != alpha}}


def _diffusers_metadata(ranks, alphas) -> str:
    """`lora_adapter_metadata`: each network's LoraConfig arguments, keys prefixed by the network; the
    text encoder's module names without `text_model.` (transformers 5's CLIPTextModel has none)."""
    packed = {}
    for p in ranks:
        strip = "text_model." if p.startswith("text_encoder") else ""
        packed.update({f"{p}.{k}": v for k, v in _peft_config(ranks[p], alphas[p], strip).items()})
    return json.dumps(packed, sort_keys=True)


def _header(modules: dict[str, nn.Module], ranks, alphas, metadata: dict | None) -> dict[str, str]:
    """The header every format writes: rank, alpha, targets, base fingerprints, and the user's metadata."""
    header = {"format": "pt", MARKER: "1", "rank": _one_or_each(_flat(ranks)), "alpha": _one_or_each(_flat(alphas)),
              "targets": json.dumps({p: sorted(r) for p, r in ranks.items()}),
              **{f"base_fingerprint.{p}": base_fingerprint(m) for p, m in modules.items()}}
    return with_metadata(header, metadata, "LoRA")


def with_metadata(header: dict[str, str], metadata: dict | None, what: str) -> dict[str, str]:
    """`header` with the user's metadata added (non-strings as JSON); a key the format uses raises."""
    for key, value in (metadata or {}).items():
        if key in header or key == DIFFUSERS_METADATA or key.startswith("base_fingerprint."):
            raise LatentlabError(f"metadata key {key!r} is reserved by the {what} file format; use another name")
        header[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return header


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str], what: str = "LoRA"):
    """The tensors and header as a .safetensors file, atomically."""
    if path.suffix.lower() != ".safetensors":
        raise LatentlabError(f"{what} files are written as .safetensors; got {path}")
    atomic_write(path, save_safetensors({k: v.contiguous() for k, v in tensors.items()}, metadata=header))



def _write_latentlab(path, states, ranks, alphas, header):
    tensors = {f"{p}.{k}": v for p, s in states.items() for k, v in s.items()}
    write_safetensors(path, tensors, {**header, DIFFUSERS_METADATA: _diffusers_metadata(ranks, alphas)})


def _write_kohya(path, states, ranks, alphas, header):
    tensors = {}
    for p, s in states.items():
        if p not in KOHYA_PREFIXES:
            raise LatentlabError(f"the kohya format names only {', '.join(KOHYA_PREFIXES)}; not {p!r}")
        for m in ranks[p]:
            name = f"{KOHYA_PREFIXES[p]}_{m.replace('.', '_')}"
            tensors[f"{name}.lora_down.weight"] = s[f"{m}.lora_A.weight"]
            tensors[f"{name}.lora_up.weight"] = s[f"{m}.lora_B.weight"]
            tensors[f"{name}.alpha"] = torch.tensor(alphas[p][m], dtype=torch.float32)
    write_safetensors(path, tensors, {**header, "ss_network_module": "networks.lora",
                                      "ss_network_dim": str(_commonest(_flat(ranks).values())),
                                      "ss_network_alpha": str(_commonest(_flat(alphas).values()))})


def _write_diffusers(path, states, ranks, alphas, header):
    """The old diffusers spelling (the U-Net's `lora.down`, the text encoder's `lora_linear_layer.down`) has
    no alpha: alpha / r is folded into up (B)."""
    tensors = {}
    for p, s in states.items():
        infix = "lora_linear_layer" if p.startswith("text_encoder") else "lora"
        for m, r in ranks[p].items():
            B = s[f"{m}.lora_B.weight"]
            tensors[f"{p}.{m}.{infix}.down.weight"] = s[f"{m}.lora_A.weight"]
            tensors[f"{p}.{m}.{infix}.up.weight"] = (B.float() * (alphas[p][m] / r)).to(B.dtype)
    write_safetensors(path, tensors, {**header, "alpha": header["rank"]})


def _write_peft(path, states, ranks, alphas, header):
    if set(states) != {"unet"}:
        raise LatentlabError(f"the peft format holds one network, the U-Net; this adapter is in "
                             f"{', '.join(sorted(states))}: save it as latentlab or kohya")
    path = Path(path)
    write_safetensors(path / PEFT_WEIGHTS, {f"base_model.model.{k}": v for k, v in states["unet"].items()}, header)
    config = {"peft_type": "LORA", **_peft_config(ranks["unet"], alphas["unet"]), "use_rslora": False,
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
              "inference_mode": True, "modules_to_save": None, "task_type": None, "base_model_name_or_path": None}
    atomic_write(path / PEFT_CONFIG, json.dumps(config, indent=2) + "\n")


WRITERS = {"latentlab": _write_latentlab, "kohya": _write_kohya, "diffusers": _write_diffusers, "peft": _write_peft}


def save_lora(path: str | Path, parts: dict[str, nn.Module], adapter: str = DEFAULT_ADAPTER, *,
              format: str = "latentlab", metadata: dict | None = None) -> None:
    """Write adapter `adapter` of the networks in `parts` ({"unet": unet, "text_encoder": te}; those
    holding it) as a LoRA file of `format` (one of FORMATS; peft: a folder), with `metadata` (strings,
    or JSON) in its header beside rank, alpha, targets and the base fingerprints."""
    if format not in WRITERS:
        raise LatentlabError(f"unknown LoRA file format {format!r}; accepted: {', '.join(FORMATS)}")
    held = {p: m for p, m in parts.items() if adapter in adapters_of(m)}
    if not held:
        raise LatentlabError(f"no network holds a LoRA adapter named {adapter!r}; loaded: "
                             f"{', '.join(sorted({a for m in parts.values() for a in adapters_of(m)})) or 'none'}")
    states = {p: {k: v.detach().cpu() for k, v in lora_state_dict(m, adapter).items()} for p, m in held.items()}
    ranks, alphas = _ranks(states), {p: lora_alphas(m, adapter) for p, m in held.items()}
    WRITERS[format](Path(path), states, ranks, alphas, _header(held, ranks, alphas, metadata))


# ---------------------------------------------------------------------- reading


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({' '.join(str(e).split())})") from None


def _shown(name: str) -> str:
    """A name from a file as messages show it: as it is, or quoted with escapes if it holds control characters
    (a message stays one line)."""
    return name if name.isprintable() else repr(name)


def _names(names, n: int = 3) -> str:
    return ", ".join(_shown(name) for name in sorted(names)[:n])


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _match(key: str, patterns: list[str]) -> re.Match | None:
    return next((m for p in patterns if (m := re.fullmatch(p, key))), None)


def _parse(path: Path, state: dict[str, torch.Tensor]) -> tuple[str, dict, set[str]]:
    """(format, {part: {module: {"A", "B", "alpha": tensor}}}, the role spellings seen); every key must fit
    the layout that fits the most keys."""
    fits = {f: sum(_match(k, patterns) is not None for k in state) for f, patterns in LAYOUTS.items()}
    fmt = max(fits, key=fits.get)
    wrong = [k for k in state if _match(k, LAYOUTS[fmt]) is None]
    if len(wrong) == len(state):
        raise CheckpointError(f"{path}: unknown LoRA key layout (e.g. {_names(state)}); accepted: "
                              "kohya (lora_unet_<module>.lora_down.weight), diffusers (unet.<module>.lora_A.weight "
                              "or .lora.down.weight), peft (base_model.model.<module>.lora_A.weight)")
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} keys do not fit the {fmt} layout of the others, e.g. "
                              f"{_names(wrong)}")
    entries, roles = {}, set()
    for key, tensor in state.items():
        m = _match(key, LAYOUTS[fmt])
        part = PARTS.get(m.groupdict().get("part"), m.groupdict().get("part"))
        module = re.sub(r"\.processor\.(to_[qkv]|to_out)$", lambda g: "." + g[1] + (".0" if g[1] == "to_out" else ""),
                        m["module"])  # diffusers' attention processors: attn1.processor.to_out_lora
        entries.setdefault(part, {}).setdefault(module, {})[ROLES[m["role"]]] = tensor
        roles.add(m["role"])
    return fmt, entries, roles


def _check_complete(path: Path, entries: dict) -> None:
    """Every module needs its A and B (an alpha alone, or A without B, is an error naming the module)."""
    for part, modules in entries.items():
        broken = [f"{_shown(m)} (no {'B' if 'A' in t else 'A'})" for m, t in modules.items()
                  if not {"A", "B"} <= set(t)]
        if broken:
            raise CheckpointError(f"{path}: {len(broken)} LoRA modules of {part} lack a weight, e.g. "
                                  f"{', '.join(sorted(broken)[:3])}")


def _check_tensors(path: Path, entries: dict) -> None:
    """A and B: floating point, 2-D (linear: r x in, out x r) or 4-D (convolution: r x in x k x k,
    out x r x 1 x 1), the same rank r >= 1, finite."""
    for part, modules in entries.items():
        bad = [m for m, t in modules.items() if not (t["A"].is_floating_point() and t["B"].is_floating_point())]
        if bad:
            t = modules[sorted(bad)[0]]
            raise CheckpointError(f"{path}: {len(bad)} LoRA modules of {part} store A or B as {t['A'].dtype} / "
                                  f"{t['B'].dtype}, not floating point (float32, float16, bfloat16 or float64), "
                                  f"e.g. {_names(bad)}")
        bad = [m for m, t in modules.items() if t["A"].dim() not in (2, 4) or t["B"].dim() not in (2, 4)
               or t["A"].shape[0] < 1 or t["B"].shape[1] != t["A"].shape[0]]
        if bad:
            raise CheckpointError(f"{path}: {len(bad)} LoRA weights do not fit their layers' shapes ({part}: A "
                                  f"must be r x in or r x in x k x k, B out x r or out x r x 1 x 1, the same rank "
                                  f"r >= 1), e.g. {_names(bad)}")
        bad = [m for m, t in modules.items() if not (t["A"].isfinite().all() and t["B"].isfinite().all())]
        if bad:
            raise CheckpointError(f"{path}: {len(bad)} LoRA modules of {part} hold NaN or infinite weights, "
                                  f"e.g. {_names(bad)}")


def _positive(path: Path, what: str, value) -> float:
    """`value` as an alpha: a finite number > 0 (at most float32's largest), else an error naming `what`."""
    try:
        ok = type(value) in (int, float) and 0 < float(value) <= torch.finfo(torch.float32).max
    except OverflowError:
        ok = False
    if not ok:
        raise CheckpointError(f"{path}: {what} must be a positive finite number; got {_short(value)}")
    return float(value)


def _kohya_alpha(path: Path, part: str, module: str, alpha: torch.Tensor) -> float:
    """A kohya alpha: a tensor of one element, float (kohya's sd-scripts: float32, or its --save_precision) or
    integer (int64 where it defaulted alpha to the rank)."""
    what = f"alpha of {part} {_shown(module)}"
    if alpha.numel() != 1 or alpha.dtype == torch.bool or alpha.is_complex():
        raise CheckpointError(f"{path}: {what} must be one positive finite number (a float tensor of one element); "
                              f"got {alpha.dtype} of shape {list(alpha.shape)}")
    return _positive(path, what, alpha.item())


def _header_json(path: Path, header: dict[str, str], key: str):
    try:
        return json.loads(header[key])
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: header field {key!r} is not valid JSON; got {_short(header[key])}") from None


def _header_alphas(path: Path, header: dict[str, str], ranks: dict) -> dict[str, dict[str, float]]:
    """The latentlab header's `alpha`: one number, or {"<part>.<module>": number} (a module it lacks: alpha = r)."""
    stored = _header_json(path, header, "alpha")
    if not isinstance(stored, dict):
        alpha = _positive(path, "header field 'alpha' (a number, or a JSON object of them per module)", stored)
        return {p: {m: alpha for m in r} for p, r in ranks.items()}
    stored = {k: _positive(path, f"header field 'alpha' of {_shown(k)}", v) for k, v in stored.items()}
    return {p: {m: stored.get(f"{p}.{m}", float(rank)) for m, rank in r.items()} for p, r in ranks.items()}


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the module's name's end."""
    key = next((k for k in patterns if re.match(rf"(.*\.)?({k})$", module)), None)
    return default if key is None else patterns[key]


def _flag(where: str, config: dict, key: str) -> bool:
    value = config.get(key)
    if value is not None and not isinstance(value, bool):
        raise CheckpointError(f"{where}: {key} must be true or false; got {_short(value)}")
    return bool(value)


def _alpha_pattern(where: str, config: dict) -> dict[str, float]:
    """PEFT's alpha_pattern: {regular expression: alpha}."""
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict):
        raise CheckpointError(f"{where}: alpha_pattern must be a JSON object {{module pattern: alpha}}; "
                              f"got {_short(patterns)}")
    for key in patterns:
        try:
            re.compile(rf"(.*\.)?({key})$")  # as _pattern_value matches it
        except (re.error, RecursionError, OverflowError):
            raise CheckpointError(f"{where}: alpha_pattern key {_short(key)} is not a regular expression") from None
    return {k: _positive(where, f"alpha_pattern {_short(k)}", v) for k, v in patterns.items()}


def _alphas_from_peft(where: str, config: dict, ranks: dict[str, int]) -> dict[str, float]:
    """alpha per module for a PEFT LoraConfig (read from `where`, named in errors): lora_alpha (or its
    alpha_pattern); with rsLoRA, whose scale is lora_alpha / sqrt(r), alpha = lora_alpha sqrt(r)."""
    dora = _flag(where, config, "use_dora")
    if dora or config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{where}: only plain LoRA is read (this is {_short(config.get('peft_type'))}"
                              f"{', DoRA' if dora else ''})")
    return peft_alphas(where, config, ranks)


def peft_alphas(where: str, config: dict, ranks: dict[str, int], key: str = "lora_alpha") -> dict[str, float]:
    """alpha per module for a PEFT config of any adapter kind (`key`: LoraConfig's lora_alpha, LoHaConfig's and
    LoKrConfig's alpha), its alpha_pattern, and rsLoRA's alpha = lora_alpha sqrt(r)."""
    lora_alpha = _positive(where, key, config.get(key, 8))
    patterns, rslora = _alpha_pattern(where, config), _flag(where, config, "use_rslora")
    alphas = {}
    for m, r in ranks.items():
        alpha = _pattern_value(patterns, m, lora_alpha)
        alphas[m] = alpha * math.sqrt(r) if rslora else alpha
    return alphas


def _alphas(path: Path, fmt: str, roles: set[str], entries: dict, header: dict[str, str], config: dict | None):
    """{part: {module: alpha}} from wherever the format keeps them; alpha = r where it keeps none."""
    ranks = {p: {m: t["A"].shape[0] for m, t in ms.items()} for p, ms in entries.items()}
    if fmt == "kohya":
        return {p: {m: _kohya_alpha(path, p, m, t["alpha"]) if "alpha" in t else float(ranks[p][m])
                    for m, t in ms.items()} for p, ms in entries.items()}
    if fmt == "peft" and config is not None:
        return {"unet": _alphas_from_peft(f"{path.parent / PEFT_CONFIG}", config, ranks["unet"])}
    if fmt == "diffusers" and "alpha" in header and not roles & {"down", "up"}:
        return _header_alphas(path, header, ranks)
    alphas = {p: {m: float(rank) for m, rank in r.items()} for p, r in ranks.items()}  # alpha = r
    if fmt == "diffusers" and DIFFUSERS_METADATA in header and not roles & {"down", "up"}:
        packed = _header_json(path, header, DIFFUSERS_METADATA)  # {"unet.lora_alpha": ...}, or one network's
        where = f"{path}: header field {DIFFUSERS_METADATA!r}"
        if not isinstance(packed, dict):
            raise CheckpointError(f"{where} must be a JSON object of LoraConfig arguments; got {_short(packed)}")
        for p, r in ranks.items():
            config = {k.removeprefix(f"{p}."): v for k, v in packed.items() if k.startswith(f"{p}.")}
            config = config or (packed if "lora_alpha" in packed else {})
            alphas[p] = _alphas_from_peft(where, config, r) if config else alphas[p]
    return alphas


def _check_scales(path: Path, entries: dict, alphas: dict) -> None:
    """Every module's alpha / r at most MAX_SCALE."""
    for part, modules in entries.items():
        bad = [m for m, t in modules.items() if alphas[part][m] / t["A"].shape[0] > MAX_SCALE]
        if bad:
            m = sorted(bad)[0]
            raise CheckpointError(f"{path}: {len(bad)} LoRA modules of {part} have alpha / r of "
                                  f"{alphas[part][m] / modules[m]['A'].shape[0]:g}; accepted: at most {MAX_SCALE:g}, "
                                  f"e.g. {_names(bad)}")


def locate(path: str | Path) -> tuple[Path, Path, Path]:
    """(the path given, its folder, the safetensors file to read) for an adapter file or folder (a peft adapter,
    or diffusers' save_lora_weights); pickles and missing files are refused in one line."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path} is a pickle ({path.suffix}), which can run code when read; latentlab reads "
                              "LoRA files only as .safetensors")
    given, folder = path, path if path.is_dir() else path.parent
    if path.is_dir():
        path = folder / (PEFT_WEIGHTS if (folder / PEFT_CONFIG).is_file() else DIFFUSERS_WEIGHTS)
        if not path.is_file():
            raise CheckpointError(f"{folder} holds neither a peft adapter ({PEFT_CONFIG}) nor diffusers' "
                                  f"{DIFFUSERS_WEIGHTS}")
    if not path.is_file():
        raise CheckpointError(f"LoRA file {path} does not exist")
    return given, folder, path


def read_lora(path: str | Path) -> LoRAFile:
    """A LoRA file of any of FORMATS (or a folder: a peft adapter, or diffusers' save_lora_weights), its
    format detected from its keys. Refuses pickles, unknown key layouts and incomplete modules, in one line."""
    given, folder, path = locate(path)
    state, header = _read_safetensors(path)
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    fmt, entries, roles = _parse(path, state)
    _check_complete(path, entries)
    _check_tensors(path, entries)
    config = read_json(folder / PEFT_CONFIG) if fmt == "peft" and (folder / PEFT_CONFIG).is_file() else None
    alphas = _alphas(path, fmt, roles, entries, header, config)
    _check_scales(path, entries, alphas)
    parts = {p: {f"{m}.lora_{r}.weight": t[r] for m, t in ms.items() for r in "AB"} for p, ms in entries.items()}
    if fmt == "diffusers" and header.get(MARKER) and not roles & {"down", "up"}:
        fmt = "latentlab"
    return LoRAFile(path=given, format=fmt, parts=parts, alphas=alphas, metadata=header, flat_names=fmt == "kohya")


# ---------------------------------------------------------------------- translating to a model's names


def _targets(model: nn.Module) -> set[str]:
    """The names of the model's linear layers and convolutions a LoRA can adapt (wrapped ones included)."""
    wrapped = {n for n, _ in lora_layers(model)}
    plain = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n}
    return wrapped | {n for n in plain if not any(n.startswith(f"{w}.") for w in wrapped)}


def _fit(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's LoRA weights stored as a linear layer's (r x in), or the reverse."""
    base = layer.base if isinstance(layer, LoRALayer) else layer
    if isinstance(base, nn.Conv2d) and base.kernel_size == (1, 1) and tensor.dim() == 2:
        return tensor[:, :, None, None]
    if isinstance(base, nn.Linear) and tensor.dim() == 4 and tensor.shape[2:] == (1, 1):
        return tensor.flatten(1)
    return tensor


def _resolve(model: nn.Module, part: str, lora: LoRAFile) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The part's state dict and alphas under the model's module names. kohya names are looked up in a
    map built forward from the live names ("." -> "_"), since "_" -> "." is ambiguous (to_out_0,
    transformer_blocks); CLIP names written without `text_model.` (transformers 5) find it again."""
    names = _targets(model)
    if lora.flat_names:
        flat = {n.replace(".", "_"): n for n in names}
        rename = {m: flat.get(m) for m in lora.alphas[part]}
    else:
        rename = {m: next((n for n in (m, f"text_model.{m}") if n in names), None) for m in lora.alphas[part]}
    unknown = sorted(m for m, n in rename.items() if n is None)
    if unknown:
        raise CheckpointError(f"{lora.path}: {len(unknown)} LoRA modules are not linear layers or convolutions of "
                              f"this model's {part} (is the file for another base model?), e.g. "
                              f"{_names(unknown)}")
    state = {}
    for m, n in rename.items():
        for r in "AB":
            state[f"{n}.lora_{r}.weight"] = _fit(model.get_submodule(n), lora.parts[part][f"{m}.lora_{r}.weight"])
    return state, {n: lora.alphas[part][m] for m, n in rename.items()}


def _check_base(parts: dict[str, nn.Module], lora: LoRAFile) -> None:
    for p in lora.parts:
        stored = lora.metadata.get(f"base_fingerprint.{p}", "")
        if stored.startswith("v1:") and not re.fullmatch(r"v1:[0-9a-f]{64}:(?:[0-9a-f]{8})*", stored):
            raise CheckpointError(f"{lora.path}: header field 'base_fingerprint.{p}' is not a fingerprint "
                                  "(v1:<sha256>:<hex>) (pass check_base=False to load it anyway)")
        if stored.startswith("v1:") and not same_base(stored, base_fingerprint(parts[p])):
            raise CheckpointError(f"{lora.path} was made for another base model: its {p} fingerprint differs from "
                                  "this model's (pass check_base=False to load it anyway)")


def lora_states(parts: dict[str, nn.Module], lora: LoRAFile, check_base: bool = True) \
        -> dict[str, tuple[dict[str, torch.Tensor], dict[str, float]]]:
    """The file's LoRA as {part: (state dict, alphas)} under each network's module names, for the networks
    in `parts` ({"unet": unet, "text_encoder": te}): what adapters/lora.py `load_lora_parts` adds. A part
    the networks lack, a module a network lacks, or (with `check_base`) another base model's fingerprint
    raises CheckpointError."""
    missing = sorted(set(lora.parts) - set(parts))
    if missing:
        raise CheckpointError(f"{lora.path} adapts {', '.join(missing)}, which this model does not have "
                              f"(is the file for another base model?)")
    if check_base:
        _check_base(parts, lora)
    return {p: _resolve(parts[p], p, lora) for p in lora.parts}
