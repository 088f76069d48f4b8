"""`latentlab eval`: how well samples follow their prompts. Shapes: the judge reads them (evaluation/adherence.py,
evaluation/concept.py), or with --metric clip-score a contrastive image-text model scores them beside the judge
(evaluation/contrastive.py); fashion-mnist, mnist: a classifier's accuracy and Frechet distance
(evaluation/classifier.py)."""

from __future__ import annotations

from ..data.shapes import NEW_COLOURS, NEW_SHAPES
from ..errors import LatentlabError
from ..evaluation import adherence, classifier
from .options import common, defaults, flag, load_model, sampler_options, sampling
from .output import check_out, write_report
from .values import lora_file, positive

ADHERENCE, FIDELITY = defaults(adherence.prompt_adherence), defaults(classifier.class_fidelity)
# (split, objects, paraphrase) of the reports: one-object test prompts, then with --all the rest
ROWS = [("test", 1, None), ("test", 2, None), ("heldout", 1, None), ("heldout", 2, None)]
PARAPHRASED = [("test", 1, "templates"), ("test", 1, "words")]


def add_parser(commands) -> None:
    e = commands.add_parser("eval", help="prompt adherence on held-out prompts, read by the shapes judge")
    common(e, seeds=ADHERENCE)
    sampling(e, ADHERENCE)
    flag(e, ADHERENCE, "prompts", type=positive(int), help="prompts per split (default %(default)s)")
    e.add_argument("--all", action="store_true", help="also two-object prompts and held-out colour-shape pairs")
    e.add_argument("--paraphrases", action="store_true",
                   help="also one-object prompts in wording the training captions never use: new sentence "
                        "templates, and new words (data/paraphrase.py)")
    e.add_argument("--out", default=None, help="write the full report as JSON here")
    e.add_argument("--data", choices=("shapes", "fashion-mnist", "mnist"), default="shapes",
                   help="shapes: the judge reads the images; fashion-mnist, mnist: a classifier's accuracy on "
                        "class-prompted samples and the Frechet distance of its features to the test set")
    e.add_argument("--classifier", default=None, help="the classifier folder (default: the one shipped for --data)")
    flag(e, FIDELITY, "per_class", type=positive(int), help="samples per class (default %(default)s)")
    e.add_argument("--concept", choices=[*NEW_COLOURS, *NEW_SHAPES], default=None,
                   help="also one-object prompts of this colour or shape the model never trained on, taught "
                        "afterwards (data/concept.py); read by the judge with the palette or shapes plus it")
    e.add_argument("--metric", choices=("judge", "clip-score"), default="judge",
                   help="judge: the shapes judge's accuracies; clip-score: also the CLIP score of each prompt's image "
                        "(100 x the cosine of their embeddings) by --clip, and how well it ranks the images the "
                        "judge reads right above the wrong ones (AUC)")
    e.add_argument("--clip", default=None, help="the contrastive image-text model for --metric clip-score (a folder "
                                                "written by `latentlab train-clip`; default: the shipped shapes-clip)")
    e.add_argument("--lora", type=lora_file, action="append", metavar="FILE[:SCALE]",
                   help="add a LoRA at multiplier SCALE (default 1) before measuring; repeat for several")
    e.set_defaults(func=run)


def run(args) -> None:
    if args.concept and args.data != "shapes":
        raise LatentlabError(f"--concept measures a shapes-world concept; it does not go with --data {args.data}")
    if args.metric == "clip-score" and (args.data != "shapes" or args.concept):
        raise LatentlabError("--metric clip-score scores the shapes world's prompts; it does not go with "
                             + (f"--data {args.data}" if args.data != "shapes" else "--concept"))
    if args.clip is not None and args.metric != "clip-score":
        raise LatentlabError("--clip names the model of --metric clip-score; give --metric clip-score too")
    if args.out:
        check_out(args.out, folder=False)
    clip = load_clip(args) if args.metric == "clip-score" else None
    pipe = load_model(args)
    if args.data != "shapes":
        return eval_classes(args, pipe)
    rows = ROWS[: 4 if args.all else 1] + (PARAPHRASED if args.paraphrases else [])
    reports = [eval_prompts(args, pipe, *row) if clip is None else eval_clip_score(args, pipe, clip, *row)
               for row in rows]
    if args.concept:
        reports.append(eval_concept(args, pipe))
    if args.out:
        write_report(args.out, reports)


