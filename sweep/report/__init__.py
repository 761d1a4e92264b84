"""The report wing: ``results`` (a sweep read back from MLflow), ``compare``
(published numbers), ``table`` (the Markdown table and CSV), ``plots`` (PNGs).
"""
