import random
import re

import pytest

from latentlab.data.paraphrase import NEW_WORDS, PARAPHRASE_KINDS, paraphrase
from latentlab.data.shapes import COLOURS, SHAPES, ShapesDataset, caption_corpus


@pytest.fixture(scope="module")
def training_captions():
    return set(caption_corpus(n=20_000))


@pytest.mark.parametrize("kind", PARAPHRASE_KINDS)
def test_paraphrases_are_never_training_captions(kind, training_captions):
    data = ShapesDataset(seed=3, split="test", p_two=0.0)
    for i in range(300):
        scene, _ = data.example(i)
        text = paraphrase(scene, kind, random.Random(i))
        assert text not in training_captions
        (obj,) = scene.objects
        words = re.findall(r"[a-z-]+", text)
        if kind == "templates":  # known words in a new sentence
            assert obj.colour in words and obj.shape in words
        else:  # the training words for colour and shape are gone
            assert not set(words) & (set(COLOURS) | set(SHAPES))
            assert any(w in text for w in NEW_WORDS[obj.colour])


def test_bad_requests():
    scene, _ = ShapesDataset(seed=0, split="test", p_two=1.0).example(0)
    with pytest.raises(ValueError, match="one-object"):
        paraphrase(scene, "words", random.Random(0))
    with pytest.raises(ValueError, match="accepted: templates, words"):
        paraphrase(ShapesDataset(seed=0, split="test", p_two=0.0).example(0)[0], "synonyms", random.Random(0))
