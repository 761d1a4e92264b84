"""The training wing: ``data`` (datasets into memory), ``loader`` (batches on the
device), ``engine`` (``Trainer``), ``evaluate`` (one scoring pass), ``bits`` (resolved
bits of a model's layers). Imports neither Ray nor MLflow (a test checks it):
``Trainer`` takes a local checkpoint path; ``runs:/`` and ``models:/`` are resolved by
the command-line tools before it.
"""
