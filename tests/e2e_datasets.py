"""The synthetic datasets of the end-to-end tests, written into one nnUNet_raw and planned by one
``nnUNetv2_plan_and_preprocess`` call (the session fixture ``nnunet_datasets`` in conftest.py).

- ``DISC``: 2D RGB PNGs, one bright disc per image on a dark, noisy background (trivially easy), labels 0/1, with
  a test set (imagesTs / labelsTs): training, --c, --val, prediction accuracy, find_best_configuration.
- ``BUSI``: a synthetic BUSI source in the distributed layout, converted by ``nnUNetv2_convert_allukan_dataset``
  (paper split names recorded in dataset.json): the evaluation commands on real nnU-Net output.
- ``SPHERES``: NIfTI volumes of 16 x 32 x 32 voxels at an anisotropic 2 x 1 x 1 mm spacing, two input channels,
  two foreground labels (a sphere and a box), with a test set: the 3D trainers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from nnunet_commands import run_command

DISC_ID, DISC_NAME = 987, "Dataset987_AllUKANDiscs"
DISC_TRAIN_CASES = 40  # fold 0: 32 training (4 iterations of 8 per epoch), 8 validation cases
DISC_TEST_CASES = 6
DISC_SIZE = 64

BUSI_ID, BUSI_NAME = 601, "Dataset601_BUSI"

SPHERES_ID, SPHERES_NAME = 988, "Dataset988_KASpheres3D"
SPHERES_TRAIN_CASES = 8
SPHERES_TEST_CASES = 2
SPHERES_SHAPE = (16, 32, 32)  # z, y, x voxels
SPHERES_SPACING = (2.0, 1.0, 1.0)  # z, y, x in mm: anisotropic, so the planner pools z later than x and y


def write_disc_dataset(raw_folder: Path, seed: int = 0) -> Path:
    """nnU-Net raw dataset: RGB PNG images, labels 0/1 (one disc per image), plus imagesTs / labelsTs."""
    rng = np.random.default_rng(seed)
    folder = raw_folder / DISC_NAME
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    size = DISC_SIZE
    yy, xx = np.mgrid[:size, :size]
    for i in range(DISC_TRAIN_CASES + DISC_TEST_CASES):
        cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
        radius = rng.uniform(0.12 * size, 0.25 * size)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        image = rng.normal(40.0, 10.0, (size, size, 3))
        image[disc] = rng.normal([200.0, 120.0, 60.0], 10.0, (int(disc.sum()), 3))
        images, labels = ("imagesTr", "labelsTr") if i < DISC_TRAIN_CASES else ("imagesTs", "labelsTs")
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / images / f"disc_{i:03d}_0000.png")
        Image.fromarray(disc.astype(np.uint8)).save(folder / labels / f"disc_{i:03d}.png")
    dataset_json = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "disc": 1},
                    "numTraining": DISC_TRAIN_CASES, "file_ending": ".png"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    return folder


def convert_synthetic_busi(root: Path, env: dict) -> None:
    """A small synthetic BUSI source (8 benign, 6 malignant) converted to nnU-Net raw by the project's command."""
    from nnunet_allukan.synthetic import make_synthetic_busi

    source = make_synthetic_busi(root / "busi_source", n_benign=8, n_malignant=6, n_normal=0, seed=1)
    run_command(["nnUNetv2_convert_allukan_dataset", "busi", str(source), "-d", str(BUSI_ID), "--size", "64"], env,
                timeout=900)


def _write_volume(array: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(SPHERES_SPACING)))  # SimpleITK spacing is x, y, z
    sitk.WriteImage(image, str(path))


def write_sphere_dataset(raw_folder: Path, seed: int = 0) -> Path:
    """Two channels (0: sphere bright, 1: box bright), labels 0 background, 1 sphere, 2 box."""
    rng = np.random.default_rng(seed)
    folder = raw_folder / SPHERES_NAME
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(SPHERES_SHAPE, SPHERES_SPACING)), indexing="ij")
    for i in range(SPHERES_TRAIN_CASES + SPHERES_TEST_CASES):
        centre = rng.uniform(10, 22, 3)
        radius = rng.uniform(5, 8)
        sphere = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2
        corner = rng.integers(2, 8, 3)
        box = np.zeros(SPHERES_SHAPE, bool)
        box[corner[0]: corner[0] + 3, corner[1]: corner[1] + 6, corner[2]: corner[2] + 6] = True
        box &= ~sphere
        label = np.where(sphere, 1, np.where(box, 2, 0)).astype(np.uint8)
        images, labels = ("imagesTr", "labelsTr") if i < SPHERES_TRAIN_CASES else ("imagesTs", "labelsTs")
        for channel, structure in enumerate((sphere, box)):
            volume = rng.normal(0.0, 0.3, SPHERES_SHAPE) + 2.0 * structure
            _write_volume(volume.astype(np.float32), folder / images / f"sph_{i:03d}_{channel:04d}.nii.gz")
        _write_volume(label, folder / labels / f"sph_{i:03d}.nii.gz")
    dataset_json = {"channel_names": {"0": "MR_A", "1": "MR_B"},
                    "labels": {"background": 0, "sphere": 1, "box": 2},
                    "numTraining": SPHERES_TRAIN_CASES, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    return folder


def write_and_preprocess_all(root: Path, env: dict) -> None:
    """All three datasets, planned and preprocessed by one nnUNetv2_plan_and_preprocess call (2d for the PNG
    datasets, 3d_fullres for the volumes; nnU-Net skips a configuration a dataset's plans do not have)."""
    raw = Path(env["nnUNet_raw"])
    write_disc_dataset(raw)
    write_sphere_dataset(raw)
    convert_synthetic_busi(root, env)
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0.
    run_command(["nnUNetv2_plan_and_preprocess", "-d", str(DISC_ID), str(BUSI_ID), str(SPHERES_ID),
                 "-c", "2d", "3d_fullres", "--verify_dataset_integrity", "-np", "2", "2", "-npfp", "2"],
                env | {"nnUNet_n_proc_DA": "2"}, timeout=1800)
