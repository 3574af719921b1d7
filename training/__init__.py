"""Splat Restore training: synthetic Gaussian-splat degradation, paired datasets, fine-tuning, evaluation."""
