"""Training: the recipe (run.py) in the order it runs, the per-batch loop, fine-tuning strategies, optimisation,
state and resume, the linear-probe feature cache, run reports, and the train / reproduce commands.

May import: data, models, inference (calibration after training) and the shared modules. Never cluster or viz.
"""
