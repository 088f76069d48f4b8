"""How faithfully a model's autoencoder carries each concept of data/concept.py: the judge on ground-truth test
renders after an encode-decode round trip. A model can draw a concept no better than this, so it bounds what
teaching it can reach (evaluation/concept.py `vae_round_trip`, for every concept at once).

    python scripts/autoencoder_ceiling.py [--model shapes-default] [--count 200] > records/continual/autoencoder-ceiling.json
"""

import argparse
import json

import torch

from latentlab.data.concept import CONCEPTS, ConceptDataset
from latentlab.evaluation.concept import autoencoder_round_trip, read_concept
from latentlab.pipeline import Pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-default")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    pipe = Pipeline.load(args.model, device=args.device)
    report = {"model": args.model, "count": args.count, "concepts": {}}
    for concept in CONCEPTS:
        data = ConceptDataset(concept=concept, seed=1234, split="test", image_size=pipe.image_size)
        scenes = [data.example(i)[0] for i in range(args.count)]
        with torch.no_grad():
            reading = read_concept(scenes, autoencoder_round_trip(pipe, data, args.count), concept)
        report["concepts"][concept] = {"all": reading["accuracy"]["all"], "read": reading["read"]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
