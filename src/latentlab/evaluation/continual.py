"""What a sequence of taught concepts keeps: the accuracy matrix, average accuracy and average forgetting.

After each task k of a sequence (training/continual.py), the model with tasks 1 .. k loaded draws every concept
learned so far, each named by its token ("a small <pink> circle at the top"), and the judge reads them
(evaluation/concept.py `concept_accuracy`): a[k][j], the accuracy on concept j after task k (j <= k), and on
the ordinary one-object prompts. With T tasks (Chaudhry et al. 2018, "Riemannian Walk"):

    average accuracy   A_T = (1 / T) sum_j a[T][j]
    forgetting of j    f_j = max_{l < T} a[l][j] - a[T][j]        (j < T)
    average forgetting F_T = (1 / (T - 1)) sum_{j < T} f_j
"""

from __future__ import annotations

from pathlib import Path

from ..data.concept import MANIFEST
from ..errors import LatentlabError
from ..io import read_json
from ..pipeline import Pipeline
from ..training.continual import DONE, SEQUENCE, load_task
from .adherence import prompt_adherence
from .concept import concept_accuracy


def average_accuracy(matrix: list[list[float]]) -> float:
    """A_T: the mean of the last row (every concept after the last task)."""
    return sum(matrix[-1]) / len(matrix[-1])


def average_forgetting(matrix: list[list[float]]) -> float | None:
    """F_T: the mean over the concepts before the last of their best accuracy before the last task less their
    accuracy after it; None for one task."""
    T = len(matrix)
    if T < 2:
        return None
    return sum(max(matrix[l][j] for l in range(j, T - 1)) - matrix[T - 1][j] for j in range(T - 1)) / (T - 1)


def sequence_tasks(out: str | Path) -> list[dict]:
    """The finished tasks of the sequence in `out`, in order: each task's folder, token and concept (from its
    data folder's concept.json)."""
    out, tasks = Path(out), []
    if not (out / SEQUENCE).is_file():
        raise LatentlabError(f"{out} holds no sequence ({SEQUENCE} is missing): give a folder `latentlab "
                             "continual train --out` wrote")
    settings = read_json(out / SEQUENCE)
    while (out / f"task-{len(tasks) + 1}" / DONE).is_file():
        folder = out / f"task-{len(tasks) + 1}"
        data = Path(settings["tasks"][len(tasks)])
        tasks.append({"folder": folder, "token": read_json(folder / DONE)["token"],
                      "concept": read_json(data / MANIFEST)["concept"]})
    if not tasks:
        raise LatentlabError(f"{out} holds no finished task of a sequence (task-1/{DONE})")
    return tasks


def sequence_report(out: str | Path, *, model: str | None = None, prompts: int = 200, steps: int = 50,
                    device: str = "auto", callback=None) -> dict:
    """After each task: accuracy on every concept so far and on ordinary prompts; the matrix, A_T and F_T.
    `model`: the sequence's base model (default: the one it was trained on). Task k is loaded onto the model
    that holds tasks 1 .. k - 1, each update at multiplier 1."""
    tasks = sequence_tasks(out)
    pipe = Pipeline.load(model or read_json(Path(out) / SEQUENCE)["model"], device=device)
    matrix, ordinary = [], []
    for k in range(1, len(tasks) + 1):
        load_task(pipe, tasks[k - 1]["folder"], f"task{k}")
        matrix.append([concept_accuracy(pipe, concept=t["concept"], word=t["token"], prompts=prompts, steps=steps,
                                        round_trip=False, callback=callback)["accuracy"]["all"] for t in tasks[:k]])
        ordinary.append(prompt_adherence(pipe, prompts=prompts, steps=steps)["accuracy"]["all"])
    return {"concepts": [t["concept"] for t in tasks], "tokens": [t["token"] for t in tasks], "prompts": prompts,
            "steps": steps, "matrix": matrix, "ordinary": ordinary, "average_accuracy": average_accuracy(matrix),
            "average_forgetting": average_forgetting(matrix)}
