"""LoRA files (io/lora_files.py): every format written and read back, kohya's names, alphas, the
errors; and the real thing: LoRAs exchanged with diffusers + peft on a tiny Stable Diffusion, outputs compared."""

import copy
import re
import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, inject_adapter_in_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from latentlab.adapters import UNET_ATTENTION, LoRALayer, add_lora, lora_layers, merge_lora, unmerge_lora
from latentlab.cli import main
from latentlab.errors import CheckpointError, LatentlabError
from latentlab.io.lora_files import base_fingerprint, read_lora, same_base, save_lora
from latentlab.pipeline import apply_lora
from latentlab.pipeline import Pipeline

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")

UNET_TARGETS = UNET_ATTENTION + ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
CONVOLUTIONS = ("conv1", "conv2", "conv_shortcut")
TE_TARGETS = ("q_proj", "v_proj", "out_proj", "fc1")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd(tmp_path_factory, tiny_sd_components):
    """(the diffusers folder, the same model as a latentlab folder)."""
    folder = tmp_path_factory.mktemp("sd")
    StableDiffusionPipeline(**tiny_sd_components()).save_pretrained(folder / "diffusers", safe_serialization=True)
    Pipeline.load(folder / "diffusers", device="cpu").save(folder / "latentlab")
    return folder / "diffusers", folder / "latentlab"


@pytest.fixture(scope="module")
def other_sd(tmp_path_factory, tiny_sd_components):
    """Another model of the same architecture (other weights), as a latentlab folder."""
    folder = tmp_path_factory.mktemp("other")
    StableDiffusionPipeline(**tiny_sd_components(seed=5)).save_pretrained(folder / "diffusers", safe_serialization=True)
    Pipeline.load(folder / "diffusers", device="cpu").save(folder / "latentlab")
    return folder / "latentlab"


@pytest.fixture()
def other(other_sd):
    return Pipeline.load(other_sd, device="cpu")


@pytest.fixture()
def ours(sd):
    return Pipeline.load(sd[1], device="cpu")


def diffusers_pipe(sd) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(sd[0], safety_checker=None, requires_safety_checker=False)


# inputs to both U-Nets and both text encoders
g = torch.Generator().manual_seed(0)
X, T, CONTEXT = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]), torch.randn(2, 7, 64, generator=g)
IDS = torch.cat([torch.randint(0, 49406, (2, 9), generator=g), torch.full((2, 1), 49407)], dim=1)


@torch.no_grad()
def our_outputs(pipe: Pipeline) -> tuple[torch.Tensor, torch.Tensor]:
    return pipe.unet(X, T, CONTEXT), pipe.text_encoder(IDS)[0]


