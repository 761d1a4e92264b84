"""The configuration wing: the one typed tree of an experiment.

``fields`` declares every dotted key (default, bounds, check); ``tree`` the typed
sections; ``space`` the search distributions; ``dotted`` the dotted-key helpers;
``trial`` resolves one concrete tree into a ``TrialConfig``; ``load`` reads a YAML
file with its stages and ``--set`` overrides into an ``Experiment``.

Imports no Ray, MLflow or training code (a test checks it).
"""
from sweep.config.dotted import flatten, get_dotted, set_dotted
from sweep.config.errors import ConfigError
from sweep.config.load import Experiment, Stage, expand_variants, load_experiment, parse_overrides
from sweep.config.space import has_distributions
from sweep.config.tree import (DataConfig, InitFrom, LayerOverride, ModelConfig, QuantConfig,
                               ResourcesConfig, SchedulerConfig, SearchConfig, SyntheticConfig,
                               TrackingConfig, TrainConfig, TrialConfig)
from sweep.config.trial import resolve_trial

__all__ = [
    "ConfigError", "Experiment", "Stage", "TrialConfig", "DataConfig", "SyntheticConfig",
    "ModelConfig", "QuantConfig", "LayerOverride", "TrainConfig", "InitFrom", "SearchConfig",
    "SchedulerConfig", "ResourcesConfig", "TrackingConfig", "load_experiment",
    "resolve_trial", "expand_variants", "flatten", "get_dotted", "set_dotted",
    "has_distributions", "parse_overrides"]
