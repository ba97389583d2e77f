"""Run logging: one JSON line per epoch, resolved args as YAML, and optional (offline-safe) Weights & Biases."""

from __future__ import annotations

import json
import os
import secrets
import warnings
from pathlib import Path

import yaml

from bgmask.io import atomic_write_text

WANDB_ID_FILE = "wandb_id.txt"


def save_args(settings: dict, path: str | os.PathLike) -> None:
    """Write the resolved settings (after --config files, flags and the strategy's defaults) next to the run."""
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(settings.items())}
    atomic_write_text(path, yaml.safe_dump(plain, sort_keys=False))


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def wandb_mode() -> str:
    """'online' only when credentials exist; otherwise 'offline' so runs never block on the network."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").is_file() and \
        "api.wandb.ai" in (Path.home() / ".netrc").read_text(errors="ignore")
    return "online" if has_key else "offline"


class RunLogger:
    """Appends epoch records to ``log.jsonl`` and mirrors them to wandb when enabled. Only rank 0 writes.

    The W&B run id is kept in the run folder (``wandb_id.txt``), so a requeued or resumed run continues its W&B run
    as it continues ``log.jsonl``.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, use_wandb: bool = False,
                 wandb_kwargs: dict | None = None):
        self.path = Path(run_dir) / "log.jsonl"
        self.enabled = enabled
        self.wandb_run = None
        if enabled and use_wandb:
            try:
                import wandb
            except ImportError:
                warnings.warn("--wandb given but wandb is not installed; logging to log.jsonl only.", stacklevel=2)
            else:
                kwargs = dict(wandb_kwargs or {})
                id_path = Path(run_dir) / WANDB_ID_FILE
                run_id = id_path.read_text().strip() if id_path.is_file() else ""
                if not run_id:
                    run_id = secrets.token_hex(6)  # W&B ids: lower-case letters and digits, unique per project
                    atomic_write_text(id_path, run_id + "\n")
                self.wandb_run = wandb.init(mode=wandb_mode(), dir=str(run_dir), id=run_id, resume="allow", **kwargs)

    def log(self, record: dict, step: int | None = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(_flatten(record), step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}/"))
        elif isinstance(v, (int, float)) or v is None:
            out[key] = v
    return out