@torch.no_grad()
def their_outputs(unet, text_encoder=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    return (unet(X, T, encoder_hidden_states=CONTEXT).sample,
            None if text_encoder is None else text_encoder(IDS).last_hidden_state)


def add_random_lora(pipe: Pipeline, name: str = "style", *, text_encoder: bool = True, seed: int = 0) -> None:
    """A LoRA in ours with nonzero A and B, ranks and alphas varying over the modules (alpha != r)."""
    add_lora(pipe.unet, name, rank=4, alpha=8.0, targets=UNET_TARGETS)
    add_lora(pipe.unet, name, rank=2, alpha=1.0, targets=CONVOLUTIONS)
    if text_encoder:
        add_lora(pipe.text_encoder, name, rank=2, alpha=3.0, targets=TE_TARGETS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in pipe.lora_parts().values():
            for _, layer in lora_layers(module):
                for p in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def assert_close(got, want, atol=1e-4):
    for a, b in zip(got, want):
        if a is not None and b is not None:
            assert (a - b).abs().max() < atol, (a - b).abs().max()


def assert_close_not(got, want, atol=1e-3):
    """Every output differs: the LoRA reaches it, so a comparison means something."""
    for a, b in zip(got, want):
        if a is not None and b is not None:
            assert (a - b).abs().max() > atol


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("format", ["latentlab", "kohya", "diffusers", "peft"])
def test_round_trip(ours, sd, tmp_path, format):
    base = our_outputs(ours)
    add_random_lora(ours, text_encoder=format != "peft")
    want = our_outputs(ours)
    assert (want[0] - base[0]).abs().max() > 1e-2  # the LoRA changes the output
    path = tmp_path / ("style" if format == "peft" else "style.safetensors")
    ours.save_lora(path, "style", format=format)
    lora = read_lora(path)
    assert lora.format == format and set(lora.parts) == ({"unet"} if format == "peft" else {"unet", "text_encoder"})
    fresh = Pipeline.load(sd[1], device="cpu")
    assert fresh.load_lora(path) == "style"
    assert_close(our_outputs(fresh), want, atol=1e-5)
    assert {n: l.alpha["style"] / l.rank("style") for n, l in lora_layers(fresh.unet)} == \
        ({n: l.alpha["style"] / l.rank("style") for n, l in lora_layers(ours.unet)} if format != "diffusers" else
         {n: 1.0 for n, _ in lora_layers(ours.unet)})  # the old diffusers spelling folds alpha / r into B


def test_latentlab_header(ours, sd, tmp_path):
    add_random_lora(ours)
    ours.save_lora(tmp_path / "s.safetensors", "style", metadata={"trigger": "sks", "steps": 100})
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        header = f.metadata()
    assert header["latentlab_lora"] == "1" and header["trigger"] == "sks" and header["steps"] == "100"
    assert json.loads(header["rank"])["unet.down_blocks.0.resnets.0.conv1"] == 2
    assert json.loads(header["alpha"])["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"] == 3.0
    assert header["base_fingerprint.unet"] == base_fingerprint(Pipeline.load(sd[1], device="cpu").unet)
    config = json.loads(header["lora_adapter_metadata"])
    assert config["unet.r"] == 4 and config["unet.lora_alpha"] == 8.0
    assert config["text_encoder.target_modules"][0].startswith("encoder.layers.")  # as transformers 5 names them
    with pytest.raises(LatentlabError, match="metadata key 'rank' is reserved"):
        ours.save_lora(tmp_path / "t.safetensors", "style", metadata={"rank": "8"})


def test_kohya_names_map_forward_from_the_live_modules(ours, sd, tmp_path):
    add_random_lora(ours)
    ours.save_lora(tmp_path / "k.safetensors", "style", format="kohya")
    keys = set(load_file(tmp_path / "k.safetensors"))
    for key in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight",
                "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_up.weight",
                "lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.alpha",
                "lora_te_text_model_encoder_layers_1_mlp_fc1.lora_down.weight"):
        assert key in keys
    lora = read_lora(tmp_path / "k.safetensors")
    assert lora.flat_names and "down_blocks_0_attentions_0_proj_in" in lora.alphas["unet"]
    fresh = Pipeline.load(sd[1], device="cpu")
    fresh.load_lora(tmp_path / "k.safetensors")
    assert {n for n, _ in lora_layers(fresh.unet)} == {n for n, _ in lora_layers(ours.unet)}
    to_out = fresh.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0")
    assert isinstance(to_out, LoRALayer)


def kohya_file(path, A, B, alpha=None, name="lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q"):
    tensors = {f"{name}.lora_down.weight": A, f"{name}.lora_up.weight": B}
    if alpha is not None:
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, path)
    return path


@pytest.mark.parametrize("alpha, scale, want", [(None, 1.0, 1.0), (2.0, 1.0, 0.5), (2.0, 0.5, 0.25), (16.0, 1.0, 4.0)])
def test_kohya_alpha_gives_the_scale(ours, tmp_path, alpha, scale, want):
    """scale = multiplier * alpha / r, with r = 4; a missing alpha means alpha = r."""
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"
    A, B = torch.randn(4, 32), torch.randn(32, 4)
    ours.load_lora(kohya_file(tmp_path / "k.safetensors", A, B, alpha), scale=scale)
    wrapped = ours.unet.get_submodule(layer)
    assert wrapped.scaling("k") == want
    x = torch.randn(3, 32)
    torch.testing.assert_close(wrapped(x), wrapped.base(x) + want * x @ (B @ A).T)


