"""Genuine CLAM and TRIDENT output files (tests/data/peer_outputs, written by their own code on the CMU crop):
zoomfeat reads every one as-is and extracts from their patching, 5x parents included."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.conftest import PEER, SLIDES
from zoomfeat.bags import list_bags, load_bag
from zoomfeat.slides.coords import find_coords, read_coords

CMU = SLIDES / "cmu_small_region.svs"
CLAM = PEER / "clam"
TRIDENT = PEER / "trident"
TJOB = TRIDENT / "20x_256px_0px_overlap"
SID = "cmu_small_region"
W, H = 2220, 2967  # the CMU crop's level-0 size


def _raw_coords(path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f["coords"][:], np.int64)


def test_read_coords_clam_and_trident_patch_files():
    clam = read_coords(CLAM / "patches" / f"{SID}.h5", mpp=0.499)
    assert clam.attrs["format"] == "clam" and len(clam) == 50 and clam.slide == SID
    assert clam.patch_size == clam.patch_size_level0 == 256
    assert clam.mpp_level0 == pytest.approx(0.499) and clam.target_mpp == pytest.approx(0.499)
    assert np.array_equal(clam.coords, _raw_coords(CLAM / "patches" / f"{SID}.h5"))
    assert (clam.coords[:, 0] % 256 == 64).all() and (clam.coords[:, 1] % 256 == 70).all()  # contour-anchored grid
    tri = read_coords(TJOB / "patches" / f"{SID}_patches.h5")
    assert tri.attrs["format"] == "trident" and len(tri) == 58 and tri.slide == SID
    assert tri.patch_size == tri.patch_size_level0 == 256 and tri.target_mpp == pytest.approx(0.5)
    assert (tri.coords % 256 == 0).all()  # anchored at (0, 0)
    # both have edge patches that run past the bottom of the slide
    assert (clam.coords[:, 1] + 256 > H).any() and (tri.coords[:, 1] + 256 > H).any()


def test_find_coords_in_each_layout(tmp_path):
    assert find_coords(CLAM, SID) == CLAM / "patches" / f"{SID}.h5"  # CLAM --save_dir
    assert find_coords(TJOB, SID) == TJOB / "patches" / f"{SID}_patches.h5"  # TRIDENT coords folder
    assert find_coords(TRIDENT, SID) == TJOB / "patches" / f"{SID}_patches.h5"  # TRIDENT job_dir
    assert find_coords(TJOB / "patches", SID) == TJOB / "patches" / f"{SID}_patches.h5"
    with pytest.raises(FileNotFoundError, match=r"no coordinate file.*coords/other\.h5"):
        find_coords(CLAM, "other")
    for name in ("20x_256px_0px_overlap", "10x_256px_0px_overlap"):  # two patchings: ambiguous, say which exist
        (tmp_path / name / "patches").mkdir(parents=True)
        (tmp_path / name / "patches" / f"{SID}_patches.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="2 TRIDENT patchings.*10x_256px_0px_overlap"):
        find_coords(tmp_path, SID)


def test_load_bag_reads_every_genuine_feature_file():
    clam_h5 = load_bag(CLAM / "features" / "h5_files" / f"{SID}.h5")
    assert clam_h5.layout == "clam_h5" and clam_h5.features.shape == (50, 1024) and clam_h5.features.dtype == np.float32
    assert np.array_equal(clam_h5.coords, _raw_coords(CLAM / "patches" / f"{SID}.h5"))  # int32 in the file
    clam_pt = load_bag(CLAM / "features" / "pt_files" / f"{SID}.pt")  # a torch.Tensor, weights_only
    assert clam_pt.layout == "clam_pt" and np.array_equal(clam_pt.features, clam_h5.features)
    assert np.array_equal(clam_pt.coords, clam_h5.coords)  # coords from ../h5_files
    tri_h5 = load_bag(TJOB / "features_resnet50" / f"{SID}.h5")
    assert tri_h5.layout == "trident" and tri_h5.features.shape == (58, 1024) and tri_h5.attrs["encoder"] == "resnet50"
    assert np.array_equal(tri_h5.coords, _raw_coords(TJOB / "patches" / f"{SID}_patches.h5"))
    tri_pt = load_bag(TJOB / "features_resnet50" / f"{SID}.pt")  # a pickled numpy array: numpy allow-listed only
    assert tri_pt.layout == "trident_pt" and np.array_equal(tri_pt.features, tri_h5.features)
    assert np.array_equal(tri_pt.coords, tri_h5.coords)  # coords from the sibling .h5
    custom = load_bag(TJOB / "features_custom_encoder" / f"{SID}.h5")
    assert custom.features.shape == (58, 192) and custom.attrs["encoder"] == "custom_encoder"


def test_list_bags_on_genuine_folders():
    assert list_bags(CLAM / "features") == {SID: CLAM / "features" / "h5_files" / f"{SID}.h5"}
    assert list_bags(TJOB, encoder="resnet50") == {SID: TJOB / "features_resnet50" / f"{SID}.h5"}
    assert list_bags(TJOB, encoder="custom_encoder") == {SID: TJOB / "features_custom_encoder" / f"{SID}.h5"}
    with pytest.raises(ValueError, match="several encoders"):
        list_bags(TJOB)


@pytest.mark.parametrize("tiles,n", [(CLAM, 50), (TRIDENT, 58), (TJOB, 58)], ids=["clam", "trident-job", "trident-coords"])
def test_extract_from_peer_patching(tmp_path, tiles, n):
    """`zoomfeat extract --tiles <CLAM save_dir | TRIDENT job>`: their 20x grid as-is, 5x parents derived from it."""
    from zoomfeat.bags import bag_path
    from zoomfeat.cli import main

    rc = main(["extract", str(CMU), "--tiles", str(tiles), "--encoder", "tiny-vit", "--mags", "20x,5x",
               "--out", str(tmp_path), "--workers", "0", "--no-progress"])
    assert rc == 0
    b = load_bag(bag_path(tmp_path, "tiny-vit", SID))
    ref = read_coords(find_coords(tiles, SID))
    assert b.features.shape == (n, 48) and np.array_equal(b.coords, ref.coords)
    assert np.isfinite(b.features).all() and np.isfinite(b.features_5x).all()
    assert b.attrs["mpp_level0"] == pytest.approx(0.499)  # from the slide, not TRIDENT's 10/mag assumption
    s0, s5 = b.attrs["patch_size_level0"], b.attrs["patch_size_level0_5x"]
    assert s5 == 4 * s0 == 1024
    parent = b.coords_5x[b.parent_index]
    assert (b.coords >= parent).all() and (b.coords + s0 <= parent + s5).all()  # every tile inside its 5x parent
    assert len(np.unique(b.parent_index)) == len(b.coords_5x)  # no empty parent
    # the 5x lattice shares the peer grid's origin (CLAM: contour corner (64, 70) mod 256; TRIDENT: (0, 0))
    assert ((b.coords_5x - ref.coords[0]) % s0 == 0).all()
    # edge patches past the bottom of the slide were read (as background), not dropped or crashed on
    assert (b.coords[:, 1] + s0 > H).any()
