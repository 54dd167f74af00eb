"""Options shared by verbs, so each one accepts the same arguments: the ZoomLDM model (a saved folder from
``zoomfeat convert`` / training, or an official ``weights.ckpt`` with its ``config.yaml``) and the user's weights
registry of every verb that takes encoder weights."""

from __future__ import annotations

#: One help text for ``--weights-registry`` on every verb that takes encoder weights.
WEIGHTS_REGISTRY_HELP = ("your YAML encoder → local weights path registry, relative paths resolved beside it "
                         "(default: $ZOOMFEAT_WEIGHTS_REGISTRY; the packaged configs/encoders/weights.yaml is an "
                         "empty example to copy)")


def add_weights_registry_arg(p) -> None:
    """``--weights-registry PATH`` on parser/group ``p`` (dest ``weights_registry``)."""
    p.add_argument("--weights-registry", default=None, metavar="YAML", help=WEIGHTS_REGISTRY_HELP)


def add_model_args(p, flag: str = "--model", required: bool = True, help: str | None = None) -> None:
    """``FLAG PATH`` (folder or official .ckpt), ``--official-config`` and ``--online`` on parser/group ``p``."""
    p.add_argument(flag, required=required, default=None,
                   help=help or "ZoomLDM model: a folder (zoomfeat convert / train) or an official weights.ckpt")
    p.add_argument("--official-config", default=None,
                   help="official config.yaml of a .ckpt (default: the config.yaml beside it)")
    p.add_argument("--online", action="store_true",
                   help="official .ckpt only: load the online UNet instead of the EMA weights (the released default)")


def add_jobs_option(p) -> None:
    """``--jobs N``: independent jobs (folds, compare cells, probe feature sets) on N worker processes."""
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes for the independent folds / cells (default: the usable cores; 1: in "
                        "this process); outputs are identical whatever N")
