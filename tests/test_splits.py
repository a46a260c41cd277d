"""The paper's seeded 80/20 splits (nnunet_allukan.splits) against scikit-learn called directly."""

import pytest
from sklearn.model_selection import train_test_split

from nnunet_allukan.paper import SPLIT_SEEDS
from nnunet_allukan.splits import paper_splits


def _busi_like_ids() -> dict[str, str]:
    ids = {f"benign_{i:04d}": f"benign ({i})" for i in range(1, 438)}
    ids.update({f"malignant_{i:04d}": f"malignant ({i})" for i in range(1, 211)})
    return ids


def test_seeds_are_the_papers():
    assert SPLIT_SEEDS == (2981, 6142, 1187)


def test_splits_equal_sklearn_on_sorted_original_names():
    original_ids = _busi_like_ids()
    splits = paper_splits(original_ids)
    assert len(splits) == 3
    stems = sorted(original_ids.values())
    assert stems[:3] == ["benign (1)", "benign (10)", "benign (100)"]  # string order, as the reference's glob
    stem_of = original_ids
    for split, seed in zip(splits, (2981, 6142, 1187)):
        train, val = train_test_split(stems, test_size=0.2, random_state=seed)
        assert [stem_of[c] for c in split["train"]] == train
        assert [stem_of[c] for c in split["val"]] == val  # same order as train_test_split's output
        assert len(split["val"]) == 130 and len(split["train"]) == 517  # 647 cases, 20 % held out
        assert set(split["train"]).isdisjoint(split["val"])
        assert set(split["train"]) | set(split["val"]) == set(original_ids)
    assert splits[0]["val"] != splits[1]["val"] != splits[2]["val"]


def test_splits_do_not_depend_on_case_id_order():
    original_ids = _busi_like_ids()
    shuffled = dict(reversed(list(original_ids.items())))
    assert paper_splits(shuffled) == paper_splits(original_ids)


def test_duplicate_original_names_rejected():
    with pytest.raises(ValueError, match="benign \\(1\\)"):
        paper_splits({"a": "benign (1)", "b": "benign (1)", "c": "benign (2)"})


def test_too_few_cases_rejected():
    with pytest.raises(ValueError, match="at least 2"):
        paper_splits({"a": "x"})
