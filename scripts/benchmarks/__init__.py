"""The benchmarks of ``scripts/bench.py``, one module per subcommand (its flags, ``HELP`` and ``run(args) -> dict``),
``per_image_loop.py`` (a tutorial's prediction script, run as a program) and ``common.py`` (shared helpers).

May import: tl, and ``common`` from the bench modules. ``common`` imports no other bench module; nothing imports ``bench.py``.
"""
