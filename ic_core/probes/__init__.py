"""Recoverability probes: nested CV, baselines, scores from arrays, saved probes, reports."""