def sampler_settings(args) -> dict:
    """The sampling settings of the command, as the evaluation functions take them."""
    return dict(seed=args.seed, steps=args.steps, guidance=args.guidance, sampler=args.sampler,
                **sampler_options(args))


def eval_prompts(args, pipe, split: str, objects: int, paraphrase: str | None) -> dict:
    """One row: the judge's accuracy on prompts of `split` with `objects` objects, maybe reworded."""
    from ..evaluation import prompt_adherence  # here, not above: tests replace it
    from ..evaluation.adherence import seen_in_training

    report = prompt_adherence(pipe, prompts=args.prompts, split=split, objects=objects, paraphrase=paraphrase,
                              **sampler_settings(args))
    accuracy = "  ".join(f"{k} {v:.1%}" for k, v in report["accuracy"].items())
    reworded = f", new {paraphrase}" if paraphrase else ""
    low, high = report["interval"]["all"]
    report["seen in training"] = seen = seen_in_training(report["captions"], objects)
    print(f"{split:8s} {objects} object{'s' if objects > 1 else ' '}{reworded:16s}  {accuracy}  (all: 95% interval "
          f"{low:.1%} to {high:.1%}; prompts that are training captions: {seen:.0%})")
    if objects == 2:
        given = report["relation given the axis"]
        print(f"{'':8s} relation right on its axis: {given['share']:.1%} of {given['n']} (chance "
              f"{report['chance']['relation given the axis']:.0%}); relation overall chance "
              f"{report['chance']['relation']:.0%}")
    return report


def load_clip(args):
    from ..contrastive_model import ContrastiveModel

    return ContrastiveModel.load(args.clip, device=args.device)


def eval_clip_score(args, pipe, clip, split: str, objects: int, paraphrase: str | None) -> dict:
    """One row: the CLIP score of the prompts' images, the judge's accuracy on them, and the score's AUC."""
    from ..evaluation.contrastive import clip_score_adherence  # here, not above: tests replace it

    report = clip_score_adherence(pipe, clip, prompts=args.prompts, split=split, objects=objects,
                                  paraphrase=paraphrase, **sampler_settings(args))
    auc = "-" if report["auc"] is None else f"{report['auc']:.3f}"
    reworded = f", new {paraphrase}" if paraphrase else ""
    print(f"{split:8s} {objects} object{'s' if objects > 1 else ' '}{reworded:16s}  clip score "
          f"{report['clip_score']:.1f}  judge all {report['judge_all']:.1%}  AUC {auc}")
    return report


def eval_concept(args, pipe) -> dict:
    """The judge's accuracy on prompts of the --concept colour or shape, and on it through the autoencoder."""
    from ..evaluation.concept import concept_accuracy

    report = concept_accuracy(pipe, concept=args.concept, prompts=args.prompts, **sampler_settings(args))
    accuracy = "  ".join(f"{k} {v:.1%}" for k, v in report["accuracy"].items())
    print(f"{'concept':8s} {args.concept + ' 1 object':25s}  {accuracy}")
    kind, round_trip = report["kind"], report["vae_round_trip"]
    read = ", ".join(f"{k} {v:.0%}" for k, v in report["read"].items())
    print(f"{'':8s} {kind} drawn: {read}; ground truth through the autoencoder: all {round_trip['all']:.1%}, "
          f"{kind} {round_trip[kind]:.1%}")
    return report


def eval_classes(args, pipe) -> None:
    """--data fashion-mnist or mnist: the classifier's accuracy on class-prompted samples, and their Frechet
    distance to the test set."""
    from ..data.sources import open_dataset
    from ..evaluation.classifier import class_fidelity, load_classifier, shipped_classifier

    test = open_dataset(args.data, split="test", image_size=pipe.image_size)
    model = load_classifier(args.classifier or shipped_classifier(args.data), pipe.device)
    report = class_fidelity(pipe, model, test, per_class=args.per_class, **sampler_settings(args))
    print(f"class accuracy {report['class_accuracy']:.1%}  Frechet distance {report['frechet_distance']:.3f} "
          f"(real test images: {report['frechet_floor']:.3f})")
    if args.out:
        write_report(args.out, report)
