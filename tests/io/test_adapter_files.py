"""Adapter files of every kind (io/adapter_files.py): each kind written in each format that holds it and read
back; files peft writes read by ours, and ours read by diffusers + peft, on a tiny Stable Diffusion; LyCORIS
files built by hand from known tensors (its conventions: lycoris/modules/{locon,loha,lokr}.py); bad files
refused in one line, leaving the model as it was."""

import copy
import dataclasses
import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoHaConfig, LoKrConfig, LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from latentlab.adapters import (UNET_ATTENTION, DoRALayer, LoHaLayer, LoKrLayer, LoRALayer, add_dora, add_loha,
                                add_lokr, add_lora, adapter_layers)
from latentlab.adapters.bottleneck import BottleneckLayer, add_bottleneck
from latentlab.adapters.inject import trainable
from latentlab.adapters.prefix import CLIPPrefixLayer, PrefixLayer, add_prefix, freeze_prefixes
from latentlab.errors import CheckpointError, LatentlabError
from latentlab.io.adapter_files import AdapterFile, read_adapter
from latentlab.io.lora_files import LoRAFile
from latentlab.models import UNet
from latentlab.pipeline import Pipeline

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")]

CONVOLUTIONS = ("conv1", "conv2", "conv_shortcut")  # 3x3 and 1x1
ATTENTION = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
Q, CONV = f"{ATTENTION}.to_q", "down_blocks.0.resnets.0.conv1"  # a linear layer (32 -> 32), a 3x3 convolution


@pytest.fixture(scope="module")
def sd(tmp_path_factory, tiny_sd_components):
    """(the diffusers folder, the same model as a latentlab folder)."""
    folder = tmp_path_factory.mktemp("sd")
    StableDiffusionPipeline(**tiny_sd_components()).save_pretrained(folder / "diffusers", safe_serialization=True)
    Pipeline.load(folder / "diffusers", device="cpu").save(folder / "latentlab")
    return folder / "diffusers", folder / "latentlab"


@pytest.fixture(scope="module")
def loaded(sd):
    return Pipeline.load(sd[1], device="cpu")


def fresh(loaded: Pipeline) -> Pipeline:
    """The loaded model with networks of its own (a copy is quicker than reading the folder again)."""
    pipe = copy.copy(loaded)
    pipe.unet, pipe.text_encoder = copy.deepcopy(loaded.unet), copy.deepcopy(loaded.text_encoder)
    return pipe


@pytest.fixture()
def ours(loaded):
    return fresh(loaded)


@pytest.fixture()
def diffusers_unet(sd):
    return StableDiffusionPipeline.from_pretrained(sd[0], safety_checker=None, requires_safety_checker=False).unet


g = torch.Generator().manual_seed(0)
X, T, CONTEXT = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]), torch.randn(2, 7, 64, generator=g)
IDS = torch.cat([torch.randint(0, 49406, (2, 9), generator=g), torch.full((2, 1), 49407)], dim=1)


@torch.no_grad()
def outputs(pipe: Pipeline) -> tuple[torch.Tensor, torch.Tensor]:
    return pipe.unet(X, T, CONTEXT), pipe.text_encoder(IDS)[0]


@torch.no_grad()
def their_outputs(unet) -> torch.Tensor:
    return unet(X, T, encoder_hidden_states=CONTEXT).sample


def assert_close(got, want, atol):
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= atol, (a - b).abs().max()


