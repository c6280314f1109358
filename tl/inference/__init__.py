"""Inference: a model rebuilt from its checkpoint alone, predict / predict-dir (the CSV, crash recovery),
evaluation and calibration.

May import: data, models and the shared modules. Never training, cluster or viz.
"""
