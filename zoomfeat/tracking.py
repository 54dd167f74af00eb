"""The one wandb helper, shared by ZoomLDM training and the MIL heads.

Why one place: experiment tracking is optional. It runs offline unless ``WANDB_MODE`` says otherwise (never needs a
network), ``WANDB_MODE=disabled`` turns it off, and it never raises: wandb failing to start (missing, broken, bad
setting) gives one warning and the training goes on without it. A run that keeps its id beside its outputs
(``id_file``) continues the same wandb run when it is resumed.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

#: File (in the run folder) holding the wandb run id, so a resumed training continues the same run.
ID_FILE = "wandb_id.txt"


def wandb_mode() -> str:
    """``WANDB_MODE`` or ``offline`` (the default: nothing leaves the machine)."""
    return os.environ.get("WANDB_MODE") or "offline"


def _loggable(data: dict) -> dict:
    """Drop None and NaN values (a step without a sample of some scale has no loss for it)."""
    return {k: v for k, v in data.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


class WandbRun:
    """A wandb run if one can start, otherwise nothing; no method ever raises.

    ``out_dir`` None (a plain API call without an output folder) means nowhere to put the run, hence no run.
    ``resume``: keep the run id in ``out_dir/wandb_id.txt`` and reuse it when the file exists.
    """

    def __init__(self, project: str, name: str | None = None, config: dict | None = None,
                 out_dir: str | os.PathLike | None = None, enabled: bool = True, resume: bool = False):
        self.run: Any = None
        mode = wandb_mode()
        if not enabled or mode == "disabled" or out_dir is None:
            return
        id_file = Path(out_dir) / ID_FILE if resume else None
        try:
            import wandb

            run_id = id_file.read_text().strip() if id_file is not None and id_file.exists() else None
            self.run = wandb.init(project=project, name=name, config=config, dir=str(out_dir), mode=mode,
                                  id=run_id, resume="allow" if id_file is not None else None,
                                  reinit="finish_previous", settings=_quiet_settings(wandb))
            if id_file is not None:
                id_file.write_text(self.run.id)
        except Exception as exc:  # noqa: BLE001 — tracking must never stop a training
            warnings.warn(f"wandb disabled ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)
            self.run = None

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, data: dict, step: int) -> None:
        if self.run is not None:
            try:
                self.run.log(_loggable(data), step=int(step))
            except Exception:  # noqa: BLE001 # pragma: no cover - logging must never break training
                pass

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception:  # noqa: BLE001 # pragma: no cover
                pass
            self.run = None


def _quiet_settings(wandb):
    """``wandb.Settings(silent=True)`` where this wandb version has it (no banner on every fold / run)."""
    try:
        return wandb.Settings(silent=True)
    except Exception:  # noqa: BLE001 — older/newer wandb without that field
        return None
