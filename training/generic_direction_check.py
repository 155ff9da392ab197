"""What removing the generic face-sentence direction from the global image feature would do, measured
before it becomes part of the model: accuracy (flip TTA, CGLA as the model scores) and the paraphrase
probe by plain mean cosine, with the direction kept (alpha 0) and projected out (alpha 1).

The direction is the mean of the bank's prompt features ("a photo of a face ..."). Unseen texts lie
mostly along it, so the class whose faces sit furthest along it wins them whatever they say
(``paraphrase_probe.py --offsets``); for classification it adds nearly the same to every class's
global cosine, so projecting it out should cost little. Patch features (the local term, the maps)
are left as they are.

    python training/generic_direction_check.py --data ../shared/data/ferplus [--split valid] [--checkpoint PATH]

Choose on validation (the default split); nothing is written. A checkpoint trained with
``model.generic_direction_out`` (the bundled default since 2026-12-06) is read without it here, so the
"kept" row is that model's feature before its projection (its stage 1 was trained with it projected out).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mpafer.cgla import cgla_scores  # noqa: E402
from mpafer.data import load_dataset  # noqa: E402
from mpafer.input_protocol import to_grey  # noqa: E402
from mpafer.predictor import resolve_model  # noqa: E402
from mpafer.transforms import to_model_input  # noqa: E402
from paraphrase_probe import load_paraphrases  # noqa: E402


@torch.inference_mode()
def features(model, images: np.ndarray, flip: bool, batch_size: int = 512):
    info, pooled, patches = model.backbone_info, [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        batch = to_grey(batch) if model.config.input.grey else batch
        x = to_model_input(batch, model.image_size, info.mean, info.std, device=model.device)
        g, p = model.encode_image(x.flip(-1) if flip else x)
        pooled.append(g.float().cpu())
        patches.append(p.float().cpu())
    return torch.cat(pooled), torch.cat(patches)


def without(direction: torch.Tensor, pooled: torch.Tensor, alpha: float) -> torch.Tensor:
    return F.normalize(pooled - alpha * (pooled @ direction)[:, None] * direction, dim=-1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="FERPlus pack folder")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled model)")
    args = parser.parse_args(argv)
    model, source, _ = resolve_model(args.checkpoint)
    model.eval()
    model.config.generic_direction_out = False  # both rows start from the unprojected feature
    data = load_dataset("ferplus", args.data, args.split, image_size=None)
    if list(model.classes) != list(data.classes):
        raise SystemExit("the model's classes are not FERPlus's, in FERPlus's order")
    views = [features(model, data.images, flip) for flip in ((False, True) if model.config.input.tta_flip else (False,))]
    with torch.inference_mode():
        classes_text = F.normalize(model.class_text_features().features.float().cpu(), dim=-1)
        generic = model.generic_direction().float().cpu()
        template, paraphrases = load_paraphrases()
        probes = F.normalize(model.encode_text([template.format(text=p["text"]) for p in paraphrases]).float().cpu(),
                             dim=-1)
    labels, classes = torch.as_tensor(data.labels), list(data.classes)
    print(f"model: {source}; FERPlus {args.split}, {len(data)} faces")
    for alpha in (0.0, 1.0):
        probabilities = sum((model.logit_scale * cgla_scores(without(generic, g, alpha), p, classes_text,
                                                             model.config.topk).combined()).softmax(-1)
                            for g, p in views)
        predicted = probabilities.argmax(-1)
        accuracy = float((predicted == labels).float().mean())
        mean_class = np.mean([float((predicted[labels == i] == i).float().mean())
                              for i in range(len(classes)) if (labels == i).any()])
        cosines = without(generic, views[0][0], alpha) @ probes.t()
        hits = sum(classes[int(np.argmax([float(cosines[labels == i, t].mean()) if (labels == i).any() else -2.0
                                          for i in range(len(classes))]))] == entry["class"]
                   for t, entry in enumerate(paraphrases))
        state = "kept" if alpha == 0 else "projected out"
        print(f"direction {state:13s}: accuracy {accuracy:.4f}, mean class accuracy {mean_class:.4f}, "
              f"paraphrases {hits} of {len(paraphrases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
