"""Clusters: SLURM job scripts and submission, and the doctor that checks a node before a multi-node launch.

May import every stage (a SLURM job runs training or prediction) and the shared modules. Nothing imports it but
the CLI registrar and the ``python -m tl.doctor`` program.
"""
