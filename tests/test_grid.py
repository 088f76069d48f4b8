"""Midjourney's loop (grid.py, `latentlab vary`): generate records each image's prompt, seed and settings in
grid.json; vary acts on image N of a grid without retyping anything (img2img, or a region inpainted) and
writes a new grid that can be varied in turn; bad grids, numbers and regions in one line."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from latentlab.cli import main
from latentlab.grid import Grid

from .conftest import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny(tokenizer).save(folder)
    return folder


@pytest.fixture(scope="module")
def grid_folder(model_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "g"
    assert main(["generate", "a red circle", "a blue square", "--images-per-prompt", "2", "--model",
                 str(model_folder), "--steps", "3", "--seed", "10", "--guidance", "2.5", "--device", "cpu",
                 "--out", str(out)]) == 0
    return out


def test_generate_records_each_images_prompt_seed_and_settings(grid_folder, model_folder):
    record = json.loads((grid_folder / "grid.json").read_text())
    assert record["model"] == str(model_folder.resolve())
    assert [(i["prompt"], i["seed"]) for i in record["images"]] == [("a red circle", 10), ("a red circle", 11),
                                                                      ("a blue square", 12), ("a blue square", 13)]
    assert all((grid_folder / i["file"]).is_file() for i in record["images"])
    assert record["images"][0]["settings"] == {"steps": 3, "guidance": 2.5, "sampler": "ddim", "negative_prompt": "",
                                               "size": 32, "variance": None, "eta": None, "spacing": None}


def test_vary_draws_new_images_of_one_and_records_where_they_came_from(grid_folder, tmp_path):
    out = tmp_path / "v"
    assert main(["vary", str(grid_folder), "2", "--count", "2", "--device", "cpu", "--out", str(out)]) == 0
    child = Grid.load(out)
    assert [(i.prompt, i.seed) for i in child.images] == [("a blue square", 13), ("a blue square", 14)]
    assert child.images[0].origin["image"] == 2 and child.images[0].origin["action"] == "vary"
    assert child.images[0].settings["guidance"] == 2.5 and (out / "grid.png").is_file()
    first, second = (np.array(Image.open(out / i.file)) for i in child.images)
    assert (first != second).any()
    again = Grid.load(out).vary(1, tmp_path / "vv", count=1, strength=0.3, device="cpu")  # the loop goes on
    assert again.images[0].origin["grid"] == str(out.resolve()) and len(again.images) == 1


def test_a_region_is_redrawn_and_the_rest_kept(grid_folder, tmp_path):
    out = tmp_path / "r"
    assert main(["vary", str(grid_folder), "0", "--region", "0,0,16,32", "--prompt", "a green star", "--count", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    child = Grid.load(out)
    source = np.array(Image.open(grid_folder / Grid.load(grid_folder).images[0].file))
    drawn = np.array(Image.open(out / child.images[0].file))
    assert (drawn[16:] == source[16:]).all() and (drawn[:16] != source[:16]).any()
    assert child.images[0].prompt == "a green star" and child.images[0].origin["region"] == [0, 0, 16, 32]


def test_the_default_folder_is_inside_the_grid(grid_folder):
    assert main(["vary", str(grid_folder), "3", "--count", "1", "--strength", "0.2", "--device", "cpu"]) == 0
    assert len(Grid.load(grid_folder / "vary-003").images) == 1


@pytest.mark.parametrize("args, message", [
    (["{plain}", "0"], "holds no grid.json"),
    (["{missing}", "0"], "is not a folder"),
    (["{grid}", "4"], "has 4 images, numbered 0 to 3"),
    (["{grid}", "-1"], "has 4 images"),
    (["{grid}", "0", "--region", "0,0,40,16"], "is not a box within the 32x32 image"),
    (["{grid}", "0", "--region", "0,0,32,32"], "is the whole image"),
    (["{grid}", "0", "--region", "1,2,3"], "is not four numbers"),
    (["{grid}", "0", "--strength", "1.2"], "outside \\[0, 1\\]"),
    (["{broken}", "0"], "is not a grid record that can be read"),
])
def test_bad_input_is_one_line_and_writes_nothing(grid_folder, tmp_path, capsys, args, message):
    (tmp_path / "plain").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "grid.json").write_text('{"format": "latentlab-grid", "version": 1}')
    values = {"grid": grid_folder, "plain": tmp_path / "plain", "missing": tmp_path / "none",
              "broken": tmp_path / "broken"}
    args = [a.format(**values) for a in args]
    assert main(["vary", *args, "--device", "cpu", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latentlab: error: ") and re.search(message, err), err
    assert not (tmp_path / "o").exists()
