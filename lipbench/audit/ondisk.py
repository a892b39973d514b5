"""Auditing a job folder or a checkpoint: rebuild the model from config.json and model.pt (tensors only,
never code) and fold the audit into the job's record. Plugins are never imported because a results
folder names them."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from lipbench.audit import audit_model
from lipbench.data import Dataset, copy_to, load_dataset
from lipbench.device import resolve_device
from lipbench.errors import UserError
from lipbench.jobfolder import MODEL_NAME, RECORD_NAME, Status, load_tensors, read_config, read_json, write_audit
from lipbench.registry import LAYERS, LayerMethod, create_model
from lipbench.settings import JobConfig

def audit_job(job_dir: Path | str, write: bool = True, **options: Any) -> dict[str, Any]:
    """Audit the trained model of ``job_dir``; with ``write``, fold the audit into its record (under ``audit``)."""
    job_dir = Path(job_dir)
    config, record = read_config(job_dir), read_json(job_dir / RECORD_NAME)
    if record.get("status") != Status.OK.value:
        raise UserError(f"{job_dir}: the job's status is {record.get('status')!r}; only finished runs (ok) "
                        "can be audited")
    audit = audit_checkpoint(job_dir / MODEL_NAME, config, record, **options)
    if write:
        write_audit(job_dir, audit)
    return audit


def audit_checkpoint(checkpoint: Path, config: JobConfig, record: dict[str, Any] | None = None,
                     device: str | None = None, data_dir: str | None = None, **options: Any) -> dict[str, Any]:
    """Rebuild the model of ``config`` from ``checkpoint`` and audit it (``record`` as in :func:`audit_model`)."""
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint} does not exist: the run kept no model (re-run it with --save-model)")
    method = method_of(config)
    target = resolve_device(device or "auto")
    data = copy_to(cached_dataset(config.dataset, data_dir or config.data_dir), target)
    model = create_model(config.layer, config.size, data.in_shape, data.n_classes, config.model or None,
                         config.head, **config.layer_options)
    state = load_tensors(checkpoint)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        raise UserError(f"{checkpoint} does not fit a {config.layer} {config.size} model: "
                        f"{str(error).splitlines()[0]}") from None
    return audit_model(model.to(target), method, data, record or {}, target, **options)


def method_of(config: JobConfig) -> LayerMethod:
    """The job's method. Plugins are never imported because a results folder names them: a method that
    is not registered says which ``--plugin`` the job was run with."""
    if config.layer not in LAYERS.names():
        given = ", ".join(config.plugins) or "none recorded"
        raise UserError(f"layer {config.layer!r} of this result is not registered: pass the plugin that defines it "
                        f"with --plugin (the job was run with: {given})")
    return LAYERS.get(config.layer)


@functools.lru_cache(maxsize=1)
def cached_dataset(name: str, data_dir: str | None) -> Dataset:
    """The dataset, loaded once for a folder of jobs audited one after another."""
    return load_dataset(name, data_dir)
