"""The paper's three seeded 80/20 splits, in nnU-Net's ``splits_final.json`` format.

The reference U-KAN code splits ``sorted(image basenames without extension)`` with
``sklearn.model_selection.train_test_split(ids, test_size=0.2, random_state=seed)`` for the seeds
2981, 6142 and 1187 (one training run per seed). Computing the split on the *original* image names,
and only then mapping them to this project's case ids, makes fold k of the trainer hold out exactly
the images the reference code held out for seed k.

Pure (scikit-learn + stdlib + the constants of nnunet_allukan.paper): the converter and the trainers call
this one function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sklearn.model_selection import train_test_split

from nnunet_allukan.paper import SPLIT_SEEDS, TEST_SIZE


def paper_splits(
    original_ids: Mapping[str, str], seeds: Sequence[int] = SPLIT_SEEDS, test_size: float = TEST_SIZE
) -> list[dict[str, list[str]]]:
    """Split like the reference code, one split per seed.

    Args:
        original_ids: ``{case_id: original_image_stem}`` as stored in ``dataset.json["original_ids"]``
            (e.g. ``{"benign_0001": "benign (1)"}``). The stems must be unique.
        seeds: ``random_state`` of each split; split k is fold k.
        test_size: held-out fraction (0.2 in the paper).

    Returns:
        ``[{"train": [case ids], "val": [case ids]}, ...]`` (one dict per seed), each list in
        ``train_test_split``'s output order, i.e. the format of nnU-Net's ``splits_final.json``.
    """
    stem_to_case: dict[str, str] = {}
    for case_id, stem in original_ids.items():
        if stem in stem_to_case:
            raise ValueError(
                f"original image name {stem!r} is used by two cases ({stem_to_case[stem]!r} and {case_id!r}); "
                "the paper's split needs unique original names"
            )
        stem_to_case[stem] = case_id
    if len(stem_to_case) < 2:
        raise ValueError(f"need at least 2 cases to split, got {len(stem_to_case)}")
    stems = sorted(stem_to_case)
    splits = []
    for seed in seeds:
        train_stems, val_stems = train_test_split(stems, test_size=test_size, random_state=int(seed))
        splits.append(
            {"train": [stem_to_case[s] for s in train_stems], "val": [stem_to_case[s] for s in val_stems]}
        )
    return splits
