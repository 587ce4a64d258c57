"""Evaluation: the paper's metrics (accuracy, MPCA, mAP@k with Hamming ranking)."""
