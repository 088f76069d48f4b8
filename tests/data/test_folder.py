import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from latentlab.data.folder import ImageFolder
from latentlab.errors import LatentlabError

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def solid(colour, size=(40, 40), mode="RGB"):
    return Image.new(mode, size, colour)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def make_good(root):
    """Three good images with .txt captions (one in a subfolder, one JPEG) and one without a caption."""
    (root / "sub").mkdir(parents=True)
    solid(RED).save(root / "a.png")
    (root / "a.txt").write_text("  a red square\n")
    solid(BLUE).save(root / "b.JPG", quality=95)
    (root / "b.txt").write_text("a blue square")
    solid(GREEN).save(root / "sub" / "c.png")
    (root / "sub" / "c.txt").write_text("a green square")
    solid((0, 0, 0, 0), mode="RGBA").save(root / "d.png")  # transparent -> white, no caption


def make_bad(root):
    """One file of each bad kind; returns {relative path: word its reason must mention}."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise))
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("this is not an image")
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(root / "deep.png")
    solid((0, 0, 0, 0), mode="CMYK").save(root / "cmyk.jpg")
    solid(RED, size=(300, 200)).save(root / "huge.png")  # over max_pixels=10_000 below
    (root / "empty.png").write_bytes(b"")
    return {"truncated.png": "truncated", "text.png": "not an image", "deep.png": "16-bit",
            "cmyk.jpg": "CMYK", "huge.png": "too large", "empty.png": "empty"}


def read(root, **kwargs):
    lines = []
    data = ImageFolder(root, max_pixels=10_000, log=lines.append, **kwargs)
    return data, lines


def by_path(data):
    pixels, captions, labels = data.items(list(range(len(data))))
    return {label: (p, c) for p, c, label in zip(pixels, captions, labels)}


def test_good_images_with_txt_captions(tmp_path):
    make_good(tmp_path)
    data, lines = read(tmp_path, image_size=16)
    assert data.paths == ["a.png", "b.JPG", "d.png", "sub/c.png"]  # sorted relative paths
    assert data.pixels.shape == (4, 16, 16, 3) and data.pixels.dtype == np.uint8
    items = by_path(data)
    assert items["a.png"][1] == "a red square"
    assert items["b.JPG"][1] == "a blue square"
    assert items["sub/c.png"][1] == "a green square"
    assert items["d.png"][1] == ""
    assert (items["a.png"][0] == RED).all()
    assert np.abs(items["b.JPG"][0].astype(int) - BLUE).max() <= 8  # JPEG
    assert (items["sub/c.png"][0] == GREEN).all()
    assert (items["d.png"][0] == 255).all()  # alpha over white
    assert data.skipped == [] and data.uncaptioned == 1
    assert lines == ["4 images read, 0 skipped", "1 images have no caption; they train unconditional"]


def test_bad_images_are_skipped_and_reported(tmp_path):
    make_good(tmp_path)
    expected = make_bad(tmp_path)
    data, lines = read(tmp_path)
    assert data.paths == ["a.png", "b.JPG", "d.png", "sub/c.png"]
    reasons = dict(data.skipped)
    assert reasons.keys() == expected.keys()
    for path, word in expected.items():
        assert word in reasons[path], (path, reasons[path])
    assert lines[: len(expected)] == [f"skipped {p}: {r}" for p, r in data.skipped]
    assert lines[len(expected)] == f"4 images read, {len(expected)} skipped"


def test_decompression_bomb_is_caught(tmp_path, monkeypatch):
    solid(RED, size=(64, 64)).save(tmp_path / "bomb.png")  # 4096 pixels > 2 * 1000: DecompressionBombError
    solid(RED, size=(40, 40)).save(tmp_path / "warn.png")  # 1600 pixels > 1000: DecompressionBombWarning
    solid(BLUE, size=(20, 20)).save(tmp_path / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = ImageFolder(tmp_path, log=lambda line: None)
    assert data.paths == ["ok.png"]
    reasons = dict(data.skipped)
    assert set(reasons) == {"bomb.png", "warn.png"}
    assert all("decompression-bomb" in r for r in reasons.values())


def test_metadata_jsonl_wins_over_txt(tmp_path):
    make_good(tmp_path)
    records = [{"file_name": "a.png", "text": "from metadata"},
               {"file_name": "sub/c.png", "caption": "caption alias"},
               {"file_name": "missing.png", "text": "no such file"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    data, _ = read(tmp_path)
    captions = {p: c for p, (_, c) in by_path(data).items()}
    assert captions == {"a.png": "from metadata", "b.JPG": "a blue square", "sub/c.png": "caption alias",
                        "d.png": ""}
    assert data.skipped == [("missing.png", "listed in metadata.jsonl, but there is no such image")]


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not JSON"),
    ('["a.png", "text"]', 'line 2: expected an object with a "file_name"'),
    ('{"file_name": "b.JPG"}', 'line 2: expected a "text"'),
    ('{"file_name": "a.png", "text": "again"}', "line 2: a.png is listed again"),
])
def test_bad_metadata_line_names_file_and_line(tmp_path, line, message):
    make_good(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n' + line + "\n")
    with pytest.raises(LatentlabError, match="metadata.jsonl, " + message.replace("[", r"\[")):
        read(tmp_path)


def test_centre_crop(tmp_path):
    wide = np.zeros((32, 64, 3), np.uint8)  # (H, W, 3): left half red, right half blue
    wide[:, :32], wide[:, 32:] = RED, BLUE
    Image.fromarray(wide).save(tmp_path / "wide.png")
    tall = np.zeros((96, 32, 3), np.uint8)  # thirds: red, green, blue top to bottom
    tall[:32], tall[32:64], tall[64:] = RED, GREEN, BLUE
    Image.fromarray(tall).save(tmp_path / "tall.png")
    data, _ = read(tmp_path, image_size=16)
    items = by_path(data)
    crop = items["wide.png"][0].astype(int)  # the centre 32x32 of 64x32, halved: 8 red then 8 blue columns
    assert np.abs(crop[:, :6] - RED).max() <= 2 and np.abs(crop[:, 10:] - BLUE).max() <= 2
    middle = items["tall.png"][0].astype(int)  # only the middle third is left; bicubic blurs the edge rows
    assert np.abs(middle[2:-2] - GREEN).max() <= 2 and (middle[:, :, 1] > 200).all()


def test_batch_and_epoch_order(tmp_path):
    for i in range(5):
        solid((i * 50, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"caption {i}")
    data, _ = read(tmp_path, image_size=8, seed=3)
    images, captions, labels = data.batch(0, 10)
    assert images.shape == (10, 3, 8, 8) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert sorted(labels[:5]) == sorted(labels[5:]) == [f"{i}.png" for i in range(5)]  # each once per epoch
    assert captions == [f"caption {label[0]}" for label in labels]
    again = data.batch(3, 4)
    assert torch.equal(again[0], images[3:7]) and again[2] == labels[3:7]
    assert labels[:5] != labels[5:]  # a fresh order each epoch (for this seed)


def test_empty_folder_and_nothing_readable(tmp_path):
    with pytest.raises(LatentlabError, match=r"no images in .*looked for \.png"):
        read(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(LatentlabError, match="no images"):
        read(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(LatentlabError, match="none of the 1 images .* could be read"):
        read(tmp_path)
    with pytest.raises(LatentlabError, match="no image folder"):
        read(tmp_path / "missing")
