"""The paper's settings in one place ("Fully Kolmogorov-Arnold Deep Model in Medical Image Segmentation").

Conversion, training, evaluation and the networks import these; nothing else in the project repeats them.
Pure constants (no torch, no nnU-Net), so every layer of the project may import this module.
Where a value comes from the reference U-KAN code rather than the paper's text, the comment says so.
"""
from __future__ import annotations

# --- data split (Sec. 4.1; reference U-KAN script: train_test_split(sorted names, test_size=0.2, random_state)) ---
SPLIT_SEEDS: tuple[int, ...] = (2981, 6142, 1187)  # fold 0, 1, 2
TEST_SIZE: float = 0.2
# Written next to nnU-Net's own splits_final.json, which stays untouched for nnU-Net's trainers.
SPLITS_FILE_NAME: str = "splits_allukan_paper.json"

# --- training protocol (Sec. 4.1 and the reference U-KAN training script) ---
BATCH_SIZE: int = 8
NUM_EPOCHS: int = 400
INITIAL_LR: float = 1e-4
MIN_LR: float = 1e-5  # cosine annealing floor
WEIGHT_DECAY: float = 1e-4
BCE_WEIGHT: float = 0.5  # loss = 0.5 * BCE + (1 - Dice)
DICE_SMOOTH: float = 1e-5
# Reference script: lr of the parameters whose name contains 'layer' and 'fc' (its --kan_lr).
KAN_FC_LR: float = 1e-2
# Square input side per dataset (Sec. 4.1: BUSI and CVC-ClinicDB at 256x256, GlaS at 512x512).
INPUT_SIZES: dict[str, int] = {"busi": 256, "cvc": 256, "glas": 512}

# --- network (Sec. 3.3; reference U-KAN defaults) ---
EMBED_DIMS: tuple[int, int, int] = (128, 160, 256)
NUM_DOWNSAMPLINGS: int = 5  # three max-pools + two stride-2 patch embeddings
DIVISOR: int = 2 ** NUM_DOWNSAMPLINGS  # spatial sides of U-KAN / ALL U-KAN inputs are multiples of 32
# The spline grid of every KA / KAN layer: grid_size intervals on grid_range, B-splines of order spline_order
# (grid_size + spline_order bases).
GRID_SIZE: int = 5
SPLINE_ORDER: int = 3
GRID_RANGE: tuple[float, float] = (-1.0, 1.0)
CHUNK_SIZE: int = 32  # Table 3: the chunk size of the chunk-wise computation at 256x256

# --- evaluation (reference U-KAN code) ---
METRIC_THRESHOLD: float = 0.5  # prediction > 0.5 and target > 0.5 (masks scaled to [0, 1])
METRIC_SMOOTH: float = 1e-5  # iou_score's smoothing: an empty prediction on an empty target scores 1
# The validation batch size of the reference protocol is the training BATCH_SIZE (the reference loader's).

# --- the paper's numbers ---
# Table 1: IoU / F1 in percent, (mean, std) over the three seeds, batch-pooled reference protocol.
TABLE1: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "U-Net": {"BUSI": {"iou": (57.22, 4.74), "f1": (71.91, 3.54)}, "GlaS": {"iou": (86.66, 0.91), "f1": (92.79, 0.56)},
              "CVC": {"iou": (83.79, 0.77), "f1": (91.06, 0.47)}},
    "Att-Unet": {"BUSI": {"iou": (55.18, 3.61), "f1": (70.22, 2.88)}, "GlaS": {"iou": (86.84, 1.19), "f1": (92.89, 0.65)},
                 "CVC": {"iou": (84.52, 0.51), "f1": (91.46, 0.25)}},
    "U-Net++": {"BUSI": {"iou": (57.41, 4.77), "f1": (72.11, 3.90)}, "GlaS": {"iou": (87.07, 0.76), "f1": (92.96, 0.44)},
                "CVC": {"iou": (86.11, 1.47), "f1": (91.53, 0.88)}},
    "U-NeXt": {"BUSI": {"iou": (59.06, 1.03), "f1": (73.08, 1.32)}, "GlaS": {"iou": (84.51, 0.37), "f1": (91.55, 0.23)},
               "CVC": {"iou": (74.83, 2.44), "f1": (85.36, 0.17)}},
    "Rolling-UNet": {"BUSI": {"iou": (61.00, 0.64), "f1": (74.67, 1.24)},
                     "GlaS": {"iou": (86.42, 0.96), "f1": (92.63, 0.62)},
                     "CVC": {"iou": (82.87, 1.42), "f1": (90.48, 0.83)}},
    "U-Mamba": {"BUSI": {"iou": (61.81, 3.24), "f1": (75.55, 3.01)}, "GlaS": {"iou": (87.01, 0.39), "f1": (93.02, 0.24)},
                "CVC": {"iou": (84.79, 0.58), "f1": (91.63, 0.39)}},
    "U-KAN": {"BUSI": {"iou": (63.38, 2.83), "f1": (76.40, 2.90)}, "GlaS": {"iou": (87.64, 0.32), "f1": (93.37, 0.16)},
              "CVC": {"iou": (85.05, 0.53), "f1": (91.88, 0.29)}},
    "ALL U-KAN": {"BUSI": {"iou": (66.14, 5.43), "f1": (78.64, 5.33)},
                  "GlaS": {"iou": (88.72, 0.23), "f1": (94.00, 0.07)},
                  "CVC": {"iou": (85.37, 0.06), "f1": (91.98, 0.02)}},
}

# Table 2 (BUSI, seed 2981 = fold 0): IoU / F1 in percent of the trained networks.
TABLE2_BUSI_SEED2981: dict[str, dict[str, float]] = {
    "U-KAN_MLP": {"iou": 63.49, "f1": 77.07},
    "U-KAN": {"iou": 65.26, "f1": 78.75},
    "ALL U-KAN": {"iou": 69.43, "f1": 81.82},
}

# Table 2: parameters in millions per ablation row (4 = U-KAN_MLP ... 13 = ALL U-KAN).
TABLE2_PARAMS_MILLIONS: dict[int, float] = {4: 2.76, 5: 6.35, 6: 2.78, 7: 6.35, 8: 2.78, 9: 30.34, 10: 30.34,
                                            11: 3.17, 12: 3.21, 13: 3.17}

# Sec. 4.4: GPU memory in GB at batch 1 (at batch 8 rows 9 and 11 need "much more than 24 GB").
BATCH1_GPU_MEMORY_GB: dict[int, float] = {9: 12.19, 10: 10.48, 13: 0.597}

# Table 3 (BUSI, batch 8, 256x256): GPU memory in GB and time per step in s; ALL U-KAN ("Ours") per chunk size.
TABLE3: dict[str, tuple[float, float]] = {
    "U-KAN_MLP": (2.49, 0.24), "U-KAN": (2.52, 0.27), "ALL U-KAN chunk 8": (3.82, 2.27),
    "ALL U-KAN chunk 32": (4.44, 1.37), "ALL U-KAN chunk 64": (6.20, 1.22), "ALL U-KAN chunk 512": (12.59, 1.14)}
