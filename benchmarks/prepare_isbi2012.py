"""The ISBI 2012 EM segmentation training set as a small nnU-Net raw dataset, for learning checks on a real dataset
that none of the project's converters or shared data cover.

    python benchmarks/prepare_isbi2012.py FOLDER -d 620
    nnUNetv2_plan_and_preprocess -d 620 -c 2d
    cp $nnUNet_raw/Dataset620_ISBI2012EM/slice_splits.json $nnUNet_preprocessed/Dataset620_ISBI2012EM/splits_final.json

FOLDER holds the challenge's 30 training slices (512 x 512 serial-section transmission electron microscopy of the
Drosophila ventral nerve cord) either as distributed, ``train-volume.tif`` and ``train-labels.tif``, or in the
common PNG copy, ``image/N.png`` and ``label/N.png`` (N = 0..29). Labels: 0 on membranes, 255 inside cells; the
dataset segments the membranes (label 1).

Each slice is reduced to ``--size`` (default 256: images Lanczos; labels by the membrane fraction of each output
pixel, membrane where at least half of it was) and cut into ``--tile`` x ``--tile`` tiles (default 64: 16 per
slice, 480 cases named ``isbi_SS_TT``). Tiles of one slice must stay in one fold, and neighbouring sections look
alike, so ``slice_splits.json`` holds five folds of six consecutive slices each (fold k validates on slices
6k..6k+5); nnU-Net's own random split would put tiles of one slice on both sides. The dataset folder
(``$nnUNet_raw/DatasetID_ISBI2012EM``) is written complete or not at all; an existing one is never replaced.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json  # noqa: E402

from dataset_conversion.writer import dataset_folder_name  # noqa: E402
from nnunet_allukan.filesystem import make_fresh_folder, move_into_place, write_error_message  # noqa: E402

N_SLICES = 30
N_FOLDS = 5
NAME = "ISBI2012EM"


def read_slices(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 30 training images and labels as uint8 arrays (30, H, W), from the TIFF stacks or the PNG copy."""
    volume, labels = folder / "train-volume.tif", folder / "train-labels.tif"
    if volume.is_file() and labels.is_file():
        import tifffile
        images, masks = tifffile.imread(volume), tifffile.imread(labels)
    else:
        missing = [str(folder / sub / f"{i}.png") for sub in ("image", "label") for i in range(N_SLICES)
                   if not (folder / sub / f"{i}.png").is_file()]
        if missing:
            raise SystemExit(f"{folder}: neither train-volume.tif + train-labels.tif nor image/0..29.png + "
                             f"label/0..29.png (missing {missing[0]}{' and more' if len(missing) > 1 else ''}). "
                             f"Point FOLDER at the folder that holds them.")
        images = np.stack([np.asarray(Image.open(folder / "image" / f"{i}.png").convert("L")) for i in range(N_SLICES)])
        masks = np.stack([np.asarray(Image.open(folder / "label" / f"{i}.png").convert("L")) for i in range(N_SLICES)])
    if images.shape != masks.shape or images.ndim != 3 or images.shape[0] != N_SLICES:
        raise SystemExit(f"{folder}: expected {N_SLICES} images and labels of one size, got {images.shape} and "
                         f"{masks.shape}")
    return images, masks


def reduce(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image resized with Lanczos; label 1 where at least half of the output pixel was membrane (< 128)."""
    small = np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))
    membrane = Image.fromarray((mask < 128).astype(np.float32))
    fraction = np.asarray(membrane.resize((size, size), Image.BOX))
    return small, (fraction >= 0.5).astype(np.uint8)


def write_dataset(target: Path, images: np.ndarray, masks: np.ndarray, size: int, tile: int) -> int:
    (target / "imagesTr").mkdir()
    (target / "labelsTr").mkdir()
    per_side = size // tile
    cases_of_slice: list[list[str]] = []
    for s in range(N_SLICES):
        image, label = reduce(images[s], masks[s], size)
        names = []
        for t in range(per_side * per_side):
            r, c = divmod(t, per_side)
            window = (slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
            case = f"isbi_{s:02d}_{t:02d}"
            Image.fromarray(image[window]).save(target / "imagesTr" / f"{case}_0000.png")
            Image.fromarray(label[window]).save(target / "labelsTr" / f"{case}.png")
            names.append(case)
        cases_of_slice.append(names)
        print(f"\rslice {s + 1}/{N_SLICES}", end="", flush=True)
    print()
    n_cases = N_SLICES * per_side * per_side
    generate_dataset_json(str(target), channel_names={0: "EM"}, labels={"background": 0, "membrane": 1},
                          num_training_cases=n_cases, file_ending=".png", dataset_name=NAME,
                          description=f"ISBI 2012 EM segmentation training slices, {size}x{size}, tiles of "
                                      f"{tile}x{tile}; use slice_splits.json as splits_final.json (folds of "
                                      f"consecutive slices)",
                          reference="ISBI 2012 challenge on segmentation of neuronal structures in EM stacks "
                                    "(Arganda-Carreras et al., Front. Neuroanat. 2015)",
                          license="the challenge organisers' terms for the training data (see its distribution)",
                          converted_by="benchmarks/prepare_isbi2012.py (nnunet-allukan)")
    per_fold = N_SLICES // N_FOLDS
    splits = []
    for k in range(N_FOLDS):
        val_slices = range(k * per_fold, (k + 1) * per_fold)
        splits.append({"train": [c for s in range(N_SLICES) if s not in val_slices for c in cases_of_slice[s]],
                       "val": [c for s in val_slices for c in cases_of_slice[s]]})
    (target / "slice_splits.json").write_text(json.dumps(splits, indent=2))
    return n_cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="train-volume.tif + train-labels.tif, or image/ + label/ PNGs")
    parser.add_argument("-d", dest="dataset_id", type=int, default=620, help="nnU-Net dataset id (default 620)")
    parser.add_argument("--size", type=int, default=256, help="slices resized to SIZE x SIZE (default 256)")
    parser.add_argument("--tile", type=int, default=64, help="tiles of TILE x TILE (default 64)")
    args = parser.parse_args(argv)
    if args.size % args.tile:
        parser.error(f"--size {args.size} is not a multiple of --tile {args.tile}")
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise SystemExit("nnUNet_raw is not set: set it to the folder of nnU-Net's raw datasets")
    target = Path(raw) / dataset_folder_name(args.dataset_id, NAME)
    if target.exists():
        raise SystemExit(f"{target} exists; nothing was changed. Remove it, or pick another id with -d.")
    images, masks = read_slices(args.folder)
    try:
        Path(raw).mkdir(parents=True, exist_ok=True)
        temporary = make_fresh_folder(Path(raw), f".{target.name}_")
    except OSError as error:
        raise SystemExit(write_error_message(error, Path(raw), "nnUNet_raw")) from None
    try:
        n_cases = write_dataset(temporary, images, masks, args.size, args.tile)
        move_into_place(temporary, target)
    except OSError as error:
        raise SystemExit(write_error_message(error, Path(raw), "nnUNet_raw")) from None
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
    print(f"Wrote {target}: {n_cases} cases (imagesTr/, labelsTr/, dataset.json, slice_splits.json). After "
          f"nnUNetv2_plan_and_preprocess, copy slice_splits.json to "
          f"$nnUNet_preprocessed/{target.name}/splits_final.json.")


if __name__ == "__main__":
    main()
