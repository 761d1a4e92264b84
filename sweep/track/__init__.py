"""The MLflow wing: what a sweep writes to MLflow and how it is found again.

``names`` (artifact, tag, registered-model names), ``store`` (tracking URIs, getting a
store ready, UI links), ``recorder`` (``SweepRecorder``: the one writer, in the
driver), ``resolve`` (``runs:/`` and ``models:/`` to local checkpoint files).
"""
