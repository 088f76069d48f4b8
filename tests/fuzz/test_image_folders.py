"""Folders of captioned images as users bring them (data/folder.py): random bytes, cut-off and corrupted
PNGs and JPEGs, huge declared sizes, odd modes (P, LA, I;16, CMYK, F), captions that are not UTF-8, broken
metadata.jsonl lines. Reading skips each bad image by name, or refuses the folder in one line; never a
traceback, never a changed file."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from latentlab.data.folder import EXTENSIONS, ImageFolder

from .fuzzing import Labelled, any_text, attempt, fuzz, run_cli, scratch, short, unchanged

pytestmark = pytest.mark.usefixtures("one_thread")

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr", "RGBX", "La"]
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF"}


def encode(mode: str, size: tuple[int, int], format: str, seed: int) -> bytes:
    """An image of `mode` in `format`, or (where the format cannot hold the mode) in PNG, or TIFF."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode if mode not in ("I;16", "La", "PA") else "L")
    if mode in ("I;16", "La", "PA"):
        image = image.convert("I") if mode == "I;16" else image.convert("LA" if mode == "La" else "P")
        image = image.convert("I;16") if mode == "I;16" else image
    for fmt in (format, "PNG", "TIFF"):
        try:
            out = io.BytesIO()
            image.save(out, format=fmt)
            return out.getvalue()
        except (OSError, ValueError, KeyError):
            continue
    raise AssertionError(f"cannot save mode {mode}")


def declare_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose header declares another size (its CRC fixed, so only the pixel data disagrees)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        return png
    ihdr = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png[8:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


@st.composite
def image_file(draw, index: int):
    """(relative path, bytes, what was done) of one file that may or may not be a usable image."""
    ext = draw(st.sampled_from(EXTENSIONS))
    ext = ext.upper() if draw(st.booleans()) else ext
    folder = draw(st.sampled_from(["", "sub/", "a b/", "ü/"]))
    mode = draw(st.sampled_from(MODES))
    size = draw(st.tuples(st.integers(1, 12), st.integers(1, 12)))
    data = encode(mode, size, FORMATS[ext.lower()], index)
    damage = draw(st.sampled_from(["none", "none", "truncated", "flipped", "random", "empty", "huge", "other type"]))
    what = f"{mode} {size[0]}x{size[1]}"
    if damage == "truncated":
        at = draw(st.integers(0, len(data) - 1))
        data, what = data[:at], f"{what} cut to {at} bytes"
    elif damage == "flipped":
        at = draw(st.integers(0, len(data) - 1))
        data, what = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:], f"{what}, byte {at} flipped"
    elif damage == "random":
        data = draw(st.binary(max_size=64))
        what = f"the bytes {data!r}"
    elif damage == "empty":
        data, what = b"", "empty"
    elif damage == "huge":
        width, height = draw(st.sampled_from([(2**31 - 1, 1), (100_000, 100_000), (7000, 7000), (1, 2**31 - 1),
                                              (65535, 65535), (0, 5)]))
        data, what = declare_size(encode(mode, size, "PNG", index), width, height), f"{what} declaring {width}x{height}"
    elif damage == "other type":
        data, what = encode(mode, size, "PNG", index), f"{what}, PNG bytes under {ext}"
    return f"{folder}{index:02d}{ext}", data, what


@st.composite
def caption(draw):
    """(bytes of a .txt caption or None, what)."""
    kind = draw(st.sampled_from(["none", "text", "text", "not utf-8", "bom"]))
    if kind == "none":
        return None, "no caption"
    if kind == "not utf-8":
        data = draw(st.binary(max_size=20).map(lambda b: b + b"\xe9\xff"))
    else:
        data = draw(any_text).encode("utf-8", "surrogatepass")
        data = b"\xef\xbb\xbf" + data if kind == "bom" else data
    return data, f"caption {short(data, 60)}"


@st.composite
def image_folders(draw):
    """[(relative path, bytes)] of a folder's files, printed as what they are."""
    files, what = [], []
    for index in range(draw(st.integers(1, 4))):
        path, data, about = draw(image_file(index))
        files.append((path, data))
        text, about_caption = draw(caption())
        if text is not None:
            files.append((path.rsplit(".", 1)[0] + ".txt", text))
        what.append(f"{path}: {about}, {about_caption}")
    kind = draw(st.sampled_from(["none", "none", "valid", "junk"]))
    if kind != "none":
        lines = [json.dumps({"file_name": p, "text": draw(any_text)}) for p, _ in files if not p.endswith(".txt")]
        if kind == "junk":
            lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(
                ['{"file_name": 3}', "not json", '{"file_name": "missing.png", "text": "x"}', '[]',
                 '{"file_name": "00.png", "text": null}', "\ufeff{}", '{"file_name": "00.png"}'])))
        files.append(("metadata.jsonl", "\n".join(lines).encode("utf-8", "surrogatepass")))
        what.append(f"metadata.jsonl ({kind}): {short(lines, 200)}")
    return Labelled(files, "; ".join(what))


def write(folder, files) -> None:
    for path, data in files:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)


@fuzz(60)
@given(folder=image_folders())
def test_an_image_folder_skips_each_bad_image_by_name_or_is_refused_in_one_line(folder):
    files = folder.value
    with scratch() as root:
        write(root, files)
        log = []
        with unchanged(root):
            data, error = attempt(ImageFolder, root, image_size=8, log=log.append)
    for line in log:
        assert "\n" not in line and "\r" not in line, f"a log line of several lines: {line!r}"
    if error is not None:
        return
    images = {path for path, _ in files if path.lower().endswith(EXTENSIONS)}
    skipped = [name for name, _ in data.skipped if name in images]
    assert sorted(data.paths + skipped) == sorted(images), "each image is read or skipped by name, once"
    for name, reason in data.skipped:
        assert name in images or "metadata.jsonl" in reason, f"skipped {name}, which is not in the folder"
        assert reason and "\n" not in reason, f"{name}: {reason!r}"
    assert data.pixels.shape == (len(data.paths), 8, 8, 3) and data.pixels.dtype == np.uint8
    assert all(isinstance(c, str) for c in data.captions)


@fuzz(8)
@given(folder=image_folders())
def test_cache_latents_of_an_image_folder_exits_0_or_2_with_one_line(vae_dir, folder):
    files = folder.value
    with scratch() as root:
        write(root / "data", files)
        with unchanged(root / "data", vae_dir):
            code, _, err = run_cli(["cache-latents", "--vae", vae_dir, "--data", root / "data", "--out",
                                    root / "cache", "--device", "cpu"])
        if code == 0:
            assert (root / "cache").is_dir()
