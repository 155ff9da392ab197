"""Does the model understand words it was never trained on? The paraphrase probe.

For each of 20 paraphrases (``training/data/ferplus_paraphrases.json``: "a big grin", "seething
rage", ...; none shares a content word with its class's texts), the frozen text tower encodes the
paraphrase inside the probe template, and every FERPlus test face is scored against it by the
cosine with its global image feature. The paraphrase "lands" on the class whose faces score
highest on average. A text tower that only knows the bank's ~400 word pieces cannot do this; a
pretrained one (all-MiniLM-L6-v2) whose neighbourhoods the joint space kept can.

    python training/paraphrase_probe.py --data ../shared/data/ferplus [--checkpoint PATH] [--json]

Without --checkpoint the bundled default model is used. Writes nothing; prints a table (or JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mpafer.transforms import to_model_input  # noqa: E402
from mpafer.data import load_dataset  # noqa: E402
from mpafer.input_protocol import to_grey  # noqa: E402
from mpafer.predictor import resolve_model  # noqa: E402

PARAPHRASES = Path(__file__).resolve().parent / "data" / "ferplus_paraphrases.json"


def load_paraphrases(path: Path = PARAPHRASES) -> tuple[str, list[dict]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["template"], data["paraphrases"]


@torch.inference_mode()
def image_features(model, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Normalised prompted global features (N, D) of uint8 faces, prepared by the input protocol."""
    info = model.backbone_info
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if model.config.input.grey:
            batch = to_grey(batch)
        x = to_model_input(batch, model.image_size, info.mean, info.std, device=model.device)
        chunks.append(model.encode_image(x)[0].float().cpu())
    return torch.cat(chunks)


def probe(model, images: np.ndarray, labels: np.ndarray, classes: list[str], template: str,
          paraphrases: list[dict], scoring: str = "cosine", features: torch.Tensor | None = None) -> list[dict]:
    """Per paraphrase: the mean score with each class's faces, the class it lands on, and whether
    that is the intended one.

    ``cosine``: the plain cosine. ``centred``: both sides centred first (image features on their
    mean over the faces, text on the mean of the bank's prompt features), which removes the
    direction every face and every face sentence share: with plain cosines the faces of one
    class can sit nearer that common direction and win for most texts (chosen on validation).
    """
    features = image_features(model, images) if features is None else features  # (N, D), from image_features
    texts = [template.format(text=p["text"]) for p in paraphrases]
    text = model.encode_text(texts).float().cpu()
    if scoring == "centred":
        features = torch.nn.functional.normalize(features - features.mean(0), dim=-1)
        bank = model.hard_text_features().float().cpu().mean(0)
        text = torch.nn.functional.normalize(text - bank, dim=-1)
    elif scoring != "cosine":
        raise ValueError(f"scoring must be 'cosine' or 'centred', got {scoring!r}")
    cosines = features @ text.t()  # (N, T)
    labels_t = torch.as_tensor(labels)
    rows = []
    for t, entry in enumerate(paraphrases):
        means = {c: float(cosines[labels_t == i, t].mean()) for i, c in enumerate(classes) if (labels_t == i).any()}
        landed = max(means, key=means.get)
        rows.append({"text": entry["text"], "intended": entry["class"], "landed": landed,
                     "correct": landed == entry["class"], "mean_cosine": means})
    return rows


def generic_offsets(model, features: torch.Tensor, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Per class: the mean cosine of its faces with the mean of the bank's prompt features (the generic
    "a photo of a face ..." direction). Unseen texts lie mostly along that direction, so the class that
    sits furthest along it wins them by plain mean cosine whatever they say: the probe's hub."""
    generic = model.generic_direction().float().cpu()
    cosines, labels_t = features @ generic, torch.as_tensor(labels)
    return {c: float(cosines[labels_t == i].mean()) for i, c in enumerate(classes) if (labels_t == i).any()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="FERPlus pack folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--paraphrases", type=Path, default=PARAPHRASES)
    parser.add_argument("--scoring", choices=("cosine", "centred"), default="cosine",
                        help="plain mean cosine (default), or with both sides centred (see probe())")
    parser.add_argument("--offsets", action="store_true",
                        help="also each class's mean cosine with the generic face-sentence direction (see "
                             "generic_offsets): the per-class offset that decides plain-cosine landings (about 0 "
                             "for every class of a model with model.generic_direction_out, which projects it out)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    model, source, untrained = resolve_model(args.checkpoint)
    data = load_dataset("ferplus", args.data, args.split, image_size=None)
    template, paraphrases = load_paraphrases(args.paraphrases)
    order = [list(model.classes).index(c) for c in data.classes]
    if order != list(range(len(order))):
        raise SystemExit("the model's classes are not FERPlus's, in FERPlus's order")
    features = image_features(model, data.images)  # once, for the probe and the offsets
    rows = probe(model, data.images, data.labels, list(data.classes), template, paraphrases, args.scoring, features)
    hits = sum(r["correct"] for r in rows)
    offsets = generic_offsets(model, features, data.labels, list(data.classes)) if args.offsets else None
    if args.json:
        print(json.dumps({"model": source, "untrained": untrained, "split": args.split, "n_faces": len(data),
                          "template": template, "scoring": args.scoring, "correct": hits, "total": len(rows),
                          "rows": rows, **({"generic_offsets": offsets} if offsets else {})}, indent=1))
        return 0
    print(f"model: {source}{' (UNTRAINED)' if untrained else ''}; FERPlus {args.split}, {len(data)} faces; "
          f"template {template!r}, scoring {args.scoring}")
    print(f"| paraphrase | intended | lands on | |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['text']} | {r['intended']} | {r['landed']} | {'yes' if r['correct'] else 'no'} |")
    print(f"\n{hits} of {len(rows)} paraphrases land on their class")
    if offsets:
        print("mean cosine of each class's faces with the generic face-sentence direction: "
              + ", ".join(f"{c} {v:+.3f}" for c, v in offsets.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
