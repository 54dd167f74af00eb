"""Bags: zoomfeat's HDF5 layout round trip, atomicity, and reading CLAM / TRIDENT / STAMP / slideflow bags."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from zoomfeat.bags import bag_is_complete, bag_path, list_bags, load_bag, read_bag, read_bag_attrs, write_bag


def _bag(rng, n=10, d=6, m=3, d5=4):
    feats = rng.standard_normal((n, d)).astype(np.float32)
    coords = rng.integers(0, 10_000, (n, 2))
    f5 = rng.standard_normal((m, d5)).astype(np.float32)
    c5 = rng.integers(0, 10_000, (m, 2))
    pidx = rng.integers(0, m, n)
    return feats, coords, f5, c5, pidx


def test_round_trip_layout(tmp_path):
    rng = np.random.default_rng(0)
    feats, coords, f5, c5, pidx = _bag(rng, n=1500)
    p = bag_path(tmp_path, "zoomldm", "TCGA-A1")
    assert p == tmp_path / "features_zoomldm" / "TCGA-A1.h5"
    attrs = {"encoder": "zoomldm", "encoder_config": {"blocks": [0], "t": [100]}, "block": [0], "t": [100],
             "conditioning": "uni", "mpp_level0": 0.499, "encoder_weights_sha256": "ab" * 32, "ssl": None}
    cattrs = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40, "target_magnification": 20}
    write_bag(p, feats, coords, attrs, f5, c5, pidx, coords_attrs=cattrs)
    with h5py.File(p) as h5:  # the raw layout other tools see
        assert h5["features"].dtype == np.float32 and h5["features"].shape == (1500, 6)
        assert h5["features"].chunks == (1024, 6)  # row-chunked, not TRIDENT's (1, D)
        assert h5["coords"].dtype == np.int64
        assert h5["coords"].attrs["patch_size_level0"] == 512
        assert h5["features"].attrs["encoder"] == "zoomldm"
        assert h5["5x/features"].shape == (3, 4) and h5["parent_index"].dtype == np.int64
        assert h5.attrs["conditioning"] == "uni"
    b = load_bag(p)
    assert b.layout == "zoomfeat" and len(b) == 1500 and b.dim == 6
    np.testing.assert_array_equal(b.features, feats)
    np.testing.assert_array_equal(b.coords, coords)
    np.testing.assert_array_equal(b.parent_index, pidx)
    assert b.attrs["encoder_config"] == {"blocks": [0], "t": [100]} and b.attrs["ssl"] is None
    assert b.attrs["t"] == [100] and b.attrs["mpp_level0"] == pytest.approx(0.499)
    np.testing.assert_array_equal(read_bag(p), feats)
    np.testing.assert_array_equal(read_bag(p, "5x"), f5)
    fused = read_bag(p, "20x+5x")
    assert fused.shape == (1500, 10)
    np.testing.assert_array_equal(fused[:, 6:], f5[pidx])
    assert read_bag_attrs(p)["encoder_weights_sha256"] == "ab" * 32
    assert bag_is_complete(p, "ab" * 32, {"blocks": [0], "t": [100]})
    assert not bag_is_complete(p, "cd" * 32)
    assert list_bags(tmp_path) == {"TCGA-A1": p}
    with pytest.raises(ValueError, match="mag"):
        read_bag(p, "10x")


def test_20x_only_and_bad_input_is_atomic(tmp_path):
    rng = np.random.default_rng(1)
    feats, coords, *_ = _bag(rng)
    p = tmp_path / "a.h5"
    write_bag(p, feats, coords, {"encoder": "uni"})
    with pytest.raises(ValueError, match="no 5x"):
        read_bag(p, "20x+5x")
    bad = feats.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_bag(tmp_path / "b.h5", bad, coords)
    with pytest.raises(ValueError, match="coords"):
        write_bag(tmp_path / "b.h5", feats, coords[:-1])
    with pytest.raises(ValueError, match="parent_index"):
        write_bag(tmp_path / "b.h5", feats, coords, {}, feats[:2], coords[:2], np.full(len(feats), 5))
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.h5"]  # nothing partial left behind
    # an empty bag (slide without tissue tiles) is still a valid file
    write_bag(tmp_path / "empty.h5", np.zeros((0, 6), np.float32), np.zeros((0, 2), np.int64))
    assert read_bag(tmp_path / "empty.h5").shape == (0, 6)


def test_reads_clam_feature_dir(tmp_path):
    """CLAM extract_features_fp: h5_files/{id}.h5 (int32 coords, (32, D) chunks, no attrs) + pt_files/{id}.pt."""
    rng = np.random.default_rng(2)
    feats, coords, *_ = _bag(rng, n=40)
    (tmp_path / "h5_files").mkdir()
    (tmp_path / "pt_files").mkdir()
    with h5py.File(tmp_path / "h5_files" / "s1.h5", "w") as h5:
        h5.create_dataset("features", data=feats, chunks=(32, 6), maxshape=(None, 6))
        h5.create_dataset("coords", data=coords.astype(np.int32), chunks=(32, 2), maxshape=(None, 2))
    torch.save(torch.from_numpy(feats), tmp_path / "pt_files" / "s1.pt")
    torch.save(torch.from_numpy(feats[:5]), tmp_path / "pt_files" / "s2.pt")
    b = load_bag(tmp_path / "h5_files" / "s1.h5")
    assert b.layout == "clam_h5" and b.coords.dtype == np.int64
    np.testing.assert_array_equal(b.features, feats)
    pt = load_bag(tmp_path / "pt_files" / "s1.pt")
    assert pt.layout == "clam_pt"
    np.testing.assert_array_equal(pt.features, feats)
    np.testing.assert_array_equal(pt.coords, coords)  # found in the sibling h5_files/
    assert list_bags(tmp_path) == {"s1": tmp_path / "h5_files" / "s1.h5"}
    assert set(list_bags(tmp_path / "pt_files")) == {"s1", "s2"}


def test_reads_trident_and_stamp_and_slideflow(tmp_path):
    rng = np.random.default_rng(3)
    feats, coords, *_ = _bag(rng, n=12)
    tdir = tmp_path / "20x_256px_0px_overlap" / "features_uni_v1"
    tdir.mkdir(parents=True)
    with h5py.File(tdir / "s1.h5", "w") as h5:  # TRIDENT: (1, D) chunks, fp16 possible, attrs on coords
        d = h5.create_dataset("features", data=feats.astype(np.float16), chunks=(1, 6))
        d.attrs.update({"name": "s1", "savetodir": str(tdir), "encoder": "uni_v1"})
        c = h5.create_dataset("coords", data=coords, chunks=(1, 2))
        c.attrs.update({"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                        "target_magnification": 20, "overlap": 0, "name": "s1", "savetodir": "None"})
    torch.save(feats, tdir / "s2.pt")  # TRIDENT saveas='pt': a pickled numpy array
    b = load_bag(tdir / "s1.h5")
    assert b.layout == "trident" and b.features.dtype == np.float32
    np.testing.assert_allclose(b.features, feats, atol=1e-2)
    assert b.coords_attrs["patch_size_level0"] == 512 and b.coords_attrs["savetodir"] is None
    np.testing.assert_array_equal(load_bag(tdir / "s2.pt").features, feats)
    assert set(list_bags(tdir.parent, encoder="uni_v1")) == {"s1", "s2"}

    with h5py.File(tmp_path / "stamp.h5", "w") as h5:  # STAMP: feats fp16, coords float µm
        h5.create_dataset("feats", data=feats.astype(np.float16))
        h5.create_dataset("coords", data=(coords * 0.5).astype(np.float32))
        h5.attrs.update({"stamp_version": "2.0.0", "extractor": "uni", "unit": "um", "tile_size_um": 256.0,
                         "tile_size_px": 224, "feat_type": "tile"})
    s = load_bag(tmp_path / "stamp.h5")
    assert s.layout == "stamp" and s.coords_unit == "um" and s.features.dtype == np.float32
    np.testing.assert_allclose(s.coords, coords * 0.5)
    assert s.attrs["extractor"] == "uni"

    torch.save(torch.from_numpy(feats), tmp_path / "sf.pt")  # slideflow: tile centres in .index.npz
    np.savez(tmp_path / "sf.index.npz", coords + 128)
    sf = load_bag(tmp_path / "sf.pt")
    assert sf.layout == "slideflow" and sf.coords_attrs["coords_ref"] == "center"
    np.testing.assert_array_equal(sf.coords, coords + 128)

    with h5py.File(tmp_path / "junk.h5", "w") as h5:
        h5.create_dataset("x", data=[1])
    with pytest.raises(ValueError, match="no features"):
        load_bag(tmp_path / "junk.h5")
    with pytest.raises(FileNotFoundError):
        load_bag(tmp_path / "nope.h5")
