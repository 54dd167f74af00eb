"""`zoomfeat generate-large` (joint multi-scale large images) and `zoomfeat superres` (condition-inversion SR)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoomfeat.cli.common import add_model_args, load_model_from_args


def _sampling_args(p: argparse.ArgumentParser, n_steps: int) -> None:
    add_model_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--guidance", choices=["fd", "autograd", "none"], default="fd",
                   help="constraint update: backprop-free finite differences (default), autograd, or none")
    p.add_argument("--guidance-scale", type=float, default=3.0,
                   help="CFG scale s in eps_u + s (eps_c - eps_u) (official w=2 in (1+w)eps_c - w eps_u is s=3)")
    p.add_argument("--t0", type=int, default=1000, help="first timestep (default 1000)")
    p.add_argument("--stride", type=int, default=50, help="timestep stride (default 50: 20 steps)")
    p.add_argument("--n-steps", type=int, default=n_steps, help=f"constraint updates per timestep (default {n_steps})")
    p.add_argument("--lr", type=float, default=0.5, help="constraint step size (default 0.5)")
    p.add_argument("--batch-size", type=int, default=16, help="20x patches per forward (default 16)")
    p.add_argument("--decode-stride", type=int, default=None,
                   help="latent px between blended decode windows (default latent_size/4)")
    p.add_argument("--refine", action="store_true", help="sliding-window refinement pass (t0=300, 6 steps)")
    p.add_argument("--refine-t0", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--official-timesteps", action="store_true",
                   help="reproduce the official loop bit for bit: the UNet gets t (not t-1) and the last step's "
                   "alpha_bar_prev is alpha_bar_0 (default: the timesteps the UNet was trained with)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast dtype of the UNet + Summarizer (default fp32; bf16/fp16 on GPU); VQ stays fp32")


def register(subparsers) -> None:
    g = subparsers.add_parser(
        "generate-large",
        help="sample a large 20x image jointly with its low-magnification guide (N×N patches)",
        description="Joint multi-scale sampling (ZoomLDM spec §5): an N×N grid of 20x patches constrained to a "
        "jointly sampled low-magnification image (mag log2 N), blended decoding, optional refinement. "
        "Writes large.png, guide.png and generation.json.",
    )
    _sampling_args(g, n_steps=10)
    g.add_argument("--ssl", required=True,
                   help="SSL grid of the region, one token per 20x tile (.npy/.pt: [C,N,N], [C,N*N] or [N*N,C])")
    g.add_argument("--size", type=int, default=None,
                   help="output side in px = N * model image size (e.g. 1024 = 4x4 patches at 256 px); "
                   "default: from the grid")
    g.set_defaults(func=_generate_large)

    s = subparsers.add_parser(
        "superres",
        help="super-resolve a low-magnification image to 20x (condition inversion + constrained sampling)",
        description="Infer the 20x SSL tokens of a low-magnification image by minimising the denoising loss, "
        "then sample 20x patches constrained to the image (spec §6). Writes sr.png, lr_sr.png, superres.json "
        "(with PSNR/SSIM when --reference is given) and inversion_loss.png.",
    )
    _sampling_args(s, n_steps=5)
    s.add_argument("--image", required=True, help="square low-magnification RGB image (resized to the model size)")
    s.add_argument("--reference", default=None, help="high-resolution reference image for PSNR/SSIM")
    s.add_argument("--scale", type=int, default=4, help="SR factor N, a power of two (default 4: 5x -> 20x)")
    s.add_argument("--iters", type=int, default=200, help="condition-inversion iterations (default 200)")
    s.add_argument("--inv-lr", type=float, default=0.1, help="Adam learning rate of the inversion (default 0.1)")
    s.set_defaults(func=_superres)


def _load(args):
    from zoomfeat.precision import resolve_device

    return load_model_from_args(args).to(resolve_device(args.device))


def _config(args):
    from zoomfeat.generate.large import LargeImageConfig

    return LargeImageConfig(
        t0=args.t0, stride=args.stride, guidance_scale=args.guidance_scale, guidance=args.guidance,
        n_steps=args.n_steps, lr=args.lr, batch_size=args.batch_size, decode_stride=args.decode_stride,
        refine=args.refine, refine_t0=args.refine_t0, official_timesteps=args.official_timesteps,
        precision=getattr(args, "precision", "fp32"),
    )


def _save_png(arr, path: Path) -> None:
    from PIL import Image

    from zoomfeat.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _generate_large(args: argparse.Namespace) -> int:
    from zoomfeat.generate.large import sample_large_image
    from zoomfeat.generate.patches import load_ssl_grid
    from zoomfeat.io import write_json_atomic

    cfg = _config(args)
    model = _load(args)
    grid = load_ssl_grid(args.ssl, model.ssl_dim)
    n = grid.shape[-1]
    if args.size is not None and args.size != n * model.image_size:
        raise ValueError(f"--size {args.size} needs a {args.size // model.image_size}x{args.size // model.image_size} "
                         f"grid of 20x tokens (model image size {model.image_size}); {args.ssl} is {n}x{n}")
    res = sample_large_image(model, grid, cfg, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _save_png(res.image, out / "large.png")
    _save_png(res.guide, out / "guide.png")
    if res.unrefined is not None:
        _save_png(res.unrefined, out / "large_unrefined.png")
    k = res.mag_index
    write_json_atomic(out / "generation.json", {
        "model": str(args.model), "ssl": str(args.ssl), "grid": n, "size": int(res.image.shape[0]),
        "guide_mag": model.mag_labels[k], "guide_mag_index": k, "seed": args.seed,
        "constraint_rmse": res.constraint_error, "seconds": round(res.seconds, 2), "config": res.config,
    })
    print(f"wrote {res.image.shape[0]}x{res.image.shape[1]} large.png and guide.png ({model.mag_labels[k]}) to {out}; "
          f"constraint RMSE {res.constraint_error:.4f}")
    return 0


def _superres(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from zoomfeat.generate.superres import SuperResConfig, side_by_side, sr_metrics, super_resolve
    from zoomfeat.io import write_json_atomic

    for p in (args.image, args.reference):
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"image not found: {p}")
    cfg = SuperResConfig(scale=args.scale, iters=args.iters, inv_lr=args.inv_lr, sampling=_config(args))
    image = np.asarray(Image.open(args.image).convert("RGB"))
    reference = np.asarray(Image.open(args.reference).convert("RGB")) if args.reference else None
    if reference is not None and reference.shape[0] != reference.shape[1]:
        raise ValueError(f"--reference must be square, got {reference.shape[1]}x{reference.shape[0]}")
    model = _load(args)
    res = super_resolve(model, image, cfg, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _save_png(res.sr, out / "sr.png")
    _save_png(side_by_side(res.lr, res.sr), out / "lr_sr.png")
    _plot_losses(res.inversion, out / "inversion_loss.png")
    inv = res.inversion
    record = {
        "model": str(args.model), "image": str(args.image), "scale": args.scale, "size": int(res.sr.shape[0]),
        "seed": args.seed, "constraint_rmse": res.constraint_error, "seconds": round(res.seconds, 2),
        "inversion": {"final_loss": float(inv.losses[-1]), "probe_before": inv.probe_before,
                      "probe_after": inv.probe_after, "probe_denoise_before": inv.probe_denoise_before,
                      "probe_denoise_after": inv.probe_denoise_after},
        "config": res.config,
    }
    if reference is not None:
        record["reference"] = str(args.reference)
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
