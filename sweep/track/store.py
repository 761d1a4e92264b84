"""The MLflow store a sweep writes to: its default URI, getting it ready before trials
start, reading every page of a search, discarding a sweep's runs (``--restart``), the
UI command and links.
"""
from __future__ import annotations

import os
import shlex
import urllib.error
import urllib.request

from typing import Any, Callable, Iterator

from mlflow import MlflowClient

__all__ = ["default_tracking_uri", "sqlite_path", "is_http", "prepare_store", "paged",
           "delete_experiment_runs", "ui_command", "experiment_link", "view_link", "run_link",
           "model_link"]

PAGE_SIZE = 1000

# --------------------------------------------------------------------------- store

def default_tracking_uri(storage_dir: str | os.PathLike) -> str:
    """``sqlite:///<abs storage_dir>/mlflow.db``: one store for every sweep of a folder."""
    text = os.fspath(storage_dir)
    if "://" in text:
        raise ValueError(
            f"storage {text!r} is a URI, so the default SQLite MLflow store cannot live there; "
            "pass --mlflow-uri (or tracking.mlflow_uri) naming a tracking server or a local "
            "sqlite:///path/mlflow.db")
    return "sqlite:///" + os.path.join(os.path.abspath(os.path.expanduser(text)), "mlflow.db")


def sqlite_path(uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI (absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return os.path.abspath(path) if path else None


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def prepare_store(uri: str, timeout_s: float = 10.0) -> None:
    """Make the store usable before any trial starts, from the calling process only.

    SQLite: create the folder and the schema once (several processes creating a fresh
    store at the same moment corrupt it). HTTP: check that the server answers /health,
    so a wrong address fails now rather than after MLflow's minutes of retries.
    """
    db = sqlite_path(uri)
    if db is not None:
        os.makedirs(os.path.dirname(db), exist_ok=True)
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
    elif is_http(uri):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                if r.status != 200:
                    raise OSError(f"HTTP {r.status}")
        except (OSError, urllib.error.URLError) as exc:
            raise ConnectionError(
                f"MLflow tracking server {uri} does not answer ({exc}); start it, or drop "
                "--mlflow-uri to use the local SQLite store") from exc


# --------------------------------------------------------------------------- searches

def paged(search: Callable[..., Any], *args, page_size: int = PAGE_SIZE, **kwargs) -> Iterator:
    """Every result of an MLflow search, page after page: ``search`` is a paged client
    method (``client.search_runs``, ``client.search_experiments``, ...), called with
    ``args``/``kwargs`` plus ``max_results`` and ``page_token``.

        for run in paged(client.search_runs, [experiment_id], filter_string=...): ...
    """
    token = None
    while True:
        page = search(*args, max_results=page_size, page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def delete_experiment_runs(uri: str, name: str) -> int:
    """Soft-delete every run of experiment ``name`` (``--restart``; ``mlflow runs
    restore`` brings them back until ``mlflow gc``). Returns how many; 0 when the store
    has no such experiment. The ids are listed first: deleting while paging would shift
    the pages."""
    prepare_store(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return 0
    run_ids = [run.info.run_id for run in paged(client.search_runs, [exp.experiment_id])]
    for run_id in run_ids:
        client.delete_run(run_id)
    return len(run_ids)


# --------------------------------------------------------------------------- the UI

def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> str | None:
    """The shell command that serves the MLflow UI for ``uri``; None for an http(s) URI,
    which is a server (and its UI) already."""
    if is_http(uri):
        return None
    return (f"mlflow ui --backend-store-uri {shlex.quote(uri)} "
            f"--host {host} --port {int(port)}")


def experiment_link(base_url: str, experiment_id: str) -> str:
    """A link that opens the experiment's training runs (not the GenAI overview)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def view_link(base_url: str, experiment_id: str, view_id: str, charts: bool = False) -> str:
    """A link that opens a saved view of the experiment's runs (``sweep.track.views``),
    as its table or (``charts``) its charts. It names the runs tab itself: the UI's
    redirect from the bare experiment page drops the view."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning{mode}&viewStateShareKey={view_id}")


def run_link(base_url: str, experiment_id: str, run_id: str) -> str:
    """A link that opens one run's page, in the training view."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
            "?workflowType=machine_learning")


def model_link(base_url: str, name: str, version: str | int) -> str:
    """A link that opens a registered model version's page, with the UI's training
    navigation (not its GenAI one)."""
    return (f"{base_url.rstrip('/')}/#/models/{name}/versions/{version}"
            "?workflowType=machine_learning")
