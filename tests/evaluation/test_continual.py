"""Average accuracy and forgetting (Chaudhry et al. 2018) on hand-made accuracy matrices."""

import pytest

from latentlab.evaluation.continual import average_accuracy, average_forgetting


@pytest.mark.parametrize("matrix, accuracy, forgetting", [
    ([[0.9]], 0.9, None),  # one task: nothing to forget
    ([[0.9], [0.6, 0.8]], 0.7, 0.3),  # concept 1 fell from 0.9 to 0.6
    ([[0.5], [0.9, 0.8], [0.7, 0.8, 1.0]], (0.7 + 0.8 + 1.0) / 3, ((0.9 - 0.7) + (0.8 - 0.8)) / 2),  # best earlier
    ([[0.4], [0.6, 0.5], [0.9, 0.9, 0.9]], 0.9, ((0.6 - 0.9) + (0.5 - 0.9)) / 2),  # learning later raised them: negative forgetting
])
def test_average_accuracy_and_forgetting(matrix, accuracy, forgetting):
    assert average_accuracy(matrix) == pytest.approx(accuracy)
    assert (average_forgetting(matrix) is None) if forgetting is None else \
        average_forgetting(matrix) == pytest.approx(forgetting)