def train(pipe: Pipeline, name: str = "style", seed: int = 0) -> None:
    """Move every tensor the adapter trains off its initial value (a trained adapter, not the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in pipe.lora_parts().values():
            for p in trainable(part, None):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)


# kind -> add it to a pipeline as adapter "style" (U-Net and text encoder where `text_encoder`)
KINDS = {
    "DoRA": lambda pipe, te: (add_dora(pipe.unet, "style", rank=2, alpha=3.0, targets=UNET_ATTENTION + CONVOLUTIONS),
                              te and add_dora(pipe.text_encoder, "style", rank=2, targets=("q_proj", "fc1"))),
    "LoHa": lambda pipe, te: (add_loha(pipe.unet, "style", rank=2, alpha=3.0, targets=UNET_ATTENTION),
                              add_loha(pipe.unet, "style", rank=2, alpha=1.0, tucker=True, targets=CONVOLUTIONS),
                              te and add_loha(pipe.text_encoder, "style", rank=2, targets=("v_proj",))),
    "LoKr": lambda pipe, te: (add_lokr(pipe.unet, "style", rank=1, alpha=3.0, decompose_both=True,
                                       targets=UNET_ATTENTION),
                              add_lokr(pipe.unet, "style", rank=1, alpha=2.0, decompose_both=True, tucker=True,
                                       targets=("conv1",)),
                              te and add_lokr(pipe.text_encoder, "style", rank=1, alpha=2.0, targets=("fc1",))),
    "LoKr whole": lambda pipe, te: (add_lokr(pipe.unet, "style", rank=16, alpha=3.0,
                                             targets=UNET_ATTENTION + ("conv2",)),
                                    te and add_lokr(pipe.text_encoder, "style", rank=16, alpha=2.0, targets=("fc1",))),
    "LoRA and LoHa": lambda pipe, te: (add_lora(pipe.unet, "style", rank=2, alpha=4.0, targets=UNET_ATTENTION),
                                       add_loha(pipe.unet, "style", rank=2, alpha=1.0, targets=CONVOLUTIONS),
                                       te and add_lora(pipe.text_encoder, "style", rank=2, targets=("q_proj",))),
    "bottleneck": lambda pipe, te: (add_bottleneck(pipe.unet, "style", width=4, activation="silu"),
                                    te and add_bottleneck(pipe.text_encoder, "style", width=3)),
    "prefix": lambda pipe, te: (add_prefix(pipe.unet, "style", length=3, hidden=8),
                                te and add_prefix(pipe.text_encoder, "style", length=2, hidden=4)),
    "LoRA inside a prefix": lambda pipe, te: (add_prefix(pipe.unet, "style", length=2, hidden=4, targets=("attn1",)),
                                              add_lora(pipe.unet, "style", rank=2, targets=("to_q", "to_v")),
                                              te and add_lora(pipe.text_encoder, "style", targets=("q_proj",))),
}
LAYERS = {"DoRA": {DoRALayer}, "LoHa": {LoHaLayer}, "LoKr": {LoKrLayer}, "LoKr whole": {LoKrLayer},
          "LoRA and LoHa": {LoRALayer, LoHaLayer}, "bottleneck": {BottleneckLayer},
          "prefix": {PrefixLayer, CLIPPrefixLayer}, "LoRA inside a prefix": {PrefixLayer, LoRALayer}}
FORMATS = {"latentlab": list(KINDS), "kohya": ["DoRA", "LoHa", "LoKr", "LoKr whole", "LoRA and LoHa"],
           "peft": ["DoRA", "LoHa", "LoKr", "LoKr whole"]}


def adapted(pipe: Pipeline, kind: str, text_encoder: bool = True, seed: int = 0) -> tuple:
    """Add a trained adapter "style" of `kind`; its outputs (which differ from the base model's)."""
    base = outputs(pipe)
    KINDS[kind](pipe, text_encoder)
    train(pipe, seed=seed)
    want = outputs(pipe)
    assert (want[0] - base[0]).abs().max() > 1e-3 and (not text_encoder or (want[1] - base[1]).abs().max() > 1e-3)
    return want


def kinds_of(pipe: Pipeline) -> set[type]:
    """The adapter layers' classes (the speed wing's fast LoRA layer as LoRA's)."""
    return {next(c for c in type(layer).__mro__ if c.__module__.startswith("latentlab.adapters"))
            for part in pipe.lora_parts().values() for _, layer in adapter_layers(part)}


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("format, kind", [(f, k) for f, kinds in FORMATS.items() for k in kinds])
def test_round_trip(ours, loaded, tmp_path, format, kind):
    """Saved, then loaded into a fresh model: the same layers and outputs."""
    want = adapted(ours, kind, text_encoder=format != "peft")
    path = tmp_path / ("style" if format == "peft" else "style.safetensors")
    ours.save_adapter(path, "style", format=format, metadata={"trigger": "sks"})
    file = read_adapter(path)
    assert isinstance(file, AdapterFile) and file.format == format and file.metadata["trigger"] == "sks"
    assert not any(".base" in m for modules in file.parts.values() for m in modules)  # named as without adapters
    pipe = fresh(loaded)
    assert pipe.load_adapter(path) == "style" and pipe.adapters == ["style"]
    assert kinds_of(pipe) == LAYERS[kind]
    assert_close(outputs(pipe), want, atol=1e-5)


def test_an_unfrozen_prefix_is_saved_as_its_keys_and_values(ours, loaded, tmp_path):
    want = adapted(ours, "prefix")
    ours.save_adapter(tmp_path / "p.safetensors", "style")
    assert all(k.endswith(".prefix.kv") for k in load_file(tmp_path / "p.safetensors"))
    assert next(layer for _, layer in adapter_layers(ours.unet)).prefix["style"].kv is None  # ours stays as it was
    freeze_prefixes(ours.unet)
    freeze_prefixes(ours.text_encoder)
    ours.save_adapter(tmp_path / "q.safetensors", "style")
    for path in ("p", "q"):
        pipe = fresh(loaded)
        pipe.load_adapter(tmp_path / f"{path}.safetensors", name="x")
        assert_close(outputs(pipe), want, atol=1e-5)


def test_the_lora_methods_serve_every_kind(ours, loaded, tmp_path):
    """load_lora reads any kind (a LyCORIS LoHa file); scales, merging and removal act on it."""
    base = outputs(ours)
    want = adapted(ours, "LoHa")
    ours.save_lora(tmp_path / "loha.safetensors", "style", format="kohya")
    pipe = fresh(loaded)
    assert pipe.load_lora(tmp_path / "loha.safetensors", scale=0.0) == "loha" and pipe.loras == ["loha"]
    assert_close(outputs(pipe), base, atol=0)
    pipe.set_lora_scale("loha", 1.0)
    pipe.merge_lora("loha")
    assert_close(outputs(pipe), want, atol=1e-5)
    pipe.remove_lora()
    assert pipe.adapters == [] and not kinds_of(pipe)
    assert_close(outputs(pipe), base, atol=1e-5)


def test_lora_files_are_read_as_before(ours, tmp_path):
    add_lora(ours.unet, "style", targets=UNET_ATTENTION)
    for fmt in ("latentlab", "kohya", "diffusers"):
        ours.save_adapter(tmp_path / f"{fmt}.safetensors", "style", format=fmt)
        file = read_adapter(tmp_path / f"{fmt}.safetensors")
        assert isinstance(file, LoRAFile) and file.format == fmt and file.kinds == {"LoRA"}



# ---------------------------------------------------------------------- with peft and diffusers

TARGETS = list(UNET_ATTENTION + CONVOLUTIONS + ("proj_in", "proj_out"))  # diffusers' 1x1 convolutions too
# kind -> peft's config of it: random weights everywhere (init False), alpha != r, per-module patterns
PEFT = {
    "DoRA": lambda: LoraConfig(r=2, lora_alpha=3, use_dora=True, init_lora_weights=False, target_modules=TARGETS,
                               rank_pattern={"conv1": 3}, alpha_pattern={"to_k": 5}),
    "LoHa": lambda: LoHaConfig(r=2, alpha=3, use_effective_conv2d=True, init_weights=False, target_modules=TARGETS,
                               rank_pattern={"conv2": 3}, alpha_pattern={"to_k": 5}),
    "LoKr": lambda: LoKrConfig(r=1, alpha=3, decompose_both=True, use_effective_conv2d=True, init_weights=False,
                               target_modules=TARGETS, alpha_pattern={"to_v": 2}),
    "LoKr whole": lambda: LoKrConfig(r=16, alpha=3, init_weights=False, target_modules=TARGETS,
                                     rank_pattern={"conv1": 20}),
}


@pytest.mark.parametrize("kind", PEFT)
def test_peft_adapters_read_by_ours(ours, diffusers_unet, tmp_path, kind):
    """An adapter made by peft on diffusers' U-Net, saved by save_pretrained: the same output in ours."""
    base = outputs(ours)[0]
    unet = get_peft_model(diffusers_unet, PEFT[kind]())
    want = their_outputs(unet)
    assert (want - base).abs().max() > 1e-2
    unet.save_pretrained(tmp_path / "adapter")
    file = read_adapter(tmp_path / "adapter")
    assert file.format == "peft" and file.kinds == {kind.split()[0]}
    assert ours.load_adapter(tmp_path / "adapter") == "adapter"
    assert_close([outputs(ours)[0]], [want], atol=1e-5)


def test_a_peft_state_dict_without_its_config_is_read_with_alpha_r(ours, diffusers_unet, tmp_path):
    unet = get_peft_model(diffusers_unet, LoHaConfig(r=2, alpha=2, init_weights=False, target_modules=TARGETS))
    want = their_outputs(unet)
    state = get_peft_model_state_dict(unet)
    save_file(state, tmp_path / "prefixed.safetensors")  # base_model.model.<module>.hada_w1_a
    save_file({k.removeprefix("base_model.model."): v for k, v in state.items()}, tmp_path / "bare.safetensors")
    for name in ("prefixed", "bare"):
        pipe = fresh(ours)
        pipe.load_adapter(tmp_path / f"{name}.safetensors")
        assert_close([outputs(pipe)[0]], [want], atol=1e-5)


@pytest.mark.parametrize("kind", ["DoRA", "LoHa", "LoKr", "LoKr whole"])
def test_peft_reads_our_folders(ours, diffusers_unet, tmp_path, kind):
    """Ours, saved in the peft format, loaded by peft into diffusers' U-Net: the same output."""
    want = adapted(ours, kind, text_encoder=False)
    ours.save_adapter(tmp_path / "style", "style", format="peft")
    unet = PeftModel.from_pretrained(diffusers_unet, tmp_path / "style")
    assert_close([their_outputs(unet)], [want[0]], atol=1e-4)



# ---------------------------------------------------------------------- LyCORIS's files, built by hand


def flat(name: str, prefix: str = "lora_unet") -> str:
    return f"{prefix}_{name.replace('.', '_')}"


def rnd(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * 0.3


def tucker(t: torch.Tensor, w_down: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """LyCORIS's Tucker rebuild (functional/loha.py): sum_ij t[i, j] w_up[i, p] w_down[j, q]."""
    return torch.einsum("i j ..., j r, i p -> p r ...", t, w_down, w_up)


def delta(pipe: Pipeline, name: str, adapter: str, part: str = "unet") -> torch.Tensor:
    """The weight an adapter adds to a layer at its scale."""
    return getattr(pipe, part).get_submodule(name).delta_weight(adapter)


TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"


def test_lycoris_loha(ours, tmp_path):
    """Delta W = (w1_a w1_b) * (w2_a w2_b) alpha / r, or with Tucker cores; a missing alpha is r."""
    gen, r = torch.Generator().manual_seed(1), 4
    w = {k: rnd(gen, *s) for k, s in {"w1a": (32, r), "w1b": (r, 32), "w2a": (32, r), "w2b": (r, 32)}.items()}
    c = {k: rnd(gen, *s) for k, s in {"t1": (r, r, 3, 3), "w1a": (r, 32), "w1b": (r, 32), "t2": (r, r, 3, 3),
                                      "w2a": (r, 32), "w2b": (r, 32)}.items()}
    te = {k: rnd(gen, *s) for k, s in {"w1a": (64, 2), "w1b": (2, 64), "w2a": (64, 2), "w2b": (2, 64)}.items()}
    tensors = {f"{flat(Q)}.alpha": torch.tensor(2.0), f"{flat(CONV)}.hada_t1": c["t1"],
               f"{flat(CONV)}.hada_t2": c["t2"]}
    for name, factors in ((flat(Q), w), (flat(CONV), c), (flat(TE_Q, "lora_te"), te)):
        tensors.update({f"{name}.hada_{k[:2]}_{k[2]}": v for k, v in factors.items() if k[0] == "w"})
    save_file(tensors, tmp_path / "loha.safetensors")
    assert ours.load_adapter(tmp_path / "loha.safetensors", scale=0.5) == "loha"
    torch.testing.assert_close(delta(ours, Q, "loha"), (w["w1a"] @ w["w1b"]) * (w["w2a"] @ w["w2b"]) * 2.0 / r * 0.5)
    torch.testing.assert_close(delta(ours, CONV, "loha"), tucker(c["t1"], c["w1b"], c["w1a"]) *
                               tucker(c["t2"], c["w2b"], c["w2a"]) * 0.5)
    torch.testing.assert_close(delta(ours, TE_Q, "loha", "text_encoder"),
                               (te["w1a"] @ te["w1b"]) * (te["w2a"] @ te["w2b"]) * 0.5)
    layer, x = ours.unet.get_submodule(Q), torch.randn(3, 32)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ delta(ours, Q, "loha").T)


def test_lycoris_lokr(ours, tmp_path):
    """Delta W = w1 (x) w2 alpha / r, w2 whole, a rank-r product or a Tucker rebuild; both factors whole: scale 1,
    whatever alpha (LyCORIS sets alpha = r there)."""
    gen, conv2 = torch.Generator().manual_seed(2), "down_blocks.0.resnets.0.conv2"
    q = {"lokr_w1": rnd(gen, 4, 4), "lokr_w2": rnd(gen, 8, 8), "alpha": torch.tensor(7.0)}
    c = {"lokr_w1": rnd(gen, 4, 4), "lokr_w2_a": rnd(gen, 8, 2), "lokr_w2_b": rnd(gen, 2, 8 * 9),
         "alpha": torch.tensor(1.0)}
    t = {"lokr_w1_a": rnd(gen, 4, 1), "lokr_w1_b": rnd(gen, 1, 4), "lokr_t2": rnd(gen, 1, 1, 3, 3),
         "lokr_w2_a": rnd(gen, 1, 8), "lokr_w2_b": rnd(gen, 1, 8), "alpha": torch.tensor(0.5)}
    save_file({f"{flat(name)}.{k}": v for name, f in ((Q, q), (CONV, c), (conv2, t)) for k, v in f.items()},
              tmp_path / "lokr.safetensors")
    ours.load_adapter(tmp_path / "lokr.safetensors")
    torch.testing.assert_close(delta(ours, Q, "lokr"), torch.kron(q["lokr_w1"], q["lokr_w2"]))
    w2 = (c["lokr_w2_a"] @ c["lokr_w2_b"]).view(8, 8, 3, 3)
    torch.testing.assert_close(delta(ours, CONV, "lokr"), torch.kron(c["lokr_w1"][:, :, None, None], w2) * 0.5)
    w2 = torch.einsum("i j ..., i p, j r -> p r ...", t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])  # rebuild_tucker
    w1 = (t["lokr_w1_a"] @ t["lokr_w1_b"])[:, :, None, None]
    torch.testing.assert_close(delta(ours, conv2, "lokr"), torch.kron(w1, w2) * 0.5)


def test_lycoris_dora(ours, tmp_path):
    """W' = m (W0 + c B A) / ||W0 + c B A|| per output, m = dora_scale of shape (out, 1) or (out, 1, 1, 1)."""
    gen, r = torch.Generator().manual_seed(3), 4
    shapes = {Q: ((r, 32), (32, r), (32, 1)), CONV: ((r, 32, 3, 3), (32, r, 1, 1), (32, 1, 1, 1))}
    files = {name: (rnd(gen, *down), rnd(gen, *up), 1 + rnd(gen, *m).abs()) for name, (down, up, m) in shapes.items()}
    W0 = {name: ours.unet.get_submodule(name).weight.detach().clone() for name in files}
    save_file({f"{flat(name)}.{k}": v for name, (down, up, m) in files.items() for k, v in
               (("lora_down.weight", down), ("lora_up.weight", up), ("dora_scale", m), ("alpha", torch.tensor(2.0)))},
              tmp_path / "dora.safetensors")
    ours.load_adapter(tmp_path / "dora.safetensors")
    for name, (down, up, m) in files.items():
        V = W0[name] + 0.5 * (up.flatten(1) @ down.flatten(1)).view(W0[name].shape)
        norm = V.flatten(1).norm(dim=1).view(m.shape)
        torch.testing.assert_close(delta(ours, name, "dora"), V * m / norm - W0[name], atol=1e-5, rtol=1e-5)


def test_lycoris_lora_and_loha_mixed(ours, tmp_path):
    gen = torch.Generator().manual_seed(4)
    A, B, w = rnd(gen, 2, 32), rnd(gen, 32, 2), [rnd(gen, *s) for s in ((32, 2), (2, 288), (32, 2), (2, 288))]
    tensors = {f"{flat(Q)}.lora_down.weight": A, f"{flat(Q)}.lora_up.weight": B, f"{flat(Q)}.alpha": torch.tensor(1.0),
               **{f"{flat(CONV)}.hada_{k}": v for k, v in zip(("w1_a", "w1_b", "w2_a", "w2_b"), w)}}
    save_file(tensors, tmp_path / "mixed.safetensors")
    assert read_adapter(tmp_path / "mixed.safetensors").kinds == {"LoRA", "LoHa"}
    ours.load_adapter(tmp_path / "mixed.safetensors")
    torch.testing.assert_close(delta(ours, Q, "mixed"), B @ A * 0.5)
    torch.testing.assert_close(delta(ours, CONV, "mixed"), ((w[0] @ w[1]) * (w[2] @ w[3])).view(32, 32, 3, 3))


def test_our_kohya_files_follow_lycoris(ours, tmp_path):
    """DoRA's magnitude as dora_scale (out, 1); a LoKr of whole factors with alpha / r folded into w1 and
    alpha = r; kohya's header naming LyCORIS's network."""
    add_dora(ours.unet, "d", rank=2, alpha=3.0, targets=("to_q",))
    add_lokr(ours.unet, "k", rank=16, alpha=3.0, targets=("to_out.0",))
    train(ours)
    ours.save_adapter(tmp_path / "d.safetensors", "d", format="kohya")
    ours.save_adapter(tmp_path / "k.safetensors", "k", format="kohya")
    d, k, out = load_file(tmp_path / "d.safetensors"), load_file(tmp_path / "k.safetensors"), f"{ATTENTION}.to_out.0"
    assert d[f"{flat(Q)}.dora_scale"].shape == (32, 1) and set(d) >= {f"{flat(Q)}.lora_down.weight", f"{flat(Q)}.alpha"}
    assert k[f"{flat(out)}.alpha"] == 16
    torch.testing.assert_close(k[f"{flat(out)}.lokr_w1"],
                               ours.unet.get_submodule(out).factors["k"]["lokr_w1"].detach() * 3 / 16)
    with safe_open(str(tmp_path / "k.safetensors"), "pt") as f:
        header = f.metadata()
    assert header["ss_network_module"] == "lycoris.kohya" and json.loads(header["ss_network_args"])["algo"] == "lokr"


# ---------------------------------------------------------------------- bad files: refused in one line


def state_of(pipe: Pipeline) -> dict[str, torch.Tensor]:
    return {f"{p}.{k}": v.clone() for p, m in pipe.lora_parts().items() for k, v in m.state_dict().items()}


def refused(pipe: Pipeline, path, match: str, **options) -> None:
    """Loading `path` raises a one-line CheckpointError matching `match`, and leaves the model as it was."""
    before = state_of(pipe)
    with pytest.raises(CheckpointError, match=match) as caught:
        pipe.load_adapter(path, **options)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(str(path))
    assert pipe.adapters == [] and not kinds_of(pipe)
    after = state_of(pipe)
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def saved(pipe: Pipeline, tmp_path, kind: str, format: str) -> tuple[dict, dict]:
    """(tensors, header) of a file of `kind` in `format`; the adapter removed again."""
    adapted(pipe, kind)
    pipe.save_adapter(tmp_path / "s.safetensors", "style", format=format)
    pipe.remove_lora()
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


UP = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v"  # loaded after the text encoder's
LATENT_UP = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"


def options_edit(module: str, **edit):
    def apply(tensors, header):
        options = json.loads(header["options"])
        options[module].update(edit)
        header["options"] = json.dumps(options)
    return apply


EDITS = {  # name -> (kind, format, edit of (tensors, header), message)
    "LoHa without hada_w2_b": ("LoHa", "kohya", lambda t, h: t.pop(f"{UP}.hada_w2_b"),
                               rf"1 LoHa modules of unet lack a weight .* e.g. {UP[10:]} \(no hada_w2_b\)"),
    "dora_scale on LoHa": ("LoHa", "kohya", lambda t, h: t.update({f"{UP}.dora_scale": torch.ones(32, 1)}),
                           r"weight decomposition \(dora_scale\) of LoHa and LoKr is not read"),
    "LoHa and LoKr keys": ("LoHa", "kohya", lambda t, h: t.update({f"{UP}.lokr_w1": torch.ones(4, 4)}),
                           "1 modules of unet hold keys of several adapter kinds"),
    "Tucker LoCon": ("LoHa", "kohya", lambda t, h: t.update({f"{UP}.lora_mid.weight": torch.ones(2, 2, 3, 3)}),
                     "1 keys are not the kohya layout's .* Tucker LoCon are not read"),
    "integers": ("LoHa", "kohya", lambda t, h: t.update({f"{UP}.hada_w1_a": t[f"{UP}.hada_w1_a"].int()}),
                 "1 LoHa weights of unet are not floating point"),
    "NaN": ("LoHa", "kohya", lambda t, h: t[f"{UP}.hada_w2_a"].__setitem__((0, 0), float("nan")),
            "1 LoHa weights of unet hold NaN or infinite values"),
    "1-D": ("LoHa", "kohya", lambda t, h: t.update({f"{UP}.hada_w1_b": t[f"{UP}.hada_w1_b"].flatten()}),
            "wrong number of dimensions"),
    "huge alpha": ("LoHa", "kohya", lambda t, h: t.update({f"{UP}.alpha": torch.tensor(1e30)}),
                   r"alpha / r of .* at most 10000"),
    "dora_scale over inputs": ("DoRA", "kohya", lambda t, h: t.update({f"{UP}.dora_scale": torch.ones(1, 32)}),
                               r"shape \[1, 32\], LyCORIS's decomposition over each input"),
    "LoKr of another shape": ("LoKr", "kohya", lambda t, h: t.update({f"{UP}.lokr_w2_b": torch.ones(1, 9)}),
                              rf"1 LoKr weights do not fit their layers' shapes .* e.g. {LATENT_UP[5:]}$"),
    "LoKr of another shape, latentlab": ("LoKr", "latentlab",
                                         lambda t, h: t.update({f"{LATENT_UP}.lokr_w1_b": torch.ones(1, 5)}),
                                         "1 LoKr weights do not fit their layers' shapes"),
    "bad alpha": ("LoHa", "latentlab", options_edit(LATENT_UP, alpha=-1),
                  rf"header field 'options' of {LATENT_UP}: alpha must be a positive finite number"),
    "bad rank": ("LoHa", "latentlab", options_edit(LATENT_UP, rank="4"), "rank must be a positive integer"),
    "bad activation": ("bottleneck", "latentlab", options_edit("unet." + ATTENTION + ".to_out.0", activation="tanh"),
                       "unknown activation 'tanh'; accepted: gelu, relu, silu"),
    "options not JSON": ("prefix", "latentlab", lambda t, h: h.update(options="{"), "'options' is not valid JSON"),
    "bad fingerprint": ("DoRA", "latentlab", lambda t, h: h.update({"base_fingerprint.unet": "v1:zz"}),
                        "'base_fingerprint.unet' is not a fingerprint"),
}


@pytest.mark.parametrize("case", EDITS)
def test_edited_files_are_refused(ours, tmp_path, case):
    kind, format, edit, message = EDITS[case]
    tensors, header = saved(ours, tmp_path, kind, format)
    edit(tensors, header)
    save_file(tensors, tmp_path / "bad.safetensors", header)
    refused(ours, tmp_path / "bad.safetensors", rf"bad.safetensors: .*{message}")


def test_a_file_of_another_base_model(ours, loaded, tmp_path):
    adapted(ours, "DoRA")
    ours.save_adapter(tmp_path / "dora.safetensors", "style")
    other = fresh(loaded)
    with torch.no_grad():
        for p in other.unet.parameters():
            p.mul_(1.1)  # the same architecture, other weights
    refused(other, tmp_path / "dora.safetensors", r"dora.safetensors was made for another base model: its unet "
                                                  r"fingerprint differs .*check_base=False")
    other.load_adapter(tmp_path / "dora.safetensors", check_base=False)
    other = fresh(loaded)
    other.unet = UNet(dataclasses.replace(loaded.unet.config, channels=(64, 128))).eval()  # other widths
    refused(other, tmp_path / "dora.safetensors", "made for another base model")
    refused(other, tmp_path / "dora.safetensors", r"dora.safetensors: \d+ DoRA weights do not fit their layers' "
                                                  r"shapes", check_base=False)  # after the text encoder's fit


def test_a_file_of_another_kind_than_asked(ours, tmp_path):
    add_lora(ours.unet, "style", targets=UNET_ATTENTION)
    ours.save_adapter(tmp_path / "lora.safetensors", "style")
    with pytest.raises(CheckpointError, match=r"lora.safetensors holds LoRA adapters, not LoHa$"):
        read_adapter(tmp_path / "lora.safetensors", kind="loha")
    ours.remove_lora()
    adapted(ours, "LoRA and LoHa")
    ours.save_adapter(tmp_path / "mixed.safetensors", "style", format="kohya")
    assert read_adapter(tmp_path / "mixed.safetensors", kind="LoHa").kinds == {"LoRA", "LoHa"}
    with pytest.raises(CheckpointError, match=r"mixed.safetensors holds LoHa and LoRA adapters, not LoKr$"):
        read_adapter(tmp_path / "mixed.safetensors", kind="lokr")
    with pytest.raises(LatentlabError, match="unknown adapter kind 'ia3'; accepted: LoRA, DoRA, LoHa, LoKr, bottl"):
        read_adapter(tmp_path / "mixed.safetensors", kind="ia3")


@pytest.mark.parametrize("edit, message", [
    ({"peft_type": "LOHA"}, r"adapter_config.json says LOHA \(LoHa\), but the weights are LoKr's"),
    ({"peft_type": "IA3"}, "adapter_config.json: peft type 'IA3' is not read; accepted: LORA"),
    ({"rank_pattern": {"(": 2}}, "rank_pattern key '\\(' is not a regular expression"),
    ({"r": "16"}, r"r \(or rank_pattern\) must be a positive integer; got '16'"),
    ({"alpha": 0}, "alpha must be a positive finite number")])
def test_bad_peft_configs_are_refused(ours, tmp_path, edit, message):
    adapted(ours, "LoKr whole", text_encoder=False)
    ours.save_adapter(tmp_path / "peft", "style", format="peft")
    ours.remove_lora()
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({**config, **edit}))
    refused(ours, tmp_path / "peft", message)


