"""synth-cohort `architecture` label: the same per-tile texture mix at 20x, arranged coherently or dispersed."""

import numpy as np

from zoomfeat.slides.synthetic import ARCH_CELL, SlideSpec, architecture_cells, cohort_specs, render_tissue


def _cell_grid(mask: np.ndarray, cell: int = ARCH_CELL) -> np.ndarray:
    h, w = mask.shape
    return mask[: h - h % cell, : w - w % cell].reshape(h // cell, cell, w // cell, cell)


def _same_neighbours(b: np.ndarray, tissue: np.ndarray) -> float:
    """Share of horizontally/vertically adjacent tissue-cell pairs with the same texture."""
    pairs = []
    for a, c, ta, tc in ((b[:, :-1], b[:, 1:], tissue[:, :-1], tissue[:, 1:]), (b[:-1], b[1:], tissue[:-1], tissue[1:])):
        both = ta & tc
        pairs.append((a == c)[both])
    return float(np.concatenate(pairs).mean())


def test_cells_are_pure_half_b_and_arrangement_differs():
    rng = np.random.default_rng(0)
    tissue = np.zeros((3072, 3072), bool)
    tissue[300:2800, 200:2900] = True
    same = {}
    for arch in (0, 1):
        vals = []
        for seed in range(6):
            b = architecture_cells(np.random.default_rng(seed), tissue, arch)
            g = _cell_grid(b)
            cells = g.any(axis=(1, 3))
            assert (g.all(axis=(1, 3)) == cells).all()  # every lattice cell is pure A or pure B: no boundary tiles
            tis = _cell_grid(tissue).any(axis=(1, 3))
            assert abs(cells[tis].sum() - tis.sum() // 2) == 0  # exactly half the tissue cells are B, both classes
            vals.append(_same_neighbours(cells, tis))
        same[arch] = np.mean(vals)
    assert same[0] < 0.1 < 0.75 < same[1], same  # dispersed: checkerboard (≈ 0), coherent ≫ 0.5
    del rng


def test_render_shifts_b_tiles_only_and_specs_balance_labels():
    img0, _ = render_tissue(SlideSpec("s", "p", 0, 0, 0.0, 0.5, 1024, 1024, 3))
    img1, _ = render_tissue(SlideSpec("s", "p", 0, 0, 0.0, 0.5, 1024, 1024, 3, architecture=1))
    diff = img1.astype(int) - img0.astype(int)
    changed = np.abs(diff).sum(-1) > 20
    assert 0.02 < changed.mean() < 0.6
    # the change is the texture-B darkening (blue most), in whole 256-px cells
    assert 0 > diff[changed][:, 0].mean() > diff[changed][:, 2].mean()
    specs = cohort_specs(40, seed=0)
    per_patient = {s.patient: s.architecture for s in specs}
    assert set(per_patient.values()) == {0, 1}
    assert abs(sum(per_patient.values()) - len(per_patient) / 2) <= 1
