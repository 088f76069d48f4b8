"""What a sequence of taught concepts keeps: the accuracy matrix, average accuracy and average forgetting.

After each task k of a sequence (training/continual.py), the model with tasks 1 .. k loaded draws every concept
learned so far, each named as its method names it (by its token, "a small <pink> circle at the top", or by its
word), and the judge reads them (evaluation/concept.py `concept_accuracy`): a[k][j], the accuracy on concept j
after task k (j <= k); beside them the ordinary one-object prompts, and prompts that combine a learned colour
with a learned shape ("a <pink> <star>", `pair_accuracy`). With T tasks (Chaudhry et al. 2018, "Riemannian
Walk"):

    average accuracy   A_T = (1 / T) sum_j a[T][j]
    forgetting of j    f_j = max_{l < T} a[l][j] - a[T][j]        (j < T)
    average forgetting F_T = (1 / (T - 1)) sum_{j < T} f_j

A sequence of separate LoRAs (method "separate") is measured as it must be used: each concept with its own file
alone, a pair with its two files, the ordinary prompts with none.
"""

from __future__ import annotations

from pathlib import Path

from ..data.concept import MANIFEST, concept_kind
from ..errors import LatentlabError
from ..io import read_json
from ..pipeline import Pipeline
from ..training.continual import DONE, FULL_FILENAME, SEQUENCE, load_task, load_unet
from .adherence import prompt_adherence
from .concept import concept_accuracy, pair_accuracy


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
    """The finished tasks of the sequence in `out`, in order: each task's folder, word (what prompts name it by:
    its token or its plain word), concept and kind (from its data folder's concept.json)."""
    out, tasks = Path(out), []
    if not (out / SEQUENCE).is_file():
        raise LatentlabError(f"{out} holds no sequence ({SEQUENCE} is missing): give a folder `latentlab "
                             "continual train --out` wrote")
    settings = read_json(out / SEQUENCE)
    while (out / f"task-{len(tasks) + 1}" / DONE).is_file():
        folder = out / f"task-{len(tasks) + 1}"
        done, data = read_json(folder / DONE), Path(settings["tasks"][len(tasks)])
        concept = read_json(data / MANIFEST)["concept"]
        tasks.append({"folder": folder, "word": done.get("word", done.get("token")), "concept": concept,
                      "kind": concept_kind(concept)})
    if not tasks:
        raise LatentlabError(f"{out} holds no finished task of a sequence (task-1/{DONE})")
    return tasks


def load_sequence(pipe: Pipeline, out: str | Path, upto: int | None = None) -> list[dict]:
    """Tasks 1 .. upto (default: every finished one) of the sequence in `out` into `pipe`, as the sequence trained
    them: each update as adapter taskK at multiplier 1 and each token added (full fine-tuning: task upto's
    U-Net, which holds the earlier ones'); returns the tasks loaded (`sequence_tasks`)."""
    tasks = sequence_tasks(out)
    if upto is not None and not 1 <= upto <= len(tasks):
        raise LatentlabError(f"{out} has {len(tasks)} finished tasks; give a task from 1 to {len(tasks)}")
    tasks = tasks[:upto]
    for k, task in enumerate(tasks, start=1):
        if k == len(tasks) or not (task["folder"] / FULL_FILENAME).is_file():
            load_task(pipe, task["folder"], f"task{k}")
    return tasks


def activate(pipe: Pipeline, tasks: list[dict], active: set[int], unet: Path | None = None) -> Path | None:
    """The model as it is with tasks `active` (1-based): their updates at multiplier 1, the other loaded ones at
    0; full fine-tuning: the U-Net of the last active task, read unless it is `unet`, the one already in the
    model. Returns the U-Net file now in the model."""
    full = [k for k in sorted(active) if (tasks[k - 1]["folder"] / FULL_FILENAME).is_file()]
    if full and (path := tasks[full[-1] - 1]["folder"] / FULL_FILENAME) != unet:
        load_unet(pipe.unet, path)
        unet = path
    for name in pipe.loras:
        pipe.set_lora_scale(name, 1.0 if int(name.removeprefix("task")) in active else 0.0)
    return unet


def learned_pairs(tasks: list[dict]) -> list[tuple[int, int]]:
    """(i, j), 1-based: each learned colour i with each learned shape j."""
    kinds = [t["kind"] for t in tasks]
    return [(i, j) for i, a in enumerate(kinds, 1) for j, b in enumerate(kinds, 1) if (a, b) == ("colour", "shape")]


def sequence_report(out: str | Path, *, model: str | None = None, prompts: int = 200, pair_prompts: int = 50,
                    steps: int = 50, device: str = "auto", callback=None) -> dict:
    """After each task: accuracy on every concept so far, on ordinary prompts and on each pair of a learned colour
    and a learned shape (`pair_prompts` each; `combined`: their mean); the matrix, A_T and F_T, and the base
    model's ordinary accuracy. `model`: the sequence's base model (default: the one it was trained on)."""
    settings = read_json(Path(out) / SEQUENCE)
    tasks, method = sequence_tasks(out), settings.get("method", "c-lora")
    pipe = Pipeline.load(model or settings["model"], device=device)

    def concept(t):
        return lambda: concept_accuracy(pipe, concept=t["concept"], word=t["word"], prompts=prompts, steps=steps,
                                        round_trip=False, callback=callback)["accuracy"]["all"]

    def pair(c, s):
        words = {c["concept"]: c["word"], s["concept"]: s["word"]}
        return lambda: pair_accuracy(pipe, colour=c["concept"], shape=s["concept"], words=words, prompts=pair_prompts,
                                     steps=steps, callback=callback)["accuracy"]["all"]

    def ordinary_prompts():
        return prompt_adherence(pipe, prompts=prompts, steps=steps)["accuracy"]["all"]

    base_ordinary = ordinary_prompts()
    load_sequence(pipe, out)
    cache: dict = {"unet": None}  # measurements by key; "unet": the full fine-tuning task's file in the model

    def measure(key, active: set[int], run):
        """run() on the model with tasks `active`; a separate sequence's figures are the same after any task."""
        if method != "separate" or key not in cache:
            cache["unet"] = activate(pipe, tasks, active, cache["unet"])
            cache[key] = run()
        return cache[key]

    matrix, ordinary, pairs = [], [], []
    for k in range(1, len(tasks) + 1):
        upto = set(range(1, k + 1))

        def active(*js):
            return set(js) if method == "separate" else upto

        matrix.append([measure(("concept", j), active(j), concept(tasks[j - 1])) for j in sorted(upto)])
        ordinary.append(base_ordinary if method == "separate" else measure("ordinary", upto, ordinary_prompts))
        pairs.append({f"{tasks[i - 1]['concept']} {tasks[j - 1]['concept']}":
                      measure(("pair", i, j), active(i, j), pair(tasks[i - 1], tasks[j - 1]))
                      for i, j in learned_pairs(tasks[:k])})
    return {"method": method, "forget_weight": settings.get("forget_weight"), "concepts": [t["concept"] for t in tasks],
            "words": [t["word"] for t in tasks], "prompts": prompts, "pair_prompts": pair_prompts, "steps": steps,
            "matrix": matrix, "ordinary": ordinary, "ordinary_base": base_ordinary, "pairs": pairs,
            "combined": [sum(row.values()) / len(row) if row else None for row in pairs],
            "average_accuracy": average_accuracy(matrix), "average_forgetting": average_forgetting(matrix)}
