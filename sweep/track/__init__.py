"""The MLflow wing: what a sweep writes to MLflow and how it is found again.

``names`` (artifact, tag, registered-model names), ``store`` (tracking URIs, getting a
store ready, every page of a search, discarding a sweep's runs, UI links),
``provenance`` (the git commit and library versions every trial run is tagged with),
``recorder`` (``SweepRecorder``: the one writer, in the driver), ``resolve``
(``runs:/`` and ``models:/`` to local checkpoint files).
"""
