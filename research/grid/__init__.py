"""Comparison grids: methods × hyperparameters × seeds, content-addressed, resumable, local or on SLURM.

    spec.py      grid files and their expansion into runs (``load_grid``)
    runner.py    checking, skipping, running and recording a grid (``run_grid``)
    local.py     the local executor: long-lived worker processes
    slurm.py     the SLURM executor, through submitit
    execute.py   one run inside a worker or a SLURM job
    progress.py  the grid's progress display
    results.py   the closing table of mean ± std over seeds

Kept free of imports, so that the CLI can start local workers before torch is imported here.
"""
