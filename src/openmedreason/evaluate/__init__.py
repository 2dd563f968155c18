"""Evaluation: model runners, PKR judging, pairwise preference, results and reports."""
