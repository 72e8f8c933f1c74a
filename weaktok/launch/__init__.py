"""Launchers: where a config is resolved once and handed, resolved, to the processes that train it.

local.py        training subprocesses on this machine (demo, ablations): ``--config <run>/config.yaml``
ray_train.py    Ray Train workers (TorchTrainer, DeepSpeed inside): the config as plain data (``to_dict``)
sweep.py        Ray Tune sweeps: the driver, the head watchdog, results.csv / best_config.yaml / the plot
sweep_space.py  the search-space file -> SweepSpec, checked against the resolved config; trial resources
trial.py        one trial: the resolved base + its params (``trial_config``), trained and reported to Tune
objective.py    what a run reports to Ray: the validation record's scalars and the sweep objective
"""
