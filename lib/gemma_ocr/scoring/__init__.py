"""Scoring: metrics, bootstrap intervals, slices, results documents, degenerate answers, paired comparison."""
