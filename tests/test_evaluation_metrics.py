"""The metric code against hand-computed values; both protocols on cases where they differ."""
import numpy as np
import pytest

from nnunet_allukan.evaluation.metrics import (
    CaseCounts, NonBinaryMaskError, binarize, case_counts, f1_from_iou, iou_from_counts, mean_std,
    per_image_scores, reference_batches, reference_scores)
from nnunet_allukan.paper import METRIC_SMOOTH

# Three 2x2 cases. a: I=1, U=2, |A|=2, |B|=1.  b: empty prediction and target.  c: I=2, U=4, |A|=4, |B|=2.
PRED = {"a": [[1, 1], [0, 0]], "b": [[0, 0], [0, 0]], "c": [[1, 1], [1, 1]]}
GT = {"a": [[1, 0], [0, 0]], "b": [[0, 0], [0, 0]], "c": [[0, 0], [1, 1]]}


@pytest.fixture
def counts():
    return {k: case_counts(np.array(PRED[k], bool), np.array(GT[k], bool)) for k in PRED}


def test_case_counts_and_per_case_scores(counts):
    assert counts["a"] == CaseCounts(intersection=1, union=2, predicted=2, target=1)
    assert counts["b"] == CaseCounts(0, 0, 0, 0)
    assert counts["c"] == CaseCounts(2, 4, 4, 2)
    assert counts["a"].iou == pytest.approx((1 + METRIC_SMOOTH) / (2 + METRIC_SMOOTH))
    assert counts["a"].iou == pytest.approx(0.5, abs=1e-5)
    assert counts["a"].f1 == pytest.approx(2 / 3, abs=1e-5)  # Dice 2*1/(2+1)
    assert counts["b"].iou == 1.0 and counts["b"].f1 == 1.0  # empty vs empty: smoothing gives 1
    assert counts["c"].f1 == pytest.approx(4 / 6, abs=1e-5)
    # an empty target with a false positive scores ~0, not 1
    fp = case_counts(np.ones((2, 2), bool), np.zeros((2, 2), bool))
    assert fp.iou == pytest.approx(0.0, abs=1e-5) and fp.f1 == pytest.approx(0.0, abs=1e-5)


def test_per_image_protocol(counts):
    scores = per_image_scores([counts[k] for k in "abc"])
    assert scores.iou == pytest.approx((0.5 + 1 + 0.5) / 3, abs=1e-5)
    assert scores.f1 == pytest.approx((2 / 3 + 1 + 2 / 3) / 3, abs=1e-5)


def test_reference_protocol_pools_batches_and_depends_on_order(counts):
    # order a, b | c: batch 1 pools I=1, U=2 -> 0.5; batch 2 (c) -> 0.5; weighted mean 0.5 (per-image: 0.667)
    batches = reference_batches(["a", "b", "c"], counts, batch_size=2)
    assert [b.cases for b in batches] == [("a", "b"), ("c",)]
    assert [b.iou for b in batches] == pytest.approx([0.5, 0.5], abs=1e-5)
    scores = reference_scores(batches)
    assert scores.iou == pytest.approx(0.5, abs=1e-5)
    assert scores.f1 == pytest.approx(2 / 3, abs=1e-5)  # 2*0.5/1.5 per batch, weighted
    assert per_image_scores(list(counts.values())).iou == pytest.approx(2 / 3, abs=1e-5)
    # order a, c | b: batch 1 pools I=3, U=6 -> 0.5 (2 cases), batch 2 empty -> 1 (1 case): (2*0.5 + 1)/3
    scores = reference_scores(reference_batches(["a", "c", "b"], counts, batch_size=2))
    assert scores.iou == pytest.approx(2 / 3, abs=1e-5)
    assert scores.f1 == pytest.approx((2 * (2 / 3) + 1) / 3, abs=1e-5)
    # one batch holding everything = global pooled IoU 3/6
    assert reference_scores(reference_batches(["a", "b", "c"], counts, batch_size=8)).iou == pytest.approx(
        0.5, abs=1e-5)


def test_reference_batch_weighting_uses_batch_sizes():
    rng = np.random.default_rng(0)
    counts, order = {}, []
    for i in range(19):  # 8 + 8 + 3 cases: the last batch must weigh 3/19
        pred, gt = rng.random((16, 16)) > 0.5, rng.random((16, 16)) > 0.4
        counts[f"c{i}"] = case_counts(pred, gt)
        order.append(f"c{i}")
    batches = reference_batches(order, counts)
    assert [len(b.cases) for b in batches] == [8, 8, 3]
    expected = []
    for chunk in (order[:8], order[8:16], order[16:]):
        inter = sum(counts[c].intersection for c in chunk)
        union = sum(counts[c].union for c in chunk)
        expected.append((inter + METRIC_SMOOTH) / (union + METRIC_SMOOTH))
    assert reference_scores(batches).iou == pytest.approx((8 * expected[0] + 8 * expected[1] + 3 * expected[2]) / 19)


def test_f1_from_iou_equals_dice_of_the_same_pixels():
    rng = np.random.default_rng(1)
    pred, gt = rng.random((32, 32)) > 0.5, rng.random((32, 32)) > 0.5
    c = case_counts(pred, gt)
    dice = 2 * c.intersection / (c.predicted + c.target)
    assert f1_from_iou(c.intersection / c.union) == pytest.approx(dice)
    assert iou_from_counts(3, 4, smooth=0) == 0.75


def test_binarize_accepts_01_and_0255_rejects_others():
    assert binarize(np.array([[0, 1]], np.uint8)).tolist() == [[False, True]]
    assert binarize(np.array([[0, 255]], np.uint8)).tolist() == [[False, True]]
    assert binarize(np.zeros((2, 2), np.uint8)).sum() == 0
    with pytest.raises(NonBinaryMaskError, match="pred.png.*0, 1, 2"):
        binarize(np.array([[0, 1, 2]]), what="pred.png")
    with pytest.raises(NonBinaryMaskError, match="128"):
        binarize(np.array([[0, 128, 255]]))  # soft edge


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="case_7.*shape"):
        case_counts(np.zeros((4, 4), bool), np.zeros((4, 5), bool), what="case_7")


def test_mean_std_over_seeds():
    mean, std = mean_std([60.0, 64.0, 68.0])
    assert mean == 64.0 and std == pytest.approx(np.sqrt(32 / 3))
    assert mean_std([60.0, 64.0, 68.0], ddof=1)[1] == pytest.approx(4.0)
    assert mean_std([5.0]) == (5.0, 0.0)
