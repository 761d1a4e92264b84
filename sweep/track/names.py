"""The names of what a sweep writes to MLflow: child-run artifacts, tags, registered
models and their aliases. Readers (``sweep.report``, ``sweep.track.resolve``) and the
writer (``sweep.track.recorder``) share them from here.
"""
from __future__ import annotations

import re

# Artifact layout of a trial's child run.
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "model.pt"
CHECKPOINT_ARTIFACT = f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}"
BITS_ARTIFACT = "bits.json"
ALPHAS_ARTIFACT = "alphas.json"
ERROR_ARTIFACT = "error.txt"
# The best trial of a stage also holds its MLflow PyTorch model (MLmodel, signature,
# input example, the project checkpoint as model/model.pt): the registered version's source.
MODEL_DIR = "model"

# The figures to quote, logged with every epoch of a trial (and rolled up on its stage's
# run): the best epoch by the search metric, val_acc there, and the test accuracy there
# (val_acc itself when there is no validation split: val is the test set then).
BEST_EPOCH_METRIC = "best_epoch"
BEST_VAL_METRIC = "best_val_acc"
TEST_AT_BEST_METRIC = "test_acc_at_best"

# Tags.
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
ROLE_TAG = "sweep.role"
STAGE_TAG = "sweep.stage"
TRIAL_TAG = "sweep.trial_id"
STOPPED_EARLY_TAG = "sweep.stopped_early"
FAILURE_TAG = "sweep.failure"
ERROR_TAG = "sweep.error"
BEST_RUN_TAG = "sweep.best_run_id"
REGISTERED_TAG = "sweep.registered_model"
BEST_TRIAL_TAG = "sweep.best_trial"             # on a stage run: its best trial's run name
_END_TAGS = (STOPPED_EARLY_TAG, FAILURE_TAG, ERROR_TAG)   # describe how a run last ended
# Where a trial ran (the node of its latest epoch; a retry on another node moves them).
NODE_IP_TAG = "sweep.node_ip"
NODE_ID_TAG = "sweep.node_id"                   # Ray's node id (hex)
DEVICE_TAG = "sweep.device"                     # "cpu", or the GPU's name

# Lineage tags of a trial started from another checkpoint (``sweep.tune.lineage``).
INIT_RUN_TAG = "lineage.init_run_id"            # when the source is an MLflow run
INIT_CHECKPOINT_TAG = "lineage.init_checkpoint"   # the path or URI as given
INIT_VERSION_TAG = "lineage.init_model_version"   # models:/<name>/<version> an alias resolved to
INIT_BITS_TAG = "lineage.init_bits"             # sweep.labels: W4A4, FP32, MIXED(w2.50,a3.00)
INIT_STAGE_TAG = "lineage.init_stage"           # train.init {best_of: stage}
INIT_TRIAL_TAG = "lineage.init_trial"

# Provenance tags of every trial run (``sweep.track.provenance``): the repository's git
# commit, whether its tree had changes (``true``/``false``), library versions.
GIT_COMMIT_TAG = "sweep.git_commit"
GIT_DIRTY_TAG = "sweep.git_dirty"
VERSION_TAG_PREFIX = "sweep.version."           # + torch, ray, mlflow, optuna
# MLflow's own tags, which its UI shows as the run's source, version and user.
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
SOURCE_GIT_COMMIT_TAG = "mlflow.source.git.commit"
USER_TAG = "mlflow.user"
# A stage run's artifacts: the experiment file as it was run and the command line.
EXPERIMENT_FILE_DIR = "experiment"
COMMAND_ARTIFACT = "experiment/command.txt"
PROVENANCE_LIBRARIES = ("torch", "ray", "mlflow", "optuna")


def version_tag(library: str) -> str:
    return VERSION_TAG_PREFIX + library

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")


def registered_model_name(name: str, arch: str) -> str:
    """``<name>-<arch>``, with the characters a registered name cannot hold as ``_``."""
    return re.sub(r"[/:]", "_", f"{name}-{arch}")


def stage_alias(stage: str) -> str:
    """``<stage>-best``, written with the characters an alias may hold."""
    return re.sub(r"[^\w\-]", "_", f"{stage}-best")


