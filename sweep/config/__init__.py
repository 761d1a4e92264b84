"""The configuration wing: the one typed tree of an experiment.

``schema`` declares the typed sections, each field one dotted key with its default and
check (the ``quant`` section is ``quant.QuantPolicy``); ``keys`` derives the dotted-key
table from it; ``checks`` the checks of one value; ``space`` the search distributions;
``dotted`` the dotted-key helpers (and the one key sanitiser MLflow names share);
``trial`` resolves one concrete tree into a ``TrialConfig``; ``load`` reads a YAML
file with its stages and ``--set`` overrides into an ``Experiment``.

Imports no Ray, MLflow or training code (a test checks it).
"""
from quant.policy import QuantPolicy
from sweep.config.dotted import flatten, get_dotted, sanitize_key, set_dotted
from sweep.config.errors import ConfigError
from sweep.config.load import Experiment, Stage, expand_variants, load_experiment, parse_overrides
from sweep.config.space import has_distributions
from sweep.config.schema import (DataConfig, InitFrom, ModelConfig, ResourcesConfig, SchedulerConfig,
                                 SearchConfig, SyntheticConfig, TrackingConfig, TrainConfig, TrialConfig)
from sweep.config.trial import resolve_trial

__all__ = [
    "ConfigError", "Experiment", "Stage", "TrialConfig", "DataConfig", "SyntheticConfig",
    "ModelConfig", "QuantPolicy", "TrainConfig", "InitFrom", "SearchConfig",
    "SchedulerConfig", "ResourcesConfig", "TrackingConfig", "load_experiment",
    "resolve_trial", "expand_variants", "flatten", "get_dotted", "set_dotted", "sanitize_key",
    "has_distributions", "parse_overrides"]