@pytest.mark.parametrize("spelling", ["one network, no prefix", "attention processors"])
def test_other_diffusers_spellings(ours, sd, tmp_path, spelling):
    """diffusers' save_lora_adapter (one network's keys, no `unet.`, its LoraConfig unprefixed too), and
    its attention processors' keys (`attn1.processor.to_out_lora.down.weight`, alpha = r)."""
    alpha = 4.0 if spelling == "one network, no prefix" else None
    add_lora(ours.unet, "style", rank=2, alpha=alpha, targets=UNET_ATTENTION)
    for _, layer in lora_layers(ours.unet):
        torch.nn.init.normal_(layer.lora_B["style"].weight)
    want = our_outputs(ours)
    state = {}
    for key, tensor in ours.lora_parts()["unet"].state_dict().items():
        match = re.fullmatch(r"(.+)\.(to_[qkv]|to_out\.0)\.lora_(A|B)\.style\.weight", key)
        if match and spelling == "attention processors":
            projection = match[2].removesuffix(".0")
            state[f"unet.{match[1]}.processor.{projection}_lora.{'down' if match[3] == 'A' else 'up'}.weight"] = tensor
        elif match:
            state[f"{match[1]}.{match[2]}.lora_{match[3]}.weight"] = tensor
    config = {"r": 2, "lora_alpha": alpha, "target_modules": list(UNET_ATTENTION)}
    header = {"lora_adapter_metadata": json.dumps(config)} if alpha else None
    save_file(state, tmp_path / "s.safetensors", metadata=header)
    assert read_lora(tmp_path / "s.safetensors").format == "diffusers"
    fresh = Pipeline.load(sd[1], device="cpu")
    fresh.load_lora(tmp_path / "s.safetensors")
    assert_close(our_outputs(fresh), want, atol=1e-6)


# ---------------------------------------------------------------------- with diffusers


@pytest.mark.parametrize("format", ["latentlab", "kohya", "diffusers"])
def test_diffusers_loads_our_files(ours, sd, tmp_path, format):
    """A LoRA made in ours, saved, then read by diffusers' load_lora_weights: the same U-Net and text encoder."""
    add_random_lora(ours)
    want = our_outputs(ours)
    ours.save_lora(tmp_path / "style.safetensors", "style", format=format)
    pipe = diffusers_pipe(sd)
    before = their_outputs(pipe.unet, pipe.text_encoder)
    assert_close(before, our_outputs(Pipeline.load(sd[1], device="cpu")))  # the base models agree
    assert_close_not(before, want)
    pipe.load_lora_weights(tmp_path, weight_name="style.safetensors", adapter_name="style")
    assert_close(their_outputs(pipe.unet, pipe.text_encoder), want)


def test_peft_loads_our_folder(ours, sd, tmp_path):
    add_random_lora(ours, text_encoder=False)
    want = our_outputs(ours)
    ours.save_lora(tmp_path / "style", "style", format="peft")
    unet = PeftModel.from_pretrained(diffusers_pipe(sd).unet, tmp_path / "style")
    assert_close(their_outputs(unet), want)


def test_diffusers_lora_read_by_ours(sd, tmp_path):
    """A LoRA added in diffusers through peft (random weights, alpha != r, per-module patterns), saved by
    StableDiffusionPipeline.save_lora_weights, loaded by ours."""
    pipe = diffusers_pipe(sd)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                     target_modules=list(UNET_TARGETS + CONVOLUTIONS),
                                     rank_pattern={"conv1": 2}, alpha_pattern={"conv1": 1, "to_k": 3}))
    te_config = LoraConfig(r=2, lora_alpha=5, init_lora_weights=False, target_modules=list(TE_TARGETS))
    inject_adapter_in_model(te_config, pipe.text_encoder)  # transformers' add_adapter wants peft >= 0.22
    want = their_outputs(pipe.unet, pipe.text_encoder)
    assert_close_not(want, their_outputs(diffusers_pipe(sd).unet, diffusers_pipe(sd).text_encoder))
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=te_config.to_dict())
    lora = read_lora(tmp_path / "pytorch_lora_weights.safetensors")
    assert lora.format == "diffusers" and set(lora.parts) == {"unet", "text_encoder"}
    ours = Pipeline.load(sd[1], device="cpu")
    ours.load_lora(tmp_path, name="theirs")  # the folder, as diffusers takes it
    assert ours.unet.get_submodule("down_blocks.0.resnets.0.conv1").scaling("theirs") == 0.5
    assert_close(our_outputs(ours), want)


