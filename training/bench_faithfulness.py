"""Are the explanations faithful? Deletion and insertion curves, and the randomisation check.

For each test face and each kind of map (CGLA's class map, the description maps under each
scoring, Grad-CAM, a random order), the patches are removed (deletion: replaced by a blurred
copy of the face) or revealed (insertion: onto the blurred face) hottest first, in ``--steps``
steps, and the probability of the class predicted on the intact face is tracked. Areas under
the curves, with bootstrap 95 % intervals over faces: deletion lower is better, insertion
higher. Then the model-randomisation sanity check: the learnt prompts are re-drawn at random
and each map's Spearman correlation with the trained model's map is measured (it should fall
well below 1; a map that does not change shows the image, not what the model learnt). And
its mirror, a data check: the correlation of a face's map with the next face's (same method);
near 1 means the map is a fixed layout, the same on every face.

Description maps need calibration statistics: taken from --calibration, else from the
checkpoint folder, else fitted here on the first --calib-limit validation faces.

    python training/bench_faithfulness.py --data ../shared/data/ferplus [--checkpoint PATH] \
        [--limit 1000] [--steps 10] [--out results.json] [--json]

Prints a markdown table; --out writes the full results (curves included) as JSON, --json
prints them too. No TTA: the curves track the plain model's probabilities.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mpafer.data import load_dataset  # noqa: E402
from mpafer.dataset_faces import dataset_inputs, framed_region_masks  # noqa: E402
from mpafer.description_calibration import fit_calibration, load_calibration  # noqa: E402
from mpafer.description_bank import description_bank  # noqa: E402
from mpafer.description_scores import DescriptionScorer, region_scores_of_faces  # noqa: E402
from mpafer.faithfulness import (bootstrap_interval, curve_area, deletion_insertion_inputs, heat_order,  # noqa: E402
                                 randomized_prompts, spearman)
from mpafer.grad_cam import gradcam  # noqa: E402
from mpafer.occlusion import default_sigma, gaussian_blur  # noqa: E402
from mpafer.predictor import resolve_model  # noqa: E402

DESCRIPTION_METHODS = ("zscore", "region_minus_face", "raw")
METHODS = ("cgla", *(f"descriptions ({m})" for m in DESCRIPTION_METHODS), "grad-cam", "random")
RANDOMISED = ("cgla", *(f"descriptions ({m})" for m in DESCRIPTION_METHODS), "grad-cam")


def get_calibration(model, source: str, args):
    """(calibration, where it came from)."""
    for path in (args.calibration, source):
        if path and Path(path).exists():
            found = load_calibration(path, model)
            if found is not None:
                return found, str(path)
    valid = load_dataset(args.dataset, args.data, "valid", image_size=None).images[:args.calib_limit]
    masks = framed_region_masks(model.image_size, model.grid, model.config.input)
    scorer = DescriptionScorer(model, method="raw")
    scores = region_scores_of_faces(scorer, valid, masks, progress=True)
    return fit_calibration(model, scorer.bank, scores), f"fitted here on {len(valid)} validation faces"


def heatmaps(model, scorers, images: torch.Tensor, targets: torch.Tensor, masks, rng) -> dict[str, np.ndarray]:
    """Method -> (B, N) heat of every face for its target class (NaN: no description covers the cell)."""
    with torch.no_grad():
        out = model(images, with_text_tokens=False)
        evidence = scorers["zscore"].evidence(out.patch_features, masks)
    rows = torch.arange(len(targets))
    heat = {"cgla": out.maps[rows, targets].flatten(1).float().cpu().numpy()}
    for method, scorer in scorers.items():
        maps = np.zeros((len(targets), evidence.cosines.shape[-1]), dtype=np.float32)
        for klass in targets.unique().tolist():
            chosen = (targets == klass).numpy()
            maps[chosen] = scorer.class_map(evidence, klass).numpy()[chosen]
        heat[f"descriptions ({method})"] = maps
    cams = torch.from_numpy(gradcam(model, images, targets.tolist()))
    heat["grad-cam"] = F.adaptive_avg_pool2d(cams[:, None], model.grid).flatten(1).numpy()
    heat["random"] = rng.random((len(targets), evidence.cosines.shape[-1]))
    return heat


@torch.no_grad()
def curves(model, images, baseline, targets, heat, steps: int, rng, chunk: int = 1024) -> dict[str, np.ndarray]:
    """Method -> (B, 2, steps + 1): the target's probability along deletion and insertion."""
    sequences = []
    for method in METHODS:
        for b in range(len(targets)):
            order = heat_order(heat[method][b], rng)
            sequences.append(deletion_insertion_inputs(images[b], baseline[b], order, model.grid, steps))
    batch = torch.cat(sequences)
    probabilities = torch.cat([model(batch[i:i + chunk], with_text_tokens=False).probabilities.float().cpu()
                               for i in range(0, len(batch), chunk)])
    per_step = probabilities.reshape(len(METHODS), len(targets), 2, steps + 1, -1)
    picked = torch.stack([per_step[:, b, :, :, int(t)] for b, t in enumerate(targets)], 1)  # (M, B, 2, T)
    return {method: picked[m].numpy() for m, method in enumerate(METHODS)}


