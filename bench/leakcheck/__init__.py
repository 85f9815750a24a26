"""Positive and negative leak controls on the real builds, at the main command's per-cell budget (issue 25)."""