def test_peft_folder_with_rslora_read_by_ours(sd, tmp_path):
    config = LoraConfig(r=4, lora_alpha=6, use_rslora=True, init_lora_weights=False,
                        target_modules=list(UNET_ATTENTION))
    unet = get_peft_model(diffusers_pipe(sd).unet, config)
    want = their_outputs(unet)
    unet.save_pretrained(tmp_path / "adapter")
    ours = Pipeline.load(sd[1], device="cpu")
    assert ours.load_lora(tmp_path / "adapter") == "adapter"
    assert ours.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_q").scaling("adapter") == 3.0
    assert_close(our_outputs(ours)[:1], want[:1])


# ---------------------------------------------------------------------- the pipeline's LoRA methods


def test_several_loras_scales_merging_and_removal(ours, tmp_path):
    state = {k: v.clone() for k, v in ours.unet.state_dict().items()}
    base = our_outputs(ours)
    for i, name in enumerate(("a", "b")):
        add_random_lora(ours, name, seed=i)
        ours.save_lora(tmp_path / f"{name}.safetensors", name, format=("latentlab", "kohya")[i])
    ours.remove_lora()
    assert ours.loras == [] and all(torch.equal(v, state[k]) for k, v in ours.unet.state_dict().items())
    assert ours.load_lora(tmp_path / "a.safetensors", scale=0.0) == "a"
    assert_close(our_outputs(ours), base, atol=1e-5)  # exactly, but for GEGLU's path (test below)
    ours.set_lora_scale("a", 0.7)
    ours.load_lora(tmp_path / "b.safetensors", scale=0.3)
    assert ours.loras == ["a", "b"]
    assert ours.load_lora(tmp_path / "b.safetensors", scale=0.0) == "b_2"  # the same file again: a new name
    ours.remove_lora("b_2")
    both = our_outputs(ours)
    ours.merge_lora()
    assert_close(our_outputs(ours), both)
    ours.unmerge_lora("a")
    ours.set_lora_scale("b", 0.3)
    assert_close(our_outputs(ours), both)
    ours.unmerge_lora()
    ours.remove_lora()
    assert all((v - state[k]).abs().max() < 1e-6 for k, v in ours.unet.state_dict().items())
    with pytest.raises(LatentlabError, match="no LoRA named 'a' is loaded; loaded: none"):
        ours.set_lora_scale("a", 1.0)


@pytest.mark.parametrize("targets", [
    UNET_ATTENTION + ("proj_in", "proj_out", "ff.net.2") + CONVOLUTIONS,
    ("ff.net.0.proj",),  # GEGLU's own two-product path (fast/modules.py FastGEGLU), the LoRA adding nothing
])
def test_scale_zero_is_exactly_the_base_model(ours, tmp_path, targets):
    base = our_outputs(ours)
    add_lora(ours.unet, "style", targets=targets)
    for _, layer in lora_layers(ours.unet):
        torch.nn.init.normal_(layer.lora_B["style"].weight)
    ours.set_lora_scale("style", 0.0)
    assert torch.equal(our_outputs(ours)[0], base[0])


def test_low_precision_pipeline_gets_low_precision_loras(ours, sd, tmp_path):
    add_random_lora(ours)
    want = our_outputs(ours)
    ours.save_lora(tmp_path / "s.safetensors", "style")
    pipe = Pipeline.load(sd[1], device="cpu", dtype="bfloat16")
    pipe.load_lora(tmp_path / "s.safetensors")  # the fingerprint survives the cast
    layer = pipe.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert layer.lora_A["s"].weight.dtype == torch.bfloat16
    with torch.no_grad():
        got = pipe.unet(X.bfloat16(), T, CONTEXT.bfloat16()).float()
    assert (got - want[0]).abs().max() < 5e-2 * want[0].abs().max()


def test_fingerprint(ours, other):
    before = base_fingerprint(ours.unet)
    add_random_lora(ours)
    assert base_fingerprint(ours.unet) == before  # the wrapping is invisible
    merge_lora(ours.unet)
    assert base_fingerprint(ours.unet) != before and same_base(base_fingerprint(ours.unet), before)
    unmerge_lora(ours.unet)
    assert same_base(base_fingerprint(copy.deepcopy(ours.unet).half()), before)
    assert not same_base(base_fingerprint(other.unet), before)  # the same architecture, other weights
    assert not same_base(base_fingerprint(ours.text_encoder), before)


# ---------------------------------------------------------------------- bad input


