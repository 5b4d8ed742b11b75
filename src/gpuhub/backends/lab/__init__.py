"""Lab GPU servers without a scheduler: GPU discovery, per-GPU locks, a FIFO queue, walltime.

Several people share a few GPU servers; nothing but gpuhub stands between their jobs. Each
host keeps, in a shared sticky directory (``lab.lock_dir``), one lock file per GPU held by a
gpuhub job, owned by the job's user and naming the job's process (pid and start time). Every
decision is taken on the host, under one ``flock``, by the job itself: see
:mod:`gpuhub.backends.lab.remote`. The client only reads (:mod:`~gpuhub.backends.lab.discovery`)
and picks a host of a pool (:mod:`~gpuhub.backends.lab.placement`).
"""
