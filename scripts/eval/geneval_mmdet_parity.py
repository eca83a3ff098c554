"""Opt-in parity check: GenEval's detector rebuilt here vs mmdetection's own Mask2Former, same random weights.

    python scripts/eval/geneval_mmdet_parity.py [--size 512] [--seed 0] [--out parity.json]

Builds mmdetection 2.x's ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco`` (Swin-S, 80 classes, 100
queries: GenEval's detector) with random weights, saves it as an mmdetection checkpoint, converts it with
``eval.geneval.convert`` (``weights_only=True``) and compares, on CPU in fp32:

1. the network: last-layer class logits and mask logits for the same input tensor;
2. pre-processing: our input tensor vs mmdetection's test pipeline (OpenCV resize; also our torch resize);
3. the whole detector: ``inference_detector`` on PNG files vs :class:`eval.geneval.detector.Detector`,
   per class (scores, boxes, masks), for a square and a non-square image.

It prints the largest differences and exits 1 if any exceeds its tolerance. Measured 2026-11-22 on CPU
(``--size 256``): class / mask logits max abs diff 4.0e-4 / 2.1e-4 (logits up to 51 / 23); input tensor
2.4e-7 with OpenCV (1.75e-2, about one grey level, with the torch resize); 200 detections on a
512 x 512 and a 480 x 640 image, all matched, confidences within 1.7e-5, 0 box differences, masks
differing in at most 7.6e-6 of their pixels. Not part of the test suite:
mmdetection 2.x needs mmcv 1.x, which has no wheels for current PyTorch and must be built from source.

Environment used (measured 2026-11-22; a separate virtual environment that also sees the project's
packages through a ``.pth`` file naming the project venv's site-packages):

    python3 -m venv $MMVENV && echo "<project venv>/lib/python3.11/site-packages" \\
        > $MMVENV/lib/python3.11/site-packages/project.pth
    $MMVENV/bin/pip install wheel setuptools
    MMCV_WITH_OPS=0 $MMVENV/bin/pip install --no-build-isolation --no-deps mmcv==1.7.2 mmdet==2.28.2 \\
        opencv-python-headless==5.0.0.93 addict==2.4.0 yapf==0.40.1 terminaltables==3.1.10 \\
        pycocotools==2.0.11 scipy six matplotlib platformdirs

(Python 3.11.7, torch 2.14.1, transformers 5.23.0, numpy 2.4.) ``MMCV_WITH_OPS=0`` builds mmcv 1.7.2
without its C++/CUDA ops (seconds instead of most of an hour); this script then registers a stand-in for
``mmcv._ext`` so mmdetection imports, and any compiled op that would actually be called fails loudly. On
CPU the only op Mask2Former inference uses, multi-scale deformable attention, runs mmcv's own PyTorch
implementation either way, so the comparison is the same as with ``MMCV_WITH_OPS=1`` (``mmcv-full``,
which GenEval pins at 1.7.1). GenEval itself used mmdetection's 2.x branch, i.e. 2.28.x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

TOLERANCE = {"logits": 1e-3, "input": 1e-4, "scores": 1e-3, "mask_mismatch": 1e-3}


def _import_mmdet():
    """mmdetection, with a stand-in for mmcv's compiled ops when mmcv was built without them."""
    try:
        import mmcv.ops  # noqa: F401
    except (ImportError, ModuleNotFoundError):
        ext = types.ModuleType("mmcv._ext")

        def missing(name):
            def fail(*args, **kwargs):
                raise RuntimeError(f"compiled mmcv op {name} was called; build mmcv with MMCV_WITH_OPS=1")

            return fail

        def getattr_(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return missing(name)

        ext.__getattr__ = getattr_
        sys.modules["mmcv._ext"] = ext
        for mod in [m for m in sys.modules if m.startswith("mmcv.ops")]:
            del sys.modules[mod]
        print("note: mmcv has no compiled ops; using a stand-in (CPU inference uses none)")
    import mmcv
    import mmdet

    return mmcv, mmdet


def build_mmdet_model(mmcv, mmdet, seed: int):
    from mmdet.models import build_detector

    cfg_path = Path(mmdet.__file__).parent / ".mim/configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"
    cfg = mmcv.Config.fromfile(str(cfg_path))
    cfg.model.backbone.init_cfg = None
    model = build_detector(cfg.model)
    model.cfg = cfg
    torch.manual_seed(seed)
    model.init_weights()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # weights far from their init, so every path matters
            if "norm" in name or name.endswith(".gn.weight") or name.endswith(".gn.bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.panoptic_head.cls_embed.weight.mul_(20.0)  # peaked class probabilities: detections above 0.3
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="side of the raw-network input")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    mmcv, mmdet = _import_mmdet()
    from mmdet.apis import inference_detector
    from PIL import Image

    from eval.geneval.convert import convert_checkpoint
    from eval.geneval.detector import Detector, Mask2FormerInstance, load_weights, preprocess

    print(f"mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, torch {torch.__version__}")
    mm = build_mmdet_model(mmcv, mmdet, args.seed)
    report: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"
        torch.save(
            {"meta": {"CLASSES": mm.CLASSES if hasattr(mm, "CLASSES") else None}, "state_dict": mm.state_dict()}, ckpt
        )
        config, sd = convert_checkpoint(ckpt)
        ours = load_weights(Mask2FormerInstance(config), sd, ckpt).eval()
        print(f"converted {len(sd)} tensors; {sum(v.numel() for v in sd.values()) / 1e6:.1f}M parameters")

        # 1. The network on one input.
        x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed))
        metas = [{"batch_input_shape": (args.size, args.size), "img_shape": (args.size, args.size, 3),
                  "ori_shape": (args.size, args.size, 3), "pad_shape": (args.size, args.size, 3)}]  # fmt: skip
        cls_mm, masks_mm = mm.panoptic_head(mm.extract_feat(x), metas)
        cls_ours, masks_ours = ours(x)
        report["class_logits_max_abs_diff"] = float((cls_mm[-1] - cls_ours).abs().max())
        report["mask_logits_max_abs_diff"] = float((masks_mm[-1] - masks_ours).abs().max())
        report["class_logits_scale"] = float(cls_mm[-1].abs().max())
        report["mask_logits_scale"] = float(masks_mm[-1].abs().max())
        print({k: f"{v:.3g}" for k, v in report.items()}, flush=True)

        # 2 and 3. Pre-processing and the whole detector on image files.
        from mmdet.datasets import replace_ImageToTensor
        from mmdet.datasets.pipelines import Compose

        pipeline = Compose(replace_ImageToTensor(mm.cfg.data.test.pipeline))
        rng = np.random.default_rng(args.seed)
        worst = {"input_cv2": 0.0, "input_torch": 0.0, "scores": 0.0, "box_mismatches": 0, "mask_mismatch": 0.0}
        n_det = 0
        for h, w in ((512, 512), (480, 640)):
            base = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)  # smooth blobs, not pixel noise
            pixels = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))
            path = Path(tmp) / f"{h}x{w}.png"
            Image.fromarray(pixels).save(path)
            data = pipeline({"img_info": {"filename": str(path)}, "img_prefix": None})
            theirs = data["img"][0]
            theirs = getattr(theirs, "data", theirs)  # a DataContainer once ImageToTensor is replaced
            for backend in ("cv2", "torch"):
                mine, meta = preprocess(Image.open(path), backend)
                worst[f"input_{backend}"] = max(worst[f"input_{backend}"], float((theirs - mine).abs().max()))
            bbox_results, mask_results = inference_detector(mm, str(path))
            found = Detector(ours, torch.device("cpu"), "cv2")([Image.open(path)])[0]
            for c in range(len(bbox_results)):
                a = bbox_results[c]
                sel = found.labels == c
                b_boxes, b_scores, b_masks = found.boxes[sel], found.scores[sel], found.masks[sel]
                assert len(a) == len(b_boxes), f"class {c}: {len(a)} vs {len(b_boxes)} detections"
                order = np.argsort(-a[:, 4], kind="stable")
                a, a_masks = a[order], [mask_results[c][i] for i in order]
                n_det += len(a)
                if len(a):
                    worst["scores"] = max(worst["scores"], float(np.abs(a[:, 4] - b_scores).max()))
                    worst["box_mismatches"] += int((np.abs(a[:, :4] - b_boxes).max(axis=1) > 0).sum())
                    for ma, mb in zip(a_masks, b_masks):
                        worst["mask_mismatch"] = max(worst["mask_mismatch"], float((ma != mb).mean()))
        report.update({f"{k}_max_abs_diff" if k.startswith(("input", "scores")) else k: v for k, v in worst.items()})
        report["detections_compared"] = n_det
        report["detections_above_0.3"] = int(sum((r > 0.3).sum() for r in [found.scores]))

    for k, v in report.items():
        print(f"{k:<32} {v:.3g}" if isinstance(v, float) else f"{k:<32} {v}")
    ok = (
        report["class_logits_max_abs_diff"] <= TOLERANCE["logits"]
        and report["mask_logits_max_abs_diff"] <= TOLERANCE["logits"]
        and report["input_cv2_max_abs_diff"] <= TOLERANCE["input"]
        and report["scores_max_abs_diff"] <= TOLERANCE["scores"]
        and report["mask_mismatch"] <= TOLERANCE["mask_mismatch"]
    )
    if args.out:
        Path(args.out).write_text(json.dumps({**report, "ok": ok, "tolerance": TOLERANCE}, indent=2))
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