def no_lora_anywhere(pipe: Pipeline) -> bool:
    return pipe.loras == [] and not any(list(lora_layers(m)) for m in pipe.lora_parts().values())


def test_file_for_another_base_model(ours, other, tiny_pipeline, tmp_path):
    add_random_lora(other)
    other.save_lora(tmp_path / "other.safetensors", "style")
    with pytest.raises(CheckpointError, match=r"other.safetensors was made for another base model: its .* fingerprint "
                                              r"differs .*check_base=False"):
        ours.load_lora(tmp_path / "other.safetensors")
    assert no_lora_anywhere(ours)
    ours.load_lora(tmp_path / "other.safetensors", check_base=False)  # the same architecture: it fits
    assert ours.loras == ["other"]
    ours.remove_lora()
    add_lora(tiny_pipeline.unet, "style", targets=UNET_ATTENTION)  # another architecture
    tiny_pipeline.save_lora(tmp_path / "tiny.safetensors", "style")
    with pytest.raises(CheckpointError, match="made for another base model"):
        ours.load_lora(tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match=r"tiny.safetensors: .*LoRA (modules are not linear layers|weights do not "
                                              r"fit).* another base model"):
        ours.load_lora(tmp_path / "tiny.safetensors", check_base=False)
    assert no_lora_anywhere(ours)


def test_a_network_the_model_lacks(ours, tmp_path):
    add_random_lora(ours)
    save_lora(tmp_path / "s.safetensors", {"unet": ours.unet, "text_encoder": ours.text_encoder}, "style")
    ours.remove_lora()
    with pytest.raises(CheckpointError, match="adapts text_encoder, which this model does not have"):
        apply_lora({"unet": ours.unet}, read_lora(tmp_path / "s.safetensors"))


def test_wrong_rank_loads_nothing(ours, tmp_path):
    add_random_lora(ours)
    ours.save_lora(tmp_path / "s.safetensors", "style")
    ours.remove_lora()
    state = load_file(tmp_path / "s.safetensors")
    key = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight"  # the U-Net loads last
    state[key] = torch.zeros(state[key].shape[0], 5)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"bad.safetensors: 1 LoRA weights do not fit their layers' shapes .*"
                                              r"e.g. up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v$"):
        ours.load_lora(tmp_path / "bad.safetensors")
    assert no_lora_anywhere(ours)  # the text encoder's half was taken out again


@pytest.mark.parametrize("format, drop", [("latentlab", "unet.mid_block.attentions.0.proj_in.lora_B.weight"),
                                          ("kohya", "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight")])
def test_missing_up_weight(ours, tmp_path, format, drop):
    add_random_lora(ours)
    ours.save_lora(tmp_path / "s.safetensors", "style", format=format)
    state = load_file(tmp_path / "s.safetensors")
    del state[drop]
    save_file(state, tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError, match=r"1 LoRA modules of (unet|text_encoder) lack a weight, e.g. "
                                              r"(mid_block.attentions.0.proj_in|text_model_encoder_layers_0_mlp_fc1) "
                                              r"\(no B\)"):
        read_lora(tmp_path / "s.safetensors")


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_pickles_are_never_opened(tmp_path, suffix):
    path = tmp_path / f"lora{suffix}"
    path.write_bytes(b"\x80\x04 not even a pickle")
    with pytest.raises(CheckpointError, match=rf"lora\{suffix} is a pickle .* only as .safetensors"):
        read_lora(path)


