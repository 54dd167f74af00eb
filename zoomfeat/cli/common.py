"""Options shared by every verb that loads ZoomLDM, so each one accepts the same model arguments: a saved folder
(``zoomfeat convert`` / training), or an official ``weights.ckpt`` with its ``config.yaml``."""

from __future__ import annotations


def add_model_args(p, flag: str = "--model", required: bool = True, help: str | None = None) -> None:
    """``FLAG PATH`` (folder or official .ckpt), ``--official-config`` and ``--online`` on parser/group ``p``."""
    p.add_argument(flag, required=required, default=None,
                   help=help or "ZoomLDM model: a folder (zoomfeat convert / train) or an official weights.ckpt")
    p.add_argument("--official-config", default=None,
                   help="official config.yaml of a .ckpt (default: the config.yaml beside it)")
    p.add_argument("--online", action="store_true",
                   help="official .ckpt only: load the online UNet instead of the EMA weights (the released default)")


def load_model_from_args(args, dest: str = "model"):
    """The ZoomLDM named by :func:`add_model_args` options (``dest``: the path option's attribute name)."""
    from zoomfeat.ldm import ZoomLDM

    return ZoomLDM.load(getattr(args, dest), getattr(args, "official_config", None),
                        ema=not getattr(args, "online", False))


def add_jobs_option(p) -> None:
    """``--jobs N``: independent jobs (folds, compare cells, probe feature sets) on N worker processes."""
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes for the independent folds / cells (default: the usable cores; 1: in "
                        "this process); outputs are identical whatever N")
