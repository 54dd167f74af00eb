"""GFLOP per tile of every full-size TRIDENT-parity baseline encoder (and ZoomLDM's pieces), counted with
``torch.utils.flop_counter.FlopCounterMode`` on the meta device: no weights, no memory, no arithmetic — the count
is exact for the ops torch registers (matmul, conv, SDPA; 2 FLOP per multiply-add) and ignores elementwise ops
(norms, activations, softmax: < 1 % for these models). One tile = batch 1 at the encoder's input size.

    .venv/bin/python benchmarks/encoder_flops.py [--encoders uni_v1,ctranspath] [--no-zoomldm] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def count_gflop(fn) -> float:
    """GFLOP of one call of ``fn`` (on meta tensors, no autograd)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def encoder_row(name: str) -> dict:
    from zoomfeat.encoders.baselines import SPECS

    spec = SPECS[name]
    with torch.device("meta"):
        model = spec.build(None, None).eval().requires_grad_(False)
        x = torch.empty(1, 3, spec.transform.size, spec.transform.size)
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "input_px": spec.transform.size, "params_M": params / 1e6, "dim": spec.dim,
            "gflop": count_gflop(lambda: spec.forward(model, x))}


def zoomldm_rows(config: Path, uni_gflop: float | None) -> list[dict]:
    """ZoomLDM (full-size BRCA config) per 256-px tile: VQ encode, the UNet's full pass, the early exit at the
    middle block (what ``zoomfeat extract`` runs by default), the Summarizer; and the 20x / 5x feature totals
    (20x: UNI of the tile + summarizer 1x1 + VQ + early-exit UNet; 5x: UNI of the 16 20x children + summarizer 4x4
    + VQ + early-exit UNet)."""
    from zoomfeat.ldm import ZoomLDM

    with torch.device("meta"):
        ldm = ZoomLDM.from_config(config).eval().requires_grad_(False)
        image = torch.empty(1, 3, ldm.image_size, ldm.image_size)
        x_t = torch.empty(1, ldm.latent_channels, ldm.latent_size, ldm.latent_size)
    summ = type(ldm.summarizer).from_config(ldm.summarizer.config).eval().requires_grad_(False)  # small: CPU
    ssl1, ssl4, mag = torch.zeros(1, ldm.ssl_dim, 1, 1), torch.zeros(1, ldm.ssl_dim, 4, 4), torch.zeros(1).long()
    t = torch.tensor([100], device="meta")
    ctx = torch.empty(1, ldm.context_length, ldm.context_dim, device="meta")
    parts = {"ZoomLDM VQ encode": lambda: ldm.vq.encode(image),
             "ZoomLDM UNet full pass": lambda: ldm.unet(x_t, t, encoder_hidden_states=ctx),
             "ZoomLDM UNet early exit [0]": lambda: ldm.unet_features(x_t, t, ctx, [0]),
             "ZoomLDM Summarizer 1x1": lambda: summ(ssl1, mag),
             "ZoomLDM Summarizer 4x4": lambda: summ(ssl4, mag)}
    rows = {}
    for label, fn in parts.items():
        try:
            rows[label] = count_gflop(fn)
        except Exception as exc:  # noqa: BLE001 — a piece that does not run on meta is reported, not fatal
            print(f"{label}: not counted ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    px = {"VQ": ldm.image_size, "UNet": ldm.latent_size, "Summarizer": 0}
    out = [{"model": k, "input_px": next(v for p, v in px.items() if p in k), "gflop": v}
           for k, v in rows.items()]
    base = [rows.get("ZoomLDM VQ encode"), rows.get("ZoomLDM UNet early exit [0]")]
    if uni_gflop is not None and None not in base and "ZoomLDM Summarizer 4x4" in rows:
        core = sum(base)
        out.append({"model": "ZoomLDM 20x feature (UNI + summ. + VQ + exit [0])", "input_px": ldm.image_size,
                    "gflop": uni_gflop + rows["ZoomLDM Summarizer 1x1"] + core})
        out.append({"model": "ZoomLDM 5x feature (16 UNI + summ. + VQ + exit [0])", "input_px": ldm.image_size,
                    "gflop": 16 * uni_gflop + rows["ZoomLDM Summarizer 4x4"] + core})
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    from zoomfeat.encoders.baselines import SPECS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", default=",".join(n for n in SPECS if n != "uni"))
    ap.add_argument("--no-zoomldm", action="store_true")
    ap.add_argument("--config", default=str(ROOT / "configs" / "ldm" / "zoomldm_brca.yaml"))
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [encoder_row(n) for n in args.encoders.split(",") if n]
    if not args.no_zoomldm:
        uni = next((r["gflop"] for r in rows if r["model"] == "uni_v1"), None)
        rows += zoomldm_rows(Path(args.config), uni)
    print(f"GFLOP per tile (batch 1, FlopCounterMode on the meta device, 2 FLOP per multiply-add, torch "
          f"{torch.__version__})")
    print(f"{'model':52s} {'input px':>8s} {'params M':>9s} {'GFLOP':>9s}")
    for r in rows:
        pm = f"{r['params_M']:9.1f}" if "params_M" in r else f"{'':9s}"
        px = str(r["input_px"]) if r["input_px"] else "-"
        print(f"{r['model']:52s} {px:>8s} {pm} {r['gflop']:9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
