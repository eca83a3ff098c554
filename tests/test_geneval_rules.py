"""GenEval's rules on hand-made detections: every expected verdict below is worked out by hand from the
official rules (thresholds 0.3 / 0.9 strict, 16 per class, colour on the top-count objects, position with a
0.1 x summed-size margin and a 0.5 normalised offset, exclude at >= count), not by running the code."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from eval.geneval import layout, rules
from eval.geneval.rules import Detection
from sdpo.errors import UserError


def det(x1, y1, x2, y2, score=0.95):
    return Detection((float(x1), float(y1), float(x2), float(y2)), score)


def judge(candidates, metadata, colours=None):
    """keep_objects -> colour_requests -> evaluate, with ``colours`` answering the requests by clause index."""
    objects = rules.keep_objects(candidates, metadata["tag"])
    asked = {i: (name, len(objs)) for i, name, objs in rules.colour_requests(objects, metadata)}
    colours = colours or {}
    assert set(asked) <= set(colours) or not asked, f"colours needed for clauses {sorted(asked)}"
    for i, (_, n) in asked.items():
        assert len(colours[i]) == n
    return rules.evaluate(objects, metadata, {i: colours[i] for i in asked})


def test_thresholds_are_strict_and_depend_on_the_tag():
    dogs = [det(0, 0, 1, 1, s) for s in (0.3, 0.31, 0.95, 0.9, 0.5)]
    kept = rules.keep_objects({"dog": dogs}, "single_object")
    assert [d.score for d in kept["dog"]] == [0.95, 0.9, 0.5, 0.31]  # 0.3 itself is out, most confident first
    assert [d.score for d in rules.keep_objects({"dog": dogs}, "counting")["dog"]] == [0.95]  # 0.9 is out
    assert rules.keep_objects({"dog": [det(0, 0, 1, 1, 0.2)]}, "colors") == {}  # a class with none is absent


def test_at_most_sixteen_per_class_and_no_nms():
    same_box = [det(0, 0, 10, 10, 0.5 + i / 100) for i in range(20)]  # identical boxes: NMS would keep one
    kept = rules.keep_objects({"cup": same_box}, "two_object")
    assert len(kept["cup"]) == 16 and kept["cup"][0].score == pytest.approx(0.69) and kept["cup"][-1].score == 0.54


def test_single_and_two_object():
    one = {"tag": "single_object", "include": [{"class": "dog", "count": 1}]}
    assert judge({"dog": [det(0, 0, 5, 5, 0.4)]}, one) == (True, [])
    ok, why = judge({"dog": [det(0, 0, 5, 5, 0.29)], "cat": [det(0, 0, 5, 5)]}, one)
    assert not ok and why == ["dog: 0 found, at least 1 needed"]
    two = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}]}
    assert judge({"dog": [det(0, 0, 5, 5)], "cat": [det(5, 5, 9, 9)]}, two)[0]
    assert not judge({"dog": [det(0, 0, 5, 5)]}, two)[0]


def test_counting_include_and_exclude_use_the_counting_threshold():
    md = {
        "tag": "counting",
        "include": [{"class": "clock", "count": 2}],
        "exclude": [{"class": "clock", "count": 3}],
    }
    clocks = lambda *scores: {"clock": [det(i, 0, i + 1, 1, s) for i, s in enumerate(scores)]}  # noqa: E731
    assert judge(clocks(0.95, 0.92), md) == (True, [])
    assert judge(clocks(0.95, 0.92, 0.85), md)[0]  # the 0.85 clock is below 0.9: not counted, not excluded
    ok, why = judge(clocks(0.95, 0.92, 0.91), md)
    assert not ok and why == ["clock: 3 found, fewer than 3 allowed"]
    ok, why = judge(clocks(0.95, 0.5), md)
    assert not ok and why == ["clock: 1 found, at least 2 needed"]


def test_colour_is_asked_for_the_top_count_objects_only():
    md = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "pink"}]}
    cars = {"car": [det(0, 0, 4, 4, 0.5), det(4, 4, 8, 8, 0.99), det(1, 1, 2, 2, 0.7)]}
    objects = rules.keep_objects(cars, "colors")
    [(i, name, objs)] = rules.colour_requests(objects, md)
    assert (i, name, [o.score for o in objs]) == (0, "car", [0.99])
    assert judge(cars, md, {0: ["pink"]}) == (True, [])
    ok, why = judge(cars, md, {0: ["red"]})
    assert not ok and why == ["car: 0 pink, at least 1 needed (colours seen: 1 red)"]
    # Not enough objects: nothing to classify, the clause fails on the count.
    assert rules.colour_requests({}, md) == []
    assert judge({}, md) == (False, ["car: 0 found, at least 1 needed"])


def test_colour_attribution_needs_both_colours():
    md = {
        "tag": "color_attr",
        "include": [
            {"class": "wine glass", "count": 1, "color": "purple"},
            {"class": "apple", "count": 1, "color": "black"},
        ],
    }
    objs = {"wine glass": [det(0, 0, 4, 4)], "apple": [det(5, 5, 9, 9)]}
    assert judge(objs, md, {0: ["purple"], 1: ["black"]})[0]
    assert not judge(objs, md, {0: ["purple"], 1: ["red"]})[0]
    assert not judge(objs, md, {0: ["black"], 1: ["black"]})[0]


def _side_by_side(x: float) -> dict:
    """A 10x10 teddy bear at the origin and a 10x10 dog whose centre is ``x`` pixels to the right."""
    return {"teddy bear": [det(0, 0, 10, 10)], "dog": [det(x, 0, x + 10, 10)]}


POSITION = {
    "tag": "position",
    "include": [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}],
}


@pytest.mark.parametrize(
    "x, expected",
    [
        (5.0, True),  # shrunk offset 5 - 0.1 * (10 + 10) = 3, normalised 3 / 5 = 0.6 > 0.5
        (4.0, False),  # (4 - 2) / 4 = 0.5 exactly: not above 0.5
        (2.0, False),  # shrunk to 0 on both axes: no relation at all
        (-5.0, False),  # left of, not right of
    ],
)
def test_position_margin_and_half_threshold(x, expected):
    assert judge(_side_by_side(x), POSITION)[0] is expected


def test_relations_by_hand():
    a, b = (0, 0, 10, 10), (0, 0, 10, 10)
    assert rules.relations(a, b) == set()  # same place
    # Offset (6, 6), sizes 10: shrunk (4, 4), distance 8.49 -> 0.47 on each axis: neither.
    assert rules.relations((6, 6, 16, 16), b) == set()
    # Offset (10, 3): shrunk (8, 1), distance 10.44 -> dx 0.77 (right of), dy 0.10.
    assert rules.relations((10, 3, 20, 13), b) == {"right of"}
    # Offset (-12, -12): shrunk (-10, -10), distance 16.97 -> -0.59 on both: left of and above.
    assert rules.relations((-12, -12, -2, -2), b) == {"left of", "above"}
    # y grows downwards: a box lower in the image is "below".
    assert rules.relations((0, 30, 10, 40), b) == {"below"}
    # Wide boxes need more room: offset 10 with widths 40 + 40 shrinks by 8 -> 2 / 10 = 0.2.
    assert rules.relations((10, 0, 50, 10), (0, 0, 40, 10)) == set()


def test_position_uses_top_count_objects_and_needs_a_matched_target():
    # Two dogs: only the most confident one (right of the bear) is judged.
    objs = {"teddy bear": [det(0, 0, 10, 10)], "dog": [det(20, 0, 30, 10, 0.9), det(-30, 0, -20, 10, 0.5)]}
    assert judge(objs, POSITION)[0]
    # With count 2, both dogs must be right of the bear.
    md2 = json.loads(json.dumps(POSITION))
    md2["include"][1]["count"] = 2
    ok, why = judge(objs, md2)
    assert not ok and why == ["dog: expected right of the target, found left of"]
    # The target clause failed its colour: the position clause fails without a target.
    md3 = {
        "tag": "position",
        "include": [
            {"class": "teddy bear", "count": 1, "color": "red"},
            {"class": "dog", "count": 1, "position": ["right of", 0]},
        ],
    }
    ok, why = judge(objs, md3, {0: ["blue"]})
    assert not ok and why[-1] == "dog: no matched object to be right of"
    # A missing target class: same.
    assert judge({"dog": [det(20, 0, 30, 10)]}, POSITION)[1] == [
        "teddy bear: 0 found, at least 1 needed",
        "dog: no matched object to be right of",
    ]


def test_summary_is_the_mean_of_tag_accuracies():
    rows = [
        {"tag": "single_object", "correct": True, "metadata": "a"},
        {"tag": "single_object", "correct": True, "metadata": "a"},
        {"tag": "counting", "correct": True, "metadata": "b"},
        {"tag": "counting", "correct": False, "metadata": "b"},
        {"tag": "counting", "correct": False, "metadata": "c"},
        {"tag": "counting", "correct": False, "metadata": "c"},
        {"tag": "position", "correct": False, "metadata": "d"},
    ]
    s = rules.summarise(rows)
    assert list(s["tags"]) == ["single_object", "counting", "position"]
    assert s["tags"]["counting"] == {"score": 0.25, "correct": 1, "images": 4}
    assert s["overall"] == pytest.approx((1.0 + 0.25 + 0.0) / 3)  # not the image mean 3/7
    assert s["correct_images"] == pytest.approx(3 / 7)
    assert (s["prompts"], s["correct_prompts"]) == (4, 0.5)  # a and b have a correct image, c and d do not


def test_vendored_metadata_is_the_official_benchmark():
    rows = layout.read_metadata(layout.METADATA)
    names = layout.object_names()
    assert len(rows) == 553 and len(names) == 80 and names[:3] == ["person", "bicycle", "car"]
    assert Counter(r["tag"] for r in rows) == {
        "single_object": 80,
        "two_object": 99,
        "counting": 80,
        "colors": 94,
        "position": 100,
        "color_attr": 100,
    }
    for n, row in enumerate(rows):
        rules.check_metadata(row, names, f"line {n + 1}")


@pytest.mark.parametrize(
    "clause, message",
    [
        ({"class": "unicorn", "count": 1}, "unknown class 'unicorn'"),
        ({"class": "dog", "count": 0}, "'count' must be a positive integer"),
        ({"class": "dog", "count": 1, "color": "teal"}, "unknown color 'teal'"),
        ({"class": "dog", "count": 1, "position": ["right of", 1]}, "must be an earlier include clause"),
        ({"class": "dog", "count": 1, "position": ["beside", 0]}, "'position' must be [relation, clause index]"),
    ],
)
def test_bad_metadata_is_refused_in_one_line(clause, message):
    row = {"tag": "position", "include": [{"class": "cat", "count": 1}, clause], "prompt": "x"}
    with pytest.raises(UserError) as e:
        rules.check_metadata(row, layout.object_names(), "00007/metadata.jsonl")
    assert message in str(e.value) and str(e.value).startswith("00007/metadata.jsonl: include[1]")
    assert "\n" not in str(e.value)
