"""The command-line entry points, one module each: ``run`` (``python run_sweep.py``),
``train`` (``python -m sweep.train``), ``evaluate`` (``python -m sweep.evaluate``),
``report`` (``python -m sweep.report``)."""
