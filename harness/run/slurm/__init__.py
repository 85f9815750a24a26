"""Running a matrix's cells as Slurm job arrays through submitit (``--launcher slurm``).

Framework-free, like the rest of ``harness.run``; submitit itself is imported inside functions only, so a
machine without it runs the local launcher as before. The modules, each with one job:

* ``params``        - sbatch parameters of a cell (memory from its preflight estimate times a margin, time, GPUs);
* ``node``          - what runs on the node: the same worker as the local launcher, its row written as a part file;
* ``parts``         - part files: written atomically, merged into the run's store under its lock, never twice;
* ``states``        - Slurm's word on a job (squeue, then scontrol; no accounting needed);
* ``collect``       - waiting for the jobs with a bounded poll, and a failed row for each job that died;
* ``submit``        - cells grouped by what they request, each group one submitit job array;
* ``cluster_check`` - the tiny job that checks the node's Python imports each impl's framework;
* ``launcher``      - the matrix on Slurm, end to end (what ``run_matrix`` is for the local launcher).
"""
