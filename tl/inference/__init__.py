"""Inference: a model rebuilt from its checkpoint alone, predict / predict-dir (its file list, shards and their
merge, the CSV and Parquet outputs, crash recovery), evaluation and calibration.

May import: data, models and the shared modules. Never training, cluster or viz.
"""
