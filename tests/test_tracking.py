"""mpafer.tracking: faces followed across frames by IoU, probabilities averaged over ~0.5 s."""
import copy
import pickle

import pytest

from mpafer.tracking import FaceTracker, iou

LEFT, RIGHT = (10.0, 10.0, 60.0, 60.0), (200.0, 10.0, 250.0, 60.0)


def probs(happy: float) -> dict[str, float]:
    return {"neutral": 1.0 - happy, "happiness": happy}


def moved(box, dx):
    return (box[0] + dx, box[1], box[2] + dx, box[3])


def test_iou():
    assert iou(LEFT, LEFT) == 1.0 and iou(LEFT, RIGHT) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_a_flickering_label_is_smoothed():
    tracker = FaceTracker(window_s=0.5)
    # 10 frames a second; the raw prediction flips every other frame around 50 %
    shown = []
    for n, happy in enumerate([0.8, 0.45, 0.8, 0.45, 0.8, 0.45, 0.8, 0.45]):
        (face,) = tracker.update([moved(LEFT, n)], [probs(happy)], now=n * 0.1)
        shown.append(face.label)
        assert face.track_id == 1  # the same face all along, though it moves
    assert shown == ["happiness"] * 8  # the raw labels alternate happiness / neutral
    assert face.frames == 5  # 0.5 s at 10 frames a second
    assert face.probabilities["happiness"] == pytest.approx((0.45 + 0.8 + 0.45 + 0.8 + 0.45) / 5)
    assert face.confidence == face.probabilities["happiness"]


def test_a_real_change_comes_through_within_the_window():
    tracker = FaceTracker(window_s=0.5)
    labels = [tracker.update([LEFT], [probs(p)], now=n * 0.1)[0].label
              for n, p in enumerate([0.9] * 5 + [0.1] * 6)]
    assert labels[:5] == ["happiness"] * 5
    assert labels[-1] == "neutral" and labels.index("neutral") <= 5 + 3


def test_two_faces_keep_their_own_tracks_in_any_order():
    tracker = FaceTracker()
    first = tracker.update([LEFT, RIGHT], [probs(0.9), probs(0.1)], now=0.0)
    second = tracker.update([moved(RIGHT, 5), moved(LEFT, -5)], [probs(0.1), probs(0.9)], now=0.1)
    assert [f.track_id for f in second] == [first[1].track_id, first[0].track_id]
    assert [f.label for f in second] == ["neutral", "happiness"]
    assert all(f.frames == 2 for f in second)


def test_new_faces_and_lost_tracks():
    tracker = FaceTracker(max_missing_s=1.0)
    (a,) = tracker.update([LEFT], [probs(0.9)], now=0.0)
    (b,) = tracker.update([RIGHT], [probs(0.2)], now=0.1)  # no overlap: another face
    assert b.track_id != a.track_id and b.frames == 1
    tracker.update([], [], now=0.5)  # a frame without faces
    (c,) = tracker.update([LEFT], [probs(0.2)], now=0.6)  # back within max_missing_s: same track
    assert c.track_id == a.track_id
    (d,) = tracker.update([RIGHT], [probs(0.9)], now=2.0)  # gone for 1.9 s: a new track
    assert d.track_id not in (a.track_id, b.track_id) and d.frames == 1
    assert len(tracker.tracks) == 1


def test_old_frames_leave_the_window():
    tracker = FaceTracker(window_s=0.5)
    tracker.update([LEFT], [probs(0.9)], now=0.0)
    (face,) = tracker.update([LEFT], [probs(0.2)], now=0.6)  # the first frame is 0.6 s old
    assert face.frames == 1 and face.label == "neutral"


def test_other_classes_or_a_clock_going_back_start_over():
    tracker = FaceTracker()
    (a,) = tracker.update([LEFT], [probs(0.9)], now=5.0)
    (b,) = tracker.update([LEFT], [{"x": 0.3, "y": 0.7}], now=5.1)
    assert b.frames == 1 and b.label == "y" and tracker.classes == ("x", "y")
    (c,) = tracker.update([LEFT], [{"x": 0.3, "y": 0.7}], now=1.0)
    assert c.frames == 1


def test_validation():
    with pytest.raises(ValueError):
        FaceTracker(window_s=0)
    with pytest.raises(ValueError):
        FaceTracker(min_iou=0)
    with pytest.raises(ValueError, match="boxes"):
        FaceTracker().update([LEFT], [], now=0.0)


def test_copies_and_pickles_keep_the_tracks():
    tracker = FaceTracker()
    (a,) = tracker.update([LEFT], [probs(0.9)], now=0.0)
    for clone in (copy.deepcopy(tracker), pickle.loads(pickle.dumps(tracker))):
        (b,) = clone.update([LEFT], [probs(0.7)], now=0.1)
        assert b.track_id == a.track_id and b.frames == 2
        (c,) = clone.update([RIGHT], [probs(0.7)], now=0.2)
        assert c.track_id == a.track_id + 1