def test_unknown_layouts(tmp_path):
    save_file({"model.fc.weight": torch.zeros(2, 2)}, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match=r"unknown LoRA key layout \(e.g. model.fc.weight\); accepted: kohya"):
        read_lora(tmp_path / "a.safetensors")
    name = "lora_unet_mid_block_attentions_0_proj_in"
    save_file({f"{name}.lora_down.weight": torch.zeros(2, 2), f"{name}.lora_up.weight": torch.zeros(2, 2),
               f"{name}.hada_w1_a": torch.zeros(2, 2)}, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match=rf"1 keys do not fit the kohya layout of the others, e.g. {name}.hada"):
        read_lora(tmp_path / "b.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="c.safetensors is not a readable safetensors file"):
        read_lora(tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="LoRA file .*d.safetensors does not exist"):
        read_lora(tmp_path / "d.safetensors")


def test_names_and_formats(ours, tmp_path):
    add_random_lora(ours)
    with pytest.raises(LatentlabError, match="unknown LoRA file format 'ckpt'; accepted: latentlab, kohya, diffusers, "
                                             "peft"):
        ours.save_lora(tmp_path / "s.safetensors", "style", format="ckpt")
    with pytest.raises(LatentlabError, match="peft format holds one network, the U-Net; .*text_encoder"):
        ours.save_lora(tmp_path / "s", "style", format="peft")
    with pytest.raises(LatentlabError, match="no network holds a LoRA adapter named 'other'; loaded: style"):
        ours.save_lora(tmp_path / "s.safetensors", "other")
    ours.save_lora(tmp_path / "s.safetensors", "style")
    with pytest.raises(LatentlabError, match="a LoRA named 'style' is already loaded"):
        ours.load_lora(tmp_path / "s.safetensors", name="style")
    with pytest.raises(LatentlabError, match="must be non-empty and hold no '.'"):
        ours.load_lora(tmp_path / "s.safetensors", name="v1.5")
    assert ours.load_lora(tmp_path / "s.safetensors") == "s"


# ---------------------------------------------------------------------- command line


def images(pipe: Pipeline) -> torch.Tensor:
    return pipe.sample(["a red circle"], steps=2, guidance=3.0, seed=0, size=16)


@pytest.fixture()
def lora_file(ours, tmp_path):
    add_random_lora(ours)
    ours.save_lora(tmp_path / "style.safetensors", "style", format="kohya")
    ours.remove_lora()
    return tmp_path / "style.safetensors"


def test_generate_with_loras(sd, lora_file, tmp_path):
    out = tmp_path / "images"
    code = main(["generate", "a red circle", "--model", str(sd[1]), "--steps", "2", "--size", "16", "--device", "cpu",
                 "--lora", f"{lora_file}:0.5", "--lora", str(lora_file), "--out", str(out)])
    assert code == 0 and (out / "000-a-red-circle.png").is_file()


@pytest.mark.parametrize("lora, message", [(":abc", "scale 'abc' is not a number; write FILE or FILE:SCALE"),
                                           (":inf", "scale must be a finite number"),
                                           ("-missing", "LoRA file .*-missing.safetensors does not exist"),
                                           (".ckpt", "is a pickle")])
def test_generate_bad_lora_exits_2(sd, lora_file, tmp_path, capsys, lora, message):
    if lora == ".ckpt":
        (tmp_path / "style.ckpt").write_bytes(b"\x80")
        argument = str(tmp_path / "style.ckpt")
    else:
        argument = f"{lora_file}{lora}" if lora.startswith(":") else str(tmp_path / f"style{lora}.safetensors")
    code = main(["generate", "a red circle", "--model", str(sd[1]), "--steps", "2", "--size", "16", "--device", "cpu",
                 "--lora", argument, "--out", str(tmp_path / "images")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("latentlab: error:")
    assert re.search(message, err), err


def test_lora_merge_writes_a_model_with_the_lora_in_its_weights(sd, lora_file, tmp_path):
    out = tmp_path / "merged"
    assert main(["lora", "merge", "--model", str(sd[1]), "--lora", f"{lora_file}:0.7", "--out", str(out),
                 "--device", "cpu"]) == 0
    merged = Pipeline.load(out, device="cpu")
    assert merged.loras == [] and not any(lora_layers(merged.unet))
    pipe = Pipeline.load(sd[1], device="cpu")
    base = images(pipe)
    pipe.load_lora(lora_file, scale=0.7)
    want = images(pipe)
    assert (want - base).abs().max() > 1e-2
    assert (images(merged) - want).abs().max() < 1e-4
    assert main(["lora", "merge", "--model", str(sd[1]), "--out", str(out)]) == 2  # no --lora


# ---------------------------------------------------------------------- edited files: refused in one line


def saved_lora(ours, tmp_path, format="latentlab") -> tuple[dict, dict]:
    """(tensors, header) of a LoRA file `format` writes."""
    add_random_lora(ours)
    ours.save_lora(tmp_path / "s.safetensors", "style", format=format)
    ours.remove_lora()
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def refused(ours, path, match) -> str:
    """Loading `path` raises a one-line CheckpointError matching `match`, and adds nothing."""
    with pytest.raises(CheckpointError, match=match) as caught:
        ours.load_lora(path)
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)
    assert no_lora_anywhere(ours)
    return str(caught.value)


@pytest.mark.parametrize("alpha, why", [("nan", "not valid JSON"), ("NaN", "positive finite number"),
                                        ("-1", "positive finite number"), ("0", "positive finite number"),
                                        ("1e400", "positive finite number"), ("[1, 2]", "positive finite number"),
                                        ("true", "positive finite number"),
                                        ('{"unet.mid_block.attentions.0.proj_in": "x"}', "positive finite number")])
def test_a_bad_header_alpha_is_refused_naming_the_field(ours, tmp_path, alpha, why):
    tensors, header = saved_lora(ours, tmp_path)
    save_file(tensors, tmp_path / "bad.safetensors", {**header, "alpha": alpha})
    refused(ours, tmp_path / "bad.safetensors", rf"bad.safetensors: header field 'alpha'.* {why}")


@pytest.mark.parametrize("edit, why", [
    ("not json", "not valid JSON"), ([1], "JSON object"), ({"unet.lora_alpha": "8"}, "positive finite number"),
    ({"unet.lora_alpha": 0}, "positive finite number"), ({"unet.alpha_pattern": {"conv1": -2}}, "positive finite"),
    ({"unet.alpha_pattern": [1]}, "alpha_pattern.* JSON object"), ({"unet.alpha_pattern": {"(": 2}}, "regular expr"),
    ({"unet.use_rslora": "yes"}, "use_rslora.* true or false"), ({"unet.peft_type": "LOHA\n"}, "only plain LoRA")])
def test_bad_diffusers_metadata_is_refused_naming_the_field(ours, tmp_path, edit, why):
    tensors, header = saved_lora(ours, tmp_path)
    del header["alpha"]  # diffusers reads the LoraConfig in lora_adapter_metadata
    packed = json.loads(header["lora_adapter_metadata"])
    packed = {**packed, **edit} if isinstance(edit, dict) else edit
    header["lora_adapter_metadata"] = packed if isinstance(packed, str) else json.dumps(packed)
    save_file(tensors, tmp_path / "bad.safetensors", header)
    refused(ours, tmp_path / "bad.safetensors", rf"bad.safetensors: .*lora_adapter_metadata.*{why}")


@pytest.mark.parametrize("edit, why", [({"lora_alpha": float("inf")}, "lora_alpha.* positive finite number"),
                                       ({"lora_alpha": None}, "lora_alpha.* positive finite number"),
                                       ({"alpha_pattern": {"to_k": "3"}}, "alpha_pattern.* positive finite"),
                                       ({"use_rslora": 1}, "use_rslora.* true or false")])
def test_bad_peft_config_values_are_refused_naming_the_field(ours, tmp_path, edit, why):
    add_random_lora(ours, text_encoder=False)
    ours.save_lora(tmp_path / "peft", "style", format="peft")
    ours.remove_lora()
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({**config, **edit}))
    refused(ours, tmp_path / "peft", rf"adapter_config.json.*{why}")


@pytest.mark.parametrize("shape", [[], [4], [4, 32, 1], [4, 32, 1, 1, 1], [0, 32]])
def test_lora_weights_of_a_wrong_number_of_dimensions_are_refused(ours, tmp_path, shape):
    tensors, header = saved_lora(ours, tmp_path)
    tensors["unet.mid_block.attentions.0.proj_in.lora_A.weight"] = torch.zeros(shape)
    save_file(tensors, tmp_path / "bad.safetensors", header)
    refused(ours, tmp_path / "bad.safetensors", r"bad.safetensors: 1 LoRA weights do not fit their layers' shapes .*"
                                               r"e.g. mid_block.attentions.0.proj_in$")


def test_lora_a_and_b_of_different_ranks_are_refused_when_read(ours, tmp_path):
    tensors, header = saved_lora(ours, tmp_path, "kohya")
    name = "lora_unet_mid_block_attentions_0_proj_in"
    tensors[f"{name}.lora_up.weight"] = tensors[f"{name}.lora_up.weight"][:, :3].contiguous()
    save_file(tensors, tmp_path / "bad.safetensors", header)
    with pytest.raises(CheckpointError, match=rf"1 LoRA weights do not fit .*the same rank.*e.g. {name[10:]}$"):
        read_lora(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("key", ["unet.mid_block.attentions.0.proj_in\n.lora_A.weight",
                                 "unet.mid\rblock.lora_A.weight", "unet.mid\x1bblock\u202e.lora_A.weight"])
def test_key_names_with_control_characters_are_shown_escaped(ours, tmp_path, key):
    tensors, header = saved_lora(ours, tmp_path)
    tensors[key] = torch.zeros(2, 2)
    save_file(tensors, tmp_path / "bad.safetensors", header)
    message = refused(ours, tmp_path / "bad.safetensors", "bad.safetensors: ")
    assert repr(key.removeprefix("unet.").removesuffix(".lora_A.weight")).strip("'") in message or repr(key) in message


@pytest.mark.parametrize("format, key, dtype", [
    ("latentlab", "unet.mid_block.attentions.0.proj_in.lora_A.weight", torch.int32),
    ("latentlab", "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight", torch.int64),
    ("kohya", "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight", torch.bool),
    ("kohya", "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight", torch.uint8),
    ("kohya", "lora_unet_mid_block_attentions_0_proj_in.alpha", torch.bool)])
def test_lora_weights_stored_as_integers_are_refused(ours, tmp_path, format, key, dtype):
    tensors, header = saved_lora(ours, tmp_path, format)
    tensors[key] = tensors[key].to(dtype)
    save_file(tensors, tmp_path / "bad.safetensors", header)
    refused(ours, tmp_path / "bad.safetensors", r"bad.safetensors: .*(not floating point|one positive finite number)")


@pytest.mark.parametrize("alpha, dtype", [(8, torch.int64), (8.0, torch.float16), (8.0, torch.bfloat16)])
def test_kohya_alphas_as_kohya_writes_them_load(ours, tmp_path, alpha, dtype):
    """kohya's sd-scripts keeps alpha as a buffer torch.tensor(alpha): int64 where it defaulted alpha to the
    rank, else float32, or float16 / bfloat16 with --save_precision."""
    A, B = torch.randn(4, 32), torch.randn(32, 4)
    path = kohya_file(tmp_path / "k.safetensors", A, B)
    tensors = load_file(path)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q"
    tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
    save_file(tensors, path)
    ours.load_lora(path)
    assert ours.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q").scaling("k") == 2.0


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), 0.0, -1.0, [1.0, 2.0]])
def test_a_bad_kohya_alpha_is_refused(ours, tmp_path, alpha):
    path = kohya_file(tmp_path / "k.safetensors", torch.randn(4, 32), torch.randn(32, 4), alpha)
    refused(ours, path, r"k.safetensors: alpha of unet down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q "
                        r"must be (one|a) positive finite number")


