"""nnUNetv2_allukan_evaluate on synthetic nnU-Net result trees: values, tables, paper numbers, clear errors."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_allukan.commands.evaluation import evaluate_main
from nnunet_allukan.evaluation.collect import EvaluationError
from nnunet_allukan.evaluation.evaluate import evaluate_folders, evaluate_nnunet
from nnunet_allukan.evaluation.tables import paper_dataset_key, paper_method_for

DATASET = "Dataset601_BUSI"
TRAINERS = ("nnUNetTrainerAllUKAN", "nnUNetTrainer")
CASES = [f"benign_{i:03d}" for i in range(15)]
# validation lists in a non-sorted ("train_test_split output") order, 5 cases each
SPLITS = [{"train": [c for c in CASES if c not in val], "val": val} for val in
          (["benign_007", "benign_002", "benign_011", "benign_000", "benign_013"],
           ["benign_004", "benign_014", "benign_001", "benign_009", "benign_006"],
           ["benign_010", "benign_003", "benign_012", "benign_005", "benign_008"])]


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def make_tree(root: Path, seed: int = 0) -> dict:
    """$nnUNet_raw/preprocessed/results of a 15-case binary dataset with 2 trainers x 3 folds. Returns the masks."""
    rng = np.random.default_rng(seed)
    raw, pre, res = root / "raw" / DATASET, root / "preprocessed" / DATASET, root / "results" / DATASET
    gt, preds = {}, {}
    for case in CASES:
        mask = np.zeros((32, 32), np.uint8)
        r, c, s = rng.integers(2, 14), rng.integers(2, 14), rng.integers(4, 16)
        mask[r:r + s, c:c + s] = 1
        if case == "benign_005":
            mask[:] = 0  # an empty target
        gt[case] = mask
        save_png(pre / "gt_segmentations" / f"{case}.png", mask)
        save_png(raw / "imagesTr" / f"{case}_0000.png", rng.integers(0, 255, (32, 32, 3)))
    for name in (pre, raw):
        (name / "dataset.json").write_text(json.dumps({"file_ending": ".png", "labels": {"background": 0, "x": 1}}))
    (pre / "splits_final.json").write_text(json.dumps(SPLITS))  # the paper's splits, copied for nnUNetTrainer
    allukan_model = res / f"{TRAINERS[0]}__nnUNetPlans__2d"
    allukan_model.mkdir(parents=True)
    (allukan_model / "splits_allukan_paper.json").write_text(json.dumps(SPLITS))
    for t, trainer in enumerate(TRAINERS):
        for fold, split in enumerate(SPLITS):
            folder = res / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"
            for case in split["val"]:
                pred = np.roll(gt[case], shift=t + 1 + fold, axis=1)  # shifted masks: different overlaps
                if case == "benign_008" and t == 0:
                    pred[0, 0] = 1  # a stray false-positive pixel
                preds[(trainer, case)] = pred
                save_png(folder / "validation" / f"{case}.png", pred)
            (folder / "progress.png").write_bytes(b"")
    return {"gt": gt, "pred": preds}


@pytest.fixture
def tree(tmp_path, monkeypatch):
    masks = make_tree(tmp_path)
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{name}", str(tmp_path / name))
    return tmp_path, masks


def direct_scores(masks, trainer, val, batch=8):
    """Independent re-computation of both protocols straight from the arrays."""
    inters, unions, ious, dices = [], [], [], []
    for case in val:
        p, g = masks["pred"][(trainer, case)] > 0, masks["gt"][case] > 0
        i, u = np.sum(p & g), np.sum(p | g)
        inters.append(i), unions.append(u)
        ious.append((i + 1e-5) / (u + 1e-5)), dices.append((2 * i + 1e-5) / (p.sum() + g.sum() + 1e-5))
    ref_iou = ref_f1 = 0.0
    for s in range(0, len(val), batch):
        b = (sum(inters[s:s + batch]) + 1e-5) / (sum(unions[s:s + batch]) + 1e-5)
        n = len(val[s:s + batch])
        ref_iou += n * b / len(val)
        ref_f1 += n * (2 * b / (1 + b)) / len(val)
    return 100 * np.mean(ious), 100 * np.mean(dices), 100 * ref_iou, 100 * ref_f1


def test_values_both_protocols_and_orders(tree):
    _, masks = tree
    results = evaluate_nnunet(["601"], TRAINERS, batch_size=2)
    data = results["datasets"][DATASET]
    assert data["paper_dataset"] == "BUSI"
    for trainer in TRAINERS:
        for fold, split in enumerate(SPLITS):
            scores = data["methods"][trainer]["folds"][str(fold)]
            pi_iou, pi_f1, ref_iou, ref_f1 = direct_scores(masks, trainer, split["val"], batch=2)
            assert scores["batch_order"] == "split"
            assert scores["per_image"]["iou"] == pytest.approx(pi_iou)
            assert scores["per_image"]["f1"] == pytest.approx(pi_f1)
            assert scores["reference"]["iou"] == pytest.approx(ref_iou)
            assert scores["reference"]["f1"] == pytest.approx(ref_f1)
            assert [b["cases"] for b in scores["reference"]["batches"]][0] == split["val"][:2]
        summary = data["methods"][trainer]["summary"]["reference"]["iou"]
        folds = [data["methods"][trainer]["folds"][str(f)]["reference"]["iou"] for f in range(3)]
        assert summary["mean"] == pytest.approx(np.mean(folds)) and summary["std"] == pytest.approx(np.std(folds))
    # the sorted order gives other batches, hence (here) other reference values; per-image is order-free
    sorted_results = evaluate_nnunet(["601"], TRAINERS, batch_size=2, order="sorted")
    differs = 0
    for trainer in TRAINERS:
        for fold, split in enumerate(SPLITS):
            a = data["methods"][trainer]["folds"][str(fold)]
            b = sorted_results["datasets"][DATASET]["methods"][trainer]["folds"][str(fold)]
            assert b["batch_order"] == "sorted"
            assert b["reference"]["iou"] == pytest.approx(direct_scores(masks, trainer, sorted(split["val"]), 2)[2])
            assert a["per_image"] == pytest.approx(b["per_image"])
            differs += abs(a["reference"]["iou"] - b["reference"]["iou"]) > 1e-6
    assert differs > 0
    method = data["methods"]["nnUNetTrainerAllUKAN"]
    assert method["paper_method"] == "ALL U-KAN"
    assert method["paper"]["table1"] == {"iou": [66.14, 5.43], "f1": [78.64, 5.33]}
    assert method["paper"]["table2_seed2981_fold0"] == {"iou": 69.43, "f1": 81.82}
    assert data["methods"]["nnUNetTrainer"]["paper"]["table1"]["iou"] == [57.22, 4.74]


def test_command_writes_tables(tree, capsys):
    root, masks = tree
    evaluate_main(["-d", "601", "-tr", *TRAINERS])
    out = root / "results" / DATASET / "allukan_evaluation"
    assert sorted(p.name for p in out.iterdir()) == ["per_case.csv", "results.csv", "results.json", "results.md"]
    printed = capsys.readouterr().out
    assert str(out / "results.md") in printed
    markdown = (out / "results.md").read_text()
    assert "| ALL U-KAN (nnUNetTrainerAllUKAN) |" in markdown and "66.14 ± 5.43" in markdown
    assert "Reference protocol" in markdown and "Per-image protocol" in markdown
    assert "0 (seed 2981)" in markdown and "69.43 / 81.82" in markdown
    assert "progress.png" in markdown  # nnU-Net's training curves are referenced
    results = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 * 2 * 2  # methods x protocols x metrics
    row = next(r for r in rows if r["method"] == "nnUNetTrainerAllUKAN" and r["protocol"] == "reference"
               and r["metric"] == "iou")
    summary = results["datasets"][DATASET]["methods"]["nnUNetTrainerAllUKAN"]["summary"]["reference"]["iou"]
    assert float(row["mean"]) == pytest.approx(summary["mean"], abs=1e-4) and row["paper_mean"] == "66.14"
    per_case = list(csv.DictReader((out / "per_case.csv").open()))
    assert len(per_case) == 2 * 15
    empty = next(r for r in per_case if r["case"] == "benign_005" and r["method"] == "nnUNetTrainer")
    assert float(empty["iou"]) == pytest.approx(100.0)  # empty prediction of an empty target


def test_split_file_per_trainer(tree, capsys):
    root, _ = tree
    (root / "preprocessed" / DATASET / "splits_final.json").unlink()
    data = evaluate_nnunet(["601"], TRAINERS)["datasets"][DATASET]["methods"]
    assert data["nnUNetTrainerAllUKAN"]["folds"]["1"]["batch_order"] == "split"
    assert data["nnUNetTrainerAllUKAN"]["folds"]["1"]["splits_file"].endswith("splits_allukan_paper.json")
    assert data["nnUNetTrainer"]["folds"]["1"]["batch_order"] == "sorted"  # no split file for nnUNetTrainer
    # nnUNetTrainer trained on nnU-Net's own 5-fold split: its fold 0 holds other cases than ALL U-KAN's
    other = [{"train": [], "val": CASES[:5]}] * 5
    (root / "preprocessed" / DATASET / "splits_final.json").write_text(json.dumps(other))
    expect_failure(["-d", "601", "-tr", *TRAINERS, "-o", str(root / "out")], capsys, "trained on another split")
    assert not (root / "out").exists()


def test_folder_mode_and_case_set_checks(tree, tmp_path):
    root, _ = tree
    res = root / "results" / DATASET
    preds = [(t, [str(res / f"{t}__nnUNetPlans__2d" / f"fold_{f}" / "validation") for f in range(3)])
             for t in TRAINERS]
    labels = root / "preprocessed" / DATASET / "gt_segmentations"
    folder = evaluate_folders(preds, labels, dataset_label="my CVC run", batch_size=2)
    nnunet = evaluate_nnunet(["601"], TRAINERS, batch_size=2, order="sorted")
    a = folder["datasets"]["my CVC run"]["methods"]["nnUNetTrainer"]["folds"]["1"]
    b = nnunet["datasets"][DATASET]["methods"]["nnUNetTrainer"]["folds"]["1"]
    assert a["batch_order"] == "sorted" and a["reference"] == b["reference"]  # no splits file: sorted order
    assert folder["datasets"]["my CVC run"]["paper_dataset"] == "CVC"
    with_splits = evaluate_folders(preds, labels, splits_file=root / "preprocessed" / DATASET / "splits_final.json")
    assert with_splits["datasets"]["dataset"]["methods"]["nnUNetTrainer"]["folds"]["0"]["batch_order"] == "split"
    # methods validated on different cases in the same fold: error
    other = tmp_path / "other_fold0"
    other.mkdir()
    for case in CASES[:5]:
        save_png(other / f"{case}.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(EvaluationError, match="different cases"):
        evaluate_folders([preds[0], ("mine", [str(other)])], labels)


def expect_failure(argv, capsys, pattern):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(argv)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert pattern in err, err
    return err


def test_clear_errors_and_nothing_written(tree, capsys):
    root, _ = tree
    res = root / "results" / DATASET
    out = root / "out"
    args = ["-d", "601", "-tr", *TRAINERS, "-o", str(out)]
    fold2 = res / "nnUNetTrainer__nnUNetPlans__2d" / "fold_2"
    # missing fold
    fold2.rename(res / "moved")
    expect_failure(args, capsys, "fold_2: fold 2 of nnUNetTrainer is missing")
    (res / "moved").rename(fold2)
    # missing case
    victim = fold2 / "validation" / "benign_012.png"
    data = victim.read_bytes()
    victim.unlink()
    expect_failure(args, capsys, "have no prediction (e.g. benign_012)")
    # non-binary prediction
    save_png(victim, np.full((32, 32), 2, np.uint8))
    expect_failure(args, capsys, "benign_012.png is not binary")
    # mismatched shape
    save_png(victim, np.zeros((32, 31), np.uint8))
    expect_failure(args, capsys, "differs from the ground truth")
    # corrupt image
    victim.write_bytes(b"not a png")
    expect_failure(args, capsys, "benign_012.png: cannot be read as an image")
    victim.write_bytes(data)
    # a case from another split (e.g. nnU-Net's 5-fold split)
    save_png(fold2 / "validation" / "benign_000.png", np.zeros((32, 32), np.uint8))
    expect_failure(args, capsys, "trained on another split")
    (fold2 / "validation" / "benign_000.png").unlink()
    # missing ground truth, unknown trainer / dataset, bad fold
    gt = root / "preprocessed" / DATASET / "gt_segmentations" / "benign_003.png"
    gt.rename(root / "gt_moved.png")
    expect_failure(args, capsys, "ground truth of case benign_003 not found")
    (root / "gt_moved.png").rename(gt)
    expect_failure(["-d", "601", "-tr", "nnUNetTrainerNope", "-o", str(out)], capsys, "nnUNetTrainerNope__nnUNetPlans")
    expect_failure(["-d", "777", "-tr", *TRAINERS, "-o", str(out)], capsys, "Dataset777_*")
    expect_failure(args + ["-f", "3"], capsys, "has 3 splits, fold 3 was requested")
    expect_failure(["-o", str(out)], capsys, "give -d DATASET")
    assert not out.exists() and not list(root.glob(".out.tmp-*"))
    evaluate_main(args)  # everything restored: succeeds
    assert (out / "results.md").is_file() and not list(root.glob(".out.tmp-*"))


def test_nnunet_paths_follow_the_environment(tmp_path, monkeypatch):
    """The evaluation resolves datasets and model folders with nnU-Net's own functions, which read the folders
    from nnunetv2.paths. In nnU-Net 2.8 those read os.environ on every use, so a test's monkeypatch.setenv
    reaches them (nothing to patch in nnunetv2.paths). Should nnU-Net freeze them at import again, this fails
    first."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    (tmp_path / "raw" / "Dataset812_Probe").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert maybe_convert_to_dataset_name("812") == "Dataset812_Probe"
    assert get_output_folder(812, "T", "P", "2d", 1) == str(tmp_path / "results" / "Dataset812_Probe" / "T__P__2d"
                                                             / "fold_1")


def test_paper_name_mapping():
    assert paper_method_for("nnUNetTrainerAllUKAN") == "ALL U-KAN"
    assert paper_method_for("nnUNetTrainerAllUKAN_5epochs") == "ALL U-KAN"
    assert paper_method_for("nnUNetTrainerUKAN_MLP") == "U-KAN_MLP"
    assert paper_method_for("nnUNetTrainerUKAN") == "U-KAN"
    assert paper_method_for("nnUNetTrainer") == "U-Net"
    assert paper_method_for("nnUNetTrainerDA5") is None
    assert paper_dataset_key("Dataset603_CVCClinicDB") == "CVC"
    assert paper_dataset_key("Dataset602_GlaS") == "GlaS"
    assert paper_dataset_key("Dataset042_Other") is None