def test_what_a_format_cannot_hold_is_refused_when_saving(ours, tmp_path):
    adapted(ours, "bottleneck")
    with pytest.raises(LatentlabError, match=r"adapter 'style' \(bottleneck\) cannot be written as 'kohya'; accepted: "
                                             r"latentlab$"):
        ours.save_adapter(tmp_path / "b.safetensors", "style", format="kohya")
    ours.remove_lora()
    adapted(ours, "LoHa")
    with pytest.raises(LatentlabError, match=r"\(LoHa\) cannot be written as 'diffusers'; accepted: latentlab, kohya, "
                                             r"peft$"):
        ours.save_adapter(tmp_path / "h.safetensors", "style", format="diffusers")
    with pytest.raises(LatentlabError, match="the peft format holds one network, the U-Net; .* text_encoder, unet"):
        ours.save_adapter(tmp_path / "h", "style", format="peft")
    with pytest.raises(LatentlabError, match="metadata key 'options' is reserved"):
        ours.save_adapter(tmp_path / "h.safetensors", "style", metadata={"options": "x"})
    ours.remove_lora()
    add_lokr(ours.unet, "style", rank=1, decompose_both=True, targets=("to_q",))
    add_lokr(ours.unet, "style", rank=1, targets=("to_k",))  # options no one LoKrConfig holds
    with pytest.raises(LatentlabError, match="these LoKr factors follow no one peft LoKrConfig"):
        ours.save_adapter(tmp_path / "k", "style", format="peft")
    assert not (tmp_path / "k").exists()


def test_another_kind_on_a_layer_holding_an_adapter_is_refused(ours, tmp_path):
    adapted(ours, "LoHa")
    ours.save_adapter(tmp_path / "loha.safetensors", "style")
    ours.remove_lora()
    add_lora(ours.unet, "mine", targets=("to_v",))
    before = state_of(ours)
    with pytest.raises(CheckpointError, match=r"loha.safetensors: .*to_v already holds \w*LoRALayer adapters; one "
                                              r"kind per layer$"):
        ours.load_adapter(tmp_path / "loha.safetensors")
    after = state_of(ours)
    assert ours.adapters == ["mine"] and kinds_of(ours) == {LoRALayer}
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
