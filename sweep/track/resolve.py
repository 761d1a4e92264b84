"""Where a trial's initial weights come from: ``train.init`` as a file path,
``runs:/<run_id>[/<artifact path>]`` (that run's best checkpoint by default) or
``models:/<name>@<alias>`` / ``models:/<name>/<version>``, resolved to a local file
plus the lineage tags it gives the run (``lineage.init_run_id``,
``lineage.init_checkpoint``)."""
from __future__ import annotations

import os
import posixpath
import shutil
import tempfile

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from sweep.track.names import (CHECKPOINT_ARTIFACT, CHECKPOINT_FILE, INIT_CHECKPOINT_TAG,
                               INIT_RUN_TAG, INIT_VERSION_TAG)

__all__ = ["resolve_init", "resolve_in_default_store", "is_mlflow_uri"]


def is_mlflow_uri(text) -> bool:
    """``runs:/...`` or ``models:/...``: a source only MLflow can resolve."""
    return str(text).startswith(("runs:/", "models:/"))


def resolve_in_default_store(uri: str, store: str | None = None) -> str:
    """A ``runs:/`` or ``models:/`` source as a local checkpoint file, looked up in
    ``store``, else the store sweeps run from this directory write to
    (``./sweeps/mlflow.db``) unless ``MLFLOW_TRACKING_URI`` names another. For the
    command-line tools; raises ValueError with one line when the store has no such run,
    model or alias."""
    from sweep.track.store import default_tracking_uri
    store = (store or os.environ.get("MLFLOW_TRACKING_URI")
             or default_tracking_uri(os.path.abspath("sweeps")))
    try:
        path, _ = resolve_init(uri, store, None)
    except Exception as exc:  # MLflow's own errors: an unknown run, model or alias
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{uri}: not found in MLflow store {store} ({first})") from None
    return path


def resolve_init(uri_or_path: str | os.PathLike, client: MlflowClient | str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> tuple[str, dict[str, str]]:
    """A ``train.init`` source as ``(local checkpoint file, lineage tags)``.

    ``runs:/<run_id>`` (the run's ``checkpoint/model.pt``), ``runs:/<run_id>/<path>``,
    ``models:/<name>@<alias>``, ``models:/<name>/<version>`` are downloaded into
    ``cache_dir`` (a folder artifact resolves to its ``model.pt``); a local file, or a
    checkpoint folder holding ``model.pt``, is returned as an absolute path. Lineage:
    ``lineage.init_checkpoint`` (the source as written, a path made absolute) and
    ``lineage.init_run_id`` when the source is an MLflow run or model version.
    ``client``: an MlflowClient or a tracking URI (needed for ``runs:/``, ``models:/``).
    """
    text = os.fspath(uri_or_path)
    if not text.startswith(("runs:/", "models:/")):
        path = os.path.abspath(os.path.expanduser(text))
        if os.path.isdir(path):
            path = os.path.join(path, CHECKPOINT_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"init checkpoint {text!r}: no file at {path}")
        return path, {INIT_CHECKPOINT_TAG: path}
    if client is None:
        raise ValueError(f"resolving {text!r} needs an MLflow client or tracking URI")
    if isinstance(client, str):
        client = MlflowClient(tracking_uri=client, registry_uri=client)
    cache = os.path.abspath(os.fspath(cache_dir) if cache_dir is not None else
                            os.path.join(tempfile.gettempdir(), "sweep-mlflow-cache"))
    if text.startswith("runs:/"):
        run_id, _, path = text[len("runs:/"):].strip("/").partition("/")
        local = _download_run_file(client, run_id, path or CHECKPOINT_ARTIFACT, cache)
        return local, {INIT_RUN_TAG: run_id, INIT_CHECKPOINT_TAG: text}
    version = _model_version(client, text)
    lineage = {INIT_CHECKPOINT_TAG: text,
               INIT_VERSION_TAG: f"models:/{version.name}/{version.version}"}
    if version.run_id:
        lineage[INIT_RUN_TAG] = version.run_id
    source = version.source or ""
    if source.startswith("runs:/"):
        run_id, _, path = source[len("runs:/"):].strip("/").partition("/")
        return _download_run_file(client, run_id, path or CHECKPOINT_ARTIFACT, cache), lineage
    import mlflow.artifacts
    os.makedirs(cache, exist_ok=True)
    dst = tempfile.mkdtemp(prefix="model-", dir=cache)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=dst,
                                                tracking_uri=client.tracking_uri)
    if os.path.isdir(local):
        local = os.path.join(local, CHECKPOINT_FILE)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"{text} (source {source}) holds no {CHECKPOINT_FILE}")
    return local, lineage


def _model_version(client: MlflowClient, uri: str) -> ModelVersion:
    spec = uri[len("models:/"):].strip("/")
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = spec.rpartition("/")
        if not name:
            raise ValueError(f"{uri!r}: write models:/<name>@<alias> or models:/<name>/<version>")
        if not version.isdigit():
            raise ValueError(f"{uri!r}: version {version!r} is not a number")
        return client.get_model_version(name, version)
    except MlflowException as exc:
        # a missing alias is INVALID_PARAMETER_VALUE, a missing model or version
        # RESOURCE_DOES_NOT_EXIST
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ValueError(f"{uri!r} names no registered model version: {exc.message}") \
                from None
        raise


def _download_run_file(client: MlflowClient, run_id: str, path: str, cache: str) -> str:
    """One checkpoint file of a run, downloaded once into ``cache/<run_id>/`` (again when
    the stored file's size changed); a folder artifact means its ``model.pt``."""
    path = path.strip("/")
    listing = client.list_artifacts(run_id, path)
    if listing:                                              # a folder
        names = {posixpath.basename(f.path): f for f in listing}
        if CHECKPOINT_FILE not in names:
            raise FileNotFoundError(
                f"runs:/{run_id}/{path} is a folder without {CHECKPOINT_FILE} "
                f"(it holds {', '.join(sorted(names))})")
        info = names[CHECKPOINT_FILE]
    else:
        folder = posixpath.dirname(path)
        info = next((f for f in client.list_artifacts(run_id, folder or None)
                     if f.path == path and not f.is_dir), None)
        if info is None:
            raise FileNotFoundError(f"run {run_id} has no artifact {path!r}")
    final = os.path.join(cache, run_id, *info.path.split("/"))
    if os.path.isfile(final) and (info.file_size is None
                                  or os.path.getsize(final) == info.file_size):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(final))
    try:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        local = client.download_artifacts(run_id, info.path, tmp)
        os.replace(local, final)          # atomic: concurrent trials never see half a file
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
