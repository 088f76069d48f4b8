"""The accuracy heatmap: a PNG of one coloured cell an entry, blank where nothing was measured."""

import pytest
from PIL import Image

from latentlab.errors import LatentlabError
from latentlab.evaluation.heatmap import BACKGROUND, accuracy_heatmap, ramp

TRIANGLE = [[1.0], [0.0, 0.5], [0.25, None, 0.75]]  # row 2 skips column 1


def draw(tmp_path, matrix=TRIANGLE, rows=("after a", "after b", "after c"), columns=("a", "b", "c"), **options):
    path = accuracy_heatmap(matrix, list(rows), list(columns), tmp_path / "sub" / "map.png", **options)
    return Image.open(path).convert("RGB")


def cell_colours(image, rows, columns, cell=48):
    """The colour near the top-left corner of each cell (clear of its percentage), found from the bottom-right."""
    width, height = image.size
    left, top = width - 6 - cell * columns, height - 6 - cell * rows
    return [[image.getpixel((left + j * cell + 4, top + i * cell + 4)) for j in range(columns)] for i in range(rows)]


def test_writes_a_png_that_grows_with_the_columns(tmp_path):
    image = draw(tmp_path)
    assert (tmp_path / "sub" / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.width >= 3 * 48 and image.height >= 3 * 48
    wider = draw(tmp_path, [[0.5] * 6] * 3, columns=[f"c{j}" for j in range(6)])
    assert wider.width >= image.width + 3 * 48 and wider.height == image.height
    titled = draw(tmp_path, title="accuracy on concept j after task k")
    assert titled.height > image.height


def test_cells_take_the_ramps_colours_and_missing_ones_the_background(tmp_path):
    colours = cell_colours(draw(tmp_path), 3, 3)
    assert colours[0][0] == ramp(1.0) and colours[1][0] == ramp(0.0) and colours[1][1] == ramp(0.5)
    assert ramp(1.0) != ramp(0.0) and sum(ramp(1.0)) > sum(ramp(0.5)) > sum(ramp(0.0))  # dark to bright
    assert colours[0][1] == colours[0][2] == colours[1][2] == colours[2][1] == BACKGROUND


def test_a_percentage_is_written_in_each_cell(tmp_path):
    image, cell = draw(tmp_path), 48
    width, height = image.size
    left, top = width - 6 - 3 * cell, height - 6 - 3 * cell
    inside = image.crop((left, top, left + cell - 2, top + cell - 2))  # the 100% cell
    assert len(inside.getcolors(maxcolors=48 * 48)) > 2  # text drawn over the fill


def test_long_column_labels_still_fit(tmp_path):
    image = draw(tmp_path, columns=("<hexagon>", "<diamond>", "<brown>"))
    assert image.width < 3 * 48 + 120


@pytest.mark.parametrize("matrix, rows, columns, message", [
    ([[0.5]], ["a", "b"], ["x"], "the matrix has 1 rows but 2 row labels"),
    ([[0.5, 0.5]], ["a"], ["x"], "row 0 has 2 entries but there are 1 columns"),
    ([[1.5]], ["a"], ["x"], "row 0 holds 1.5; accepted: fractions in [0, 1] or None"),
    ([[float("nan")]], ["a"], ["x"], "row 0 holds nan"),
])
def test_bad_matrices_raise(tmp_path, matrix, rows, columns, message):
    with pytest.raises(LatentlabError, match=message.replace("[", r"\[").replace("]", r"\]")):
        accuracy_heatmap(matrix, rows, columns, tmp_path / "map.png")
