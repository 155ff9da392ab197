"""Package a trained stage-1 checkpoint and its stage-0 backbone as the bundled default model.

    python training/bundle_default_model.py runs/stage1/best assets/models/mpafer-ferplus-default

Copies the backbone's 'local-dir:' folder into ``<out>/backbone`` (float16 unless --keep-dtype)
and rewrites the checkpoint so that it refers to it by a relative path: the bundle moves as one
folder. The prompts are re-attached to the weights as stored (fp16-rounded), the fixed
hard-prompt features are recomputed from them, and the checkpoint records the stored weights'
fingerprint, so the bundle loads with the usual fingerprint check.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mpafer.backbone import BackboneConfig, load_backbone, save_model_folder  # noqa: E402
from mpafer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from mpafer.input_protocol import InputProtocol  # noqa: E402


def bundle(checkpoint: Path, out: Path, half: bool = True, protocol: dict | None = None) -> Path:
    """``protocol``: measured crop settings (``training/crop_protocol.py calibrate``: margin,
    shift_y) written into the bundled model's input protocol."""
    model = load_checkpoint(checkpoint)
    source = model.config.backbone.model_name
    if not source.startswith("local-dir:"):
        raise SystemExit(f"the checkpoint's backbone is {source}; only a local-dir: backbone can be bundled")
    source_dir = Path(source[len("local-dir:"):])
    config = json.loads((source_dir / "open_clip_config.json").read_text())
    if source_dir.resolve().is_relative_to(out.resolve()):  # out is replaced below: never read from it
        raise SystemExit(f"the checkpoint's backbone {source_dir} lies inside {out}: bundle into another folder, "
                         f"then move it into place")
    if out.exists():
        shutil.rmtree(out)
    backbone_dir = out / "backbone"
    save_model_folder(model.clip, config["model_cfg"], backbone_dir, config.get("preprocess_cfg"),
                      dtype=torch.float16 if half else None)
    stored = load_backbone(BackboneConfig(f"local-dir:{backbone_dir}"))
    # the prompts on the weights as stored (fp16-rounded): fixed text features are recomputed,
    # and the checkpoint records the stored weights' fingerprint
    bundled = load_checkpoint(checkpoint, backbone=stored, check_fingerprint=False)
    bundled.hard_text_cache = torch.zeros(0)
    measured = {k: protocol[k] for k in ("margin", "shift_y") if protocol and k in protocol}
    bundled.config.input = InputProtocol.from_dict({**bundled.config.input.to_dict(), **measured})
    save_checkpoint(bundled, out, extra={"bundled_from": str(checkpoint), "input_measured": protocol or {}})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--keep-dtype", action="store_true", help="store the backbone in its own dtype, not fp16")
    parser.add_argument("--protocol", type=Path, default=None,
                        help="JSON from `training/crop_protocol.py calibrate` (margin, shift_y)")
    args = parser.parse_args(argv)
    protocol = json.loads(args.protocol.read_text()) if args.protocol else None
    out = bundle(args.checkpoint, args.out, half=not args.keep_dtype, protocol=protocol)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    print(f"bundled {args.checkpoint} -> {out} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
