"""GenEval's decision rules: is one image correct for its prompt, given the detector's objects?

Written from the official evaluator's behaviour (``evaluation/evaluate_images.py`` of djghosh13/geneval,
default options), which every number here reproduces:

- **Which detections count** (:func:`keep_objects`): per class, detections whose confidence is
  strictly above 0.3 (0.9 when the prompt's tag is ``counting``), most confident first, at most 16
  per class; no non-maximum suppression (the official overlap threshold is 1, i.e. off).
- **Include clauses** (all must hold): the class needs at least ``count`` kept objects; only the
  ``count`` most confident are looked at further. With a ``color``, at least ``count`` of them
  must be classified as that colour. With a ``position`` ``[relation, j]``, every one of them
  must stand in ``relation`` to every object that include clause ``j`` matched; if clause ``j``
  failed, this one fails too. Position is checked only once the colour (if any) passed.
- **Exclude clauses** (any one fails the image): ``count`` or more kept objects of the class.
- **Position** (:func:`relations`): offsets between box centres, each axis shrunk towards zero by
  0.1 x (the two boxes' sizes on that axis summed), then divided by the unshrunk centre distance;
  the relation holds when that normalised offset passes 0.5 (``left of``: dx < -0.5, ``right of``:
  dx > 0.5, ``above``: dy < -0.5, ``below``: dy > 0.5; image y grows downwards). Boxes whose
  shrunk offset is below 1e-3 on both axes stand in no relation. Computed in float32, as the
  official numpy code does on the detector's float32 boxes.
- **Score** (:func:`summarise`): per tag, the fraction of correct images; overall, the mean over the
  tags present (six in the benchmark).

Pure functions on plain data: the detector and the colour classifier live elsewhere, so each rule
can be tested on hand-made detections.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdpo.errors import UserError

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_MARGIN = 0.1
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass(frozen=True)
class Detection:
    """One detected object: box ``(x1, y1, x2, y2)`` in pixels, confidence, and its mask (H x W bool array
    at the image's size, used only to cut out the object for the colour classifier)."""

    box: tuple[float, float, float, float]
    score: float
    mask: Any = None


Objects = Mapping[str, Sequence[Detection]]


def threshold(tag: str) -> float:
    return COUNTING_THRESHOLD if tag == "counting" else THRESHOLD


def keep_objects(candidates: Objects, tag: str) -> dict[str, list[Detection]]:
    """The detections the rules look at, per class name (classes with none are left out). Ties in
    confidence keep the detector's order."""
    thr = threshold(tag)
    kept = {}
    for name, dets in candidates.items():
        above = sorted((d for d in dets if d.score > thr), key=lambda d: -d.score)[:MAX_OBJECTS]
        if above:
            kept[name] = above
    return kept


def relations(box_a: Sequence[float], box_b: Sequence[float], margin: float = POSITION_MARGIN) -> set[str]:
    """Where object A stands relative to object B (see the module docstring)."""
    a = np.asarray(box_a[:4], dtype=np.float32)
    b = np.asarray(box_b[:4], dtype=np.float32)
    offset = (a[:2] + a[2:]) / np.float32(2) - (b[:2] + b[2:]) / np.float32(2)
    sizes = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    shrunk = np.maximum(np.abs(offset) - np.float32(margin) * sizes, np.float32(0)) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def _considered(objects: Objects, clause: Mapping) -> list[Detection]:
    return list(objects.get(clause["class"], []))[: clause["count"]]


def colour_requests(objects: Objects, metadata: Mapping) -> list[tuple[int, str, list[Detection]]]:
    """(include clause index, class name, objects) for every clause whose colour must be classified: those
    with a ``color`` and enough objects. Known before any colour is, so a batch's crops can be classified
    together; :func:`evaluate` then takes the answers."""
    out = []
    for i, clause in enumerate(metadata.get("include", [])):
        found = _considered(objects, clause)
        if "color" in clause and len(found) >= clause["count"]:
            out.append((i, clause["class"], found))
    return out


def _first_wrong_relation(found: Sequence[Detection], others: Sequence[Detection], relation: str) -> set[str] | None:
    """The relations of the first (object, target) pair lacking ``relation``, or None when every pair has it."""
    for a in found:
        for b in others:
            rel = relations(a.box, b.box)
            if relation not in rel:
                return rel
    return None


def evaluate(objects: Objects, metadata: Mapping, colours: Mapping[int, Sequence[str]]) -> tuple[bool, list[str]]:
    """(correct, reasons) for one image. ``objects`` come from :func:`keep_objects`; ``colours[i]`` are the
    classified colours of include clause ``i``'s objects (see :func:`colour_requests`)."""
    correct, reasons = True, []
    groups: list[list[Detection] | None] = []
    for i, clause in enumerate(metadata.get("include", [])):
        name, count = clause["class"], clause["count"]
        found = _considered(objects, clause)
        ok = len(found) >= count
        if not ok:
            reasons.append(f"{name}: {len(found)} found, at least {count} needed")
        if ok and "color" in clause:
            got = list(colours[i])
            n = got.count(clause["color"])
            if n < count:
                ok = False
                seen = ", ".join(f"{got.count(c)} {c}" for c in COLORS if c in got)
                reasons.append(f"{name}: {n} {clause['color']}, at least {count} needed (colours seen: {seen})")
        if ok and "position" in clause:
            relation, target = clause["position"]
            others = groups[target]
            if others is None:
                ok = False
                reasons.append(f"{name}: no matched object to be {relation}")
            else:
                bad = _first_wrong_relation(found, others, relation)
                if bad is not None:
                    ok = False
                    shown = " and ".join(sorted(bad)) or "no relation"
                    reasons.append(f"{name}: expected {relation} the target, found {shown}")
        groups.append(found if ok else None)
        correct = correct and ok
    for clause in metadata.get("exclude", []):
        n = len(objects.get(clause["class"], []))
        if n >= clause["count"]:
            correct = False
            reasons.append(f"{clause['class']}: {n} found, fewer than {clause['count']} allowed")
    return correct, reasons


def check_metadata(row: Mapping, classes: Sequence[str], where: str) -> None:
    """Refuse a metadata row the rules cannot judge (unknown class or colour, bad position target), in one line."""
    known = set(classes)
    if not isinstance(row.get("tag"), str):
        raise UserError(f"{where}: no 'tag' (one of {', '.join(TAGS)})")
    include, exclude = row.get("include", []), row.get("exclude", [])
    if not isinstance(include, list) or not isinstance(exclude, list):
        raise UserError(f"{where}: 'include' and 'exclude' must be lists of clauses")
    for kind, clauses in (("include", include), ("exclude", exclude)):
        for i, clause in enumerate(clauses):
            at = f"{where}: {kind}[{i}]"
            if not isinstance(clause, dict) or "class" not in clause or "count" not in clause:
                raise UserError(f"{at} needs 'class' and 'count'")
            if clause["class"] not in known:
                raise UserError(f"{at}: unknown class {clause['class']!r} (not one of the detector's 80 object names)")
            if not isinstance(clause["count"], int) or clause["count"] < 1:
                raise UserError(f"{at}: 'count' must be a positive integer, got {clause['count']!r}")
            if kind == "include" and "color" in clause and clause["color"] not in COLORS:
                raise UserError(f"{at}: unknown color {clause['color']!r} (one of {', '.join(COLORS)})")
            if kind == "include" and "position" in clause:
                pos = clause["position"]
                if not (isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS and isinstance(pos[1], int)):
                    raise UserError(f"{at}: 'position' must be [relation, clause index], relation one of {RELATIONS}")
                if not 0 <= pos[1] < i:
                    raise UserError(f"{at}: position target {pos[1]} must be an earlier include clause")


def summarise(rows: Sequence[Mapping]) -> dict:
    """The benchmark's numbers from per-image rows (``tag``, ``correct``, ``metadata``): per-tag accuracy,
    their mean (the GenEval score), and the fractions of correct images and of prompts with a correct image."""
    by_tag: dict[str, list[bool]] = {}
    by_prompt: dict[str, bool] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(bool(r["correct"]))
        key = r["metadata"] if isinstance(r["metadata"], str) else json.dumps(r["metadata"])
        by_prompt[key] = by_prompt.get(key, False) or bool(r["correct"])
    order = [t for t in TAGS if t in by_tag] + [t for t in by_tag if t not in TAGS]
    tags = {
        t: {"score": statistics.fmean(by_tag[t]), "correct": sum(by_tag[t]), "images": len(by_tag[t])} for t in order
    }
    return {
        "overall": statistics.fmean(v["score"] for v in tags.values()) if tags else 0.0,
        "tags": tags,
        "images": len(rows),
        "prompts": len(by_prompt),
        "correct_images": statistics.fmean(bool(r["correct"]) for r in rows) if rows else 0.0,
        "correct_prompts": statistics.fmean(by_prompt.values()) if by_prompt else 0.0,
    }
