"""`zoomfeat generate-large` (joint multi-scale large images) and `zoomfeat superres` (condition-inversion SR)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoomfeat.cli.options import add_config_args, add_fields, options_from_args, require
from zoomfeat.generate.options import GenerateLargeConfig, SuperResRunConfig


def register(subparsers) -> None:
    g = subparsers.add_parser(
        "generate-large",
        help="sample a large 20x image jointly with its low-magnification guide (N×N patches)",
        description="Joint multi-scale sampling (ZoomLDM spec §5): an N×N grid of 20x patches constrained to a "
        "jointly sampled low-magnification image (mag log2 N), blended decoding, optional refinement. "
        "Writes large.png, guide.png and generation.json.",
    )
    add_config_args(g)
    add_fields(g, GenerateLargeConfig)
    g.set_defaults(func=_generate_large)

    s = subparsers.add_parser(
        "superres",
        help="super-resolve a low-magnification image to 20x (condition inversion + constrained sampling)",
        description="Infer the 20x SSL tokens of a low-magnification image by minimising the denoising loss, "
        "then sample 20x patches constrained to the image (spec §6). Writes sr.png, lr_sr.png, superres.json "
        "(with PSNR/SSIM when --reference is given) and inversion_loss.png.",
    )
    add_config_args(s)
    add_fields(s, SuperResRunConfig)
    s.set_defaults(func=_superres)


def _load(cfg):
    from zoomfeat.ldm import ZoomLDM
    from zoomfeat.precision import resolve_device

    return ZoomLDM.load(cfg.model, cfg.official_config, ema=cfg.ema).to(resolve_device(cfg.device))


def _save_png(arr, path: Path) -> None:
    from PIL import Image

    from zoomfeat.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _generate_large(args: argparse.Namespace) -> int:
    from zoomfeat.generate.large import sample_large_image
    from zoomfeat.generate.patches import load_ssl_grid
    from zoomfeat.io import write_json_atomic

    cfg = options_from_args(GenerateLargeConfig, args)
    require(cfg, "model", "out", "ssl")
    model = _load(cfg)
    grid = load_ssl_grid(cfg.ssl, model.ssl_dim)
    n = grid.shape[-1]
    if cfg.size is not None and cfg.size != n * model.image_size:
        raise ValueError(f"--size {cfg.size} needs a {cfg.size // model.image_size}x{cfg.size // model.image_size} "
                         f"grid of 20x tokens (model image size {model.image_size}); {cfg.ssl} is {n}x{n}")
    res = sample_large_image(model, grid, cfg.sampling, seed=cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _save_png(res.image, out / "large.png")
    _save_png(res.guide, out / "guide.png")
    if res.unrefined is not None:
        _save_png(res.unrefined, out / "large_unrefined.png")
    k = res.mag_index
    write_json_atomic(out / "generation.json", {
        "model": str(cfg.model), "ssl": str(cfg.ssl), "grid": n, "size": int(res.image.shape[0]),
        "guide_mag": model.mag_labels[k], "guide_mag_index": k, "seed": cfg.seed,
        "constraint_rmse": res.constraint_error, "seconds": round(res.seconds, 2), "config": res.config,
    })
    print(f"wrote {res.image.shape[0]}x{res.image.shape[1]} large.png and guide.png ({model.mag_labels[k]}) to {out}; "
          f"constraint RMSE {res.constraint_error:.4f}")
    return 0


def _superres(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from zoomfeat.generate.superres import side_by_side, sr_metrics, super_resolve
    from zoomfeat.io import write_json_atomic

    cfg = options_from_args(SuperResRunConfig, args)
    require(cfg, "model", "out", "image")
    for p in (cfg.image, cfg.reference):
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"image not found: {p}")
    image = np.asarray(Image.open(cfg.image).convert("RGB"))
    reference = np.asarray(Image.open(cfg.reference).convert("RGB")) if cfg.reference else None
    if reference is not None and reference.shape[0] != reference.shape[1]:
        raise ValueError(f"--reference must be square, got {reference.shape[1]}x{reference.shape[0]}")
    model = _load(cfg)
    res = super_resolve(model, image, cfg.superres, seed=cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _save_png(res.sr, out / "sr.png")
    _save_png(side_by_side(res.lr, res.sr), out / "lr_sr.png")
    _plot_losses(res.inversion, out / "inversion_loss.png")
    inv = res.inversion
    record = {
        "model": str(cfg.model), "image": str(cfg.image), "scale": cfg.superres.scale, "size": int(res.sr.shape[0]),
        "seed": cfg.seed, "constraint_rmse": res.constraint_error, "seconds": round(res.seconds, 2),
        "inversion": {"final_loss": float(inv.losses[-1]), "probe_before": inv.probe_before,
                      "probe_after": inv.probe_after, "probe_denoise_before": inv.probe_denoise_before,
                      "probe_denoise_after": inv.probe_denoise_after},
        "config": res.config,
    }
    if reference is not None:
        record["reference"] = str(cfg.reference)
        record.update(sr_metrics(res.sr, reference))
    write_json_atomic(out / "superres.json", record)
    msg = f"wrote {res.sr.shape[0]}x{res.sr.shape[1]} sr.png and lr_sr.png to {out}"
    if reference is not None:
        msg += f"; PSNR {record['psnr']:.2f} dB, SSIM {record['ssim']:.4f}"
    print(msg)
    return 0


def _plot_losses(inv, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoomfeat.io import atomic_path

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(inv.losses, label="total")
    ax.plot(inv.denoise_losses, label="denoising term")
    ax.set_xlabel("iteration (t descends 950 → 50)")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