def interval(values: np.ndarray, args) -> dict:
    mean, low, high = bootstrap_interval(values, args.resamples, seed=args.seed)
    return {"mean": mean, "low": low, "high": high}


def summarise(all_curves, correlations, across_faces, args, meta) -> dict:
    results = {"meta": meta, "methods": {}}
    for method in METHODS:
        c = np.concatenate(all_curves[method])  # (F, 2, T)
        deletion, insertion = curve_area(c[:, 0]), curve_area(c[:, 1])
        entry = {
            "deletion_auc": interval(deletion, args), "insertion_auc": interval(insertion, args),
            "insertion_minus_deletion": interval(insertion - deletion, args),
            "deletion_curve": c[:, 0].mean(0).round(4).tolist(), "insertion_curve": c[:, 1].mean(0).round(4).tolist(),
        }
        if method in correlations:
            entry["rank_correlation_after_prompt_reinit"] = interval(np.asarray(correlations[method]), args)
            entry["rank_correlation_with_another_face"] = interval(np.asarray(across_faces[method]), args)
        results["methods"][method] = entry
    return results


def _ci(entry: dict) -> str:
    return f"{entry['mean']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"Faithfulness on {meta['faces']} {meta['dataset']} {meta['split']} faces ({meta['checkpoint']}), "
             f"{meta['steps']} steps, removed patches replaced by a blur (sigma {meta['blur_sigma']:.1f} px); "
             f"mean [bootstrap 95 % interval]. Description calibration: {meta['calibration']}.", "",
             "| map | deletion AUC (lower is better) | insertion AUC (higher is better) | insertion - deletion "
             "| rank corr. with prompts re-drawn (lower: depends on training) "
             "| rank corr. with another face (lower: depends on the face) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for method, entry in results["methods"].items():
        corr = entry.get("rank_correlation_after_prompt_reinit")
        other = entry.get("rank_correlation_with_another_face")
        lines.append(f"| {method} | {_ci(entry['deletion_auc'])} | {_ci(entry['insertion_auc'])} | "
                     f"{_ci(entry['insertion_minus_deletion'])} | {_ci(corr) if corr else '-'} | "
                     f"{_ci(other) if other else '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder (FERPlus)")
    parser.add_argument("--dataset", default="ferplus")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--limit", type=int, default=1000, help="the first N faces of the split (default 1000)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16, help="faces per step (each makes ~130 model inputs)")
    parser.add_argument("--calibration", default=None, help="a description_calibration.json to use")
    parser.add_argument("--calib-limit", type=int, default=1000, help="validation faces to fit one on, if none")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--json", action="store_true", help="also print the JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.time()
    model, source, _ = resolve_model(args.checkpoint)
    calibration, calibration_source = get_calibration(model, source, args)
    random_model = randomized_prompts(model, seed=args.seed)
    bank, random_bank = description_bank(model), description_bank(random_model)  # encoded once per model
    scorers = {m: DescriptionScorer(model, calibration, method=m, bank=bank) for m in DESCRIPTION_METHODS}
    random_scorers = {m: DescriptionScorer(random_model, calibration, method=m, bank=random_bank)
                      for m in DESCRIPTION_METHODS}
    masks = framed_region_masks(model.image_size, model.grid, model.config.input)
    sigma = default_sigma(model.image_size)
    images = load_dataset(args.dataset, args.data, args.split, image_size=None).images[:args.limit]
    rng = np.random.default_rng(args.seed)

    all_curves = {m: [] for m in METHODS}
    correlations = {m: [] for m in RANDOMISED}
    across_faces = {m: [] for m in RANDOMISED}
    for start in tqdm(range(0, len(images), args.batch), desc="faithfulness", unit="batch"):
        x = dataset_inputs(model, images[start:start + args.batch])
        with torch.no_grad():
            targets = model(x, with_text_tokens=False).logits.argmax(1).cpu()
        heat = heatmaps(model, scorers, x, targets, masks, rng)
        for method, values in curves(model, x, gaussian_blur(x, sigma), targets, heat, args.steps, rng).items():
            all_curves[method].append(values)
        # the sanity check: the same faces and target classes, the prompts re-drawn
        shuffled = heatmaps(random_model, random_scorers, x, targets, masks, rng)
        for method in RANDOMISED:
            correlations[method].extend(spearman(a, b) for a, b in zip(heat[method], shuffled[method]))
            if len(targets) > 1:
                across_faces[method].extend(spearman(a, b) for a, b in zip(heat[method], np.roll(heat[method], 1, 0)))

    meta = {"checkpoint": source, "dataset": args.dataset, "split": args.split, "faces": int(len(images)),
            "steps": args.steps, "blur_sigma": sigma, "calibration": calibration_source,
            "resamples": args.resamples, "seed": args.seed, "seconds": round(time.time() - started, 1)}
    results = summarise(all_curves, correlations, across_faces, args, meta)
    print(markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")
        print(f"\nwrote {args.out}")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
