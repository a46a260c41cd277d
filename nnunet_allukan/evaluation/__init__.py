"""The paper's evaluation: IoU / F1 under the reference (batch-pooled) and per-image protocols across the seeds,
tables in the layout of paper Table 1 with the paper's numbers, learned-activation plots and Fig. 5-style overlays.

The metric code (``metrics``) is pure numpy; ``collect`` reads nnU-Net result folders; ``tables`` holds the paper's
numbers and writes Markdown / CSV / JSON; ``activations`` and ``overlays`` draw PNGs with matplotlib (Agg).
The console commands over these are in :mod:`nnunet_allukan.commands.evaluation`.
"""
from nnunet_allukan.evaluation.metrics import (
    CaseCounts, NonBinaryMaskError, binarize, case_counts, f1_from_iou, iou_from_counts, mean_std,
    per_image_scores, reference_batches, reference_scores)

__all__ = ["CaseCounts", "NonBinaryMaskError", "binarize", "case_counts", "f1_from_iou", "iou_from_counts",
           "mean_std", "per_image_scores", "reference_batches", "reference_scores"]
