"""The Ray wing: ``plan`` (what a stage runs, as Ray Tune and Optuna spaces),
``trainable`` (the function every trial runs), ``lineage`` (``train.init``: which
checkpoint starts a trial), ``records`` and ``callback`` (Ray events to MLflow records
and the progress table), ``state`` (``sweep.json``), ``stages`` (the stage loop that
builds each ``Tuner``), ``cluster`` (Ray start-up and log capture), ``progress``.
"""
