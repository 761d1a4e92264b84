"""The one error a bad file or override raises."""
from __future__ import annotations


class ConfigError(Exception):
    """An invalid file or override: ``file`` (or ``--set``), ``key`` (dotted path such as
    ``stages[1].set.quant.z``) and ``message``; ``str()`` reads ``file: key: message``."""

    def __init__(self, file: str | None, key: str | None, message: str):
        super().__init__(file, key, message)
        self.file, self.key, self.message = file, key, message

    def __str__(self) -> str:
        return ": ".join(p for p in (self.file, self.key, self.message) if p)