def test_non_finite_lora_weights_are_refused(ours, tmp_path):
    A, B = torch.randn(4, 32), torch.randn(32, 4)
    B[3, 1] = float("nan")
    refused(ours, kohya_file(tmp_path / "k.safetensors", A, B), r"k.safetensors: 1 LoRA modules of unet hold NaN or "
                                                                r"infinite weights")


def test_a_malformed_base_fingerprint_is_refused(ours, tmp_path):
    tensors, header = saved_lora(ours, tmp_path)
    fingerprint = header["base_fingerprint.unet"]
    save_file(tensors, tmp_path / "bad.safetensors", {**header, "base_fingerprint.unet": fingerprint[:-3] + "xyz"})
    refused(ours, tmp_path / "bad.safetensors", r"bad.safetensors: header field 'base_fingerprint.unet' is not a "
                                               r"fingerprint")


@pytest.mark.parametrize("format", ["latentlab", "kohya"])
def test_an_alpha_far_beyond_any_trained_lora_is_refused(ours, tmp_path, format):
    """alpha / r = 1e29 overflows the weights to inf: the pipeline would draw NaN images."""
    tensors, header = saved_lora(ours, tmp_path, format)
    if format == "kohya":
        tensors = {k: torch.tensor(1e30) if k.endswith(".alpha") else v for k, v in tensors.items()}
    else:
        header["alpha"] = "1e30"
    save_file(tensors, tmp_path / "bad.safetensors", header)
    refused(ours, tmp_path / "bad.safetensors", r"bad.safetensors: .* alpha / r .* at most 10000")
