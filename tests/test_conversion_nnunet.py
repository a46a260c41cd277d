"""nnU-Net accepts a converted dataset (extra dataset.json keys included):
``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` on the BUSI samples (synthetic BUSI where
../shared is absent). One run for the module: it takes 1-2 minutes on 2 cores."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_conversion.cli import convert_dataset
from nnunet_allukan.synthetic import make_synthetic_busi

SAMPLES_BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "BUSI"
DATASET_ID = 601


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    source = SAMPLES_BUSI if SAMPLES_BUSI.is_dir() else make_synthetic_busi(root / "download", 5, 4, 1, seed=7)
    result = convert_dataset("busi", source, dataset_id=DATASET_ID, raw_folder=root / "raw", num_processes=1)
    command = shutil.which("nnUNetv2_plan_and_preprocess", path=str(Path(sys.executable).parent)) or \
        shutil.which("nnUNetv2_plan_and_preprocess")
    if command is None:
        pytest.skip("nnUNetv2_plan_and_preprocess is not installed")
    env = {
        **os.environ,
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_def_n_proc": "2",
        # 0 would break planning: nnU-Net 2.8.1 calls torch.set_num_threads(nnUNet_n_proc_DA)
        "nnUNet_n_proc_DA": "2",
    }
    env.pop("nnUNet_compile", None)
    done = subprocess.run(
        [command, "-d", str(DATASET_ID), "--verify_dataset_integrity", "-c", "2d", "-npfp", "2", "-np", "2"],
        env=env, capture_output=True, text=True, timeout=1200,
    )
    return result, done, root / "preprocessed" / result.dataset_folder.name


@pytest.mark.slow
def test_verify_dataset_integrity_and_preprocessing_pass(planned):
    result, done, _ = planned
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "verify_dataset_integrity Done" in done.stdout
    assert "NaturalImage2DIO" in done.stdout


@pytest.mark.slow
def test_preprocessed_cases_are_the_split_case_ids(planned):
    result, done, preprocessed = planned
    assert done.returncode == 0
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    assert dataset_json["original_ids"] == json.loads((result.dataset_folder / "dataset.json").read_text())["original_ids"]
    identifiers = sorted(p.name[: -len(".pkl")] for p in (preprocessed / "nnUNetPlans_2d").glob("*.pkl"))
    assert identifiers == sorted(dataset_json["original_ids"])
    # paper_splits.json is directly usable as nnU-Net's splits_final.json: every fold covers exactly these ids
    for split in json.loads((result.dataset_folder / "paper_splits.json").read_text()):
        assert sorted(split["train"] + split["val"]) == identifiers
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert "2d" in plans["configurations"]
