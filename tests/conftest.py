import dataclasses
import gzip
import json
from importlib import resources

import pytest
import torch

from latentlab.data.shapes import caption_corpus
from latentlab.diffusion import DiffusionConfig
from latentlab.models import AutoencoderKL, TextEncoder, Tokenizer, UNet
from latentlab.models.clip_tokenizer import ASSET
from latentlab.pipeline import Pipeline
from latentlab.training.presets import preset

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from a second thread, and while other processes share the two cores the
    threads wait for each other at every operation (100x slower): modules of tiny tensors run on one,
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.fit(caption_corpus(2000), max_length=32)


@pytest.fixture()
def tiny_pipeline(tokenizer) -> Pipeline:
    """A randomly initialised pipeline of the real modules at the `tiny` preset."""
    return tiny(tokenizer)


def tiny(tokenizer) -> Pipeline:
    """`tiny_pipeline`'s model, made anew (for fixtures of other scopes that save it as a folder)."""
    torch.manual_seed(0)
    text = TextEncoder(dataclasses.replace(preset("tiny", "text"), vocab_size=tokenizer.vocab_size))
    unet = UNet(preset("tiny", "unet"))
    for p in unet.parameters():  # undo the zero initialisation, so that the text reaches the output
        torch.nn.init.normal_(p, std=0.05)
    vae = AutoencoderKL(preset("tiny", "vae"))
    return Pipeline(tokenizer=tokenizer, text_encoder=text.eval(), unet=unet.eval(), vae=vae.eval(),
                    diffusion=DiffusionConfig(schedule="linear", timesteps=100), image_size=32)


@pytest.fixture(scope="session")
def clip_vocab_files(tmp_path_factory):
    """CLIP's vocab.json and merges.txt in transformers' format (a diffusers pipeline's tokenizer/ folder),
    written from the merges file latentlab ships, with GPT-2's byte table from transformers."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = tmp_path_factory.mktemp("clip_vocab")
    with gzip.open(resources.files("latentlab").joinpath(ASSET).open("rb")) as f:
        lines = f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in lines]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"
