"""npe2 reader and writers: CT and masks survive a save and a reopen through the plugin.

A CT saved by the plugin reopens as the same HU array on the same geometry; a mask
saved by the plugin (or any small-integer NIfTI volume) reopens as a Labels layer on
the CT's grid, not as an image offered for diagnosis.
"""

from __future__ import annotations

import nibabel as nib
import npe2
import numpy as np
import pytest

from napari_covid_attention._layer_data import labels_layer_data, plugin_meta

PLUGIN = "napari-covid-attention"
# An oblique-ish RAS file: voxel axes (i, j, k) are not the canonical order, with flips,
# so the reader reorients and the writers must put the voxels back on the file's order.
RAS_AFFINE = np.array(
    [[0.0, -0.8, 0.0, 90.0], [-0.75, 0.0, 0.0, 110.0], [0.0, 0.0, 2.5, -60.0], [0.0, 0.0, 0.0, 1.0]]
)


@pytest.fixture(autouse=True, scope="module")
def _plugin_discovered():
    """npe2.read/write look the plugin up in npe2's plugin manager (napari fills it on start)."""
    manager = npe2.PluginManager.instance()
    try:
        manager.get_manifest(PLUGIN)
    except KeyError:
        manager.discover(include_npe1=False)
    manager.get_manifest(PLUGIN)


def _ct_xyz(shape=(18, 20, 9), seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(-1000, 1200, shape).astype(np.int16)
    data[:3] = -1000  # air, as in every chest CT
    return data


def _write_nifti(path, data, affine=RAS_AFFINE):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _read(path):
    layers = npe2.read([str(path)], stack=False, plugin_name=PLUGIN)
    assert len(layers) == 1
    return layers[0]


@pytest.fixture
def ct_file(tmp_path):
    data = _ct_xyz()
    return _write_nifti(tmp_path / "ct.nii.gz", data), data


# ----- CT image writer ------------------------------------------------------------------


def test_ct_round_trip_through_the_plugin_keeps_array_and_geometry(ct_file, tmp_path):
    path, xyz = ct_file
    data, kwargs, layer_type = _read(path)
    assert layer_type == "image"
    written = npe2.write(str(tmp_path / "saved.nii.gz"), [(data, kwargs, "image")], plugin_name=PLUGIN)
    assert written == [str(tmp_path / "saved.nii.gz")]
    again, again_kwargs, again_type = _read(written[0])
    assert again_type == "image"
    np.testing.assert_array_equal(again, data)
    assert again.dtype == np.int16
    assert np.allclose(plugin_meta(again_kwargs["metadata"])["affine"], plugin_meta(kwargs["metadata"])["affine"])
    assert np.allclose(again_kwargs["scale"], kwargs["scale"])
    assert np.allclose(again_kwargs["translate"], kwargs["translate"])
    # on the source file's own voxel order and affine: it overlays the original in any tool
    saved = nib.load(written[0])
    assert np.allclose(saved.affine, RAS_AFFINE)
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), xyz)
    assert saved.get_data_dtype() == np.int16


def test_ct_with_fractional_values_is_written_as_float32(tmp_path):
    xyz = _ct_xyz().astype(np.float32) + 0.25
    path = _write_nifti(tmp_path / "float.nii", xyz)
    data, kwargs, _ = _read(path)
    out = npe2.write(str(tmp_path / "float_out.nii"), [(data, kwargs, "image")], plugin_name=PLUGIN)[0]
    saved = nib.load(out)
    assert saved.get_data_dtype() == np.float32
    again, _, _ = _read(out)
    np.testing.assert_array_equal(again, data)


def test_an_image_without_plugin_metadata_is_placed_from_scale_and_translate(tmp_path):
    hu = np.full((6, 10, 12), -1000, np.int16)
    hu[2:4, 3:7, 4:9] = 40
    meta = {"scale": np.array([2.5, 0.7, 0.8]), "translate": np.array([-50.0, 12.0, -30.0]), "metadata": {}}
    out = npe2.write(str(tmp_path / "plain"), [(hu, meta, "image")], plugin_name=PLUGIN)[0]
    assert out.endswith("plain.nii.gz")
    data, kwargs, layer_type = _read(out)
    assert layer_type == "image"
    np.testing.assert_array_equal(data, hu)
    assert np.allclose(kwargs["scale"], meta["scale"]) and np.allclose(kwargs["translate"], meta["translate"])


def test_the_image_writer_refuses_what_is_not_a_3d_ct(tmp_path):
    from napari_covid_attention._writer import write_image

    with pytest.raises(ValueError, match="3D"):
        write_image(str(tmp_path / "slice.nii.gz"), np.zeros((8, 8), np.int16), {})
    with pytest.raises(ValueError, match="RGB"):
        write_image(str(tmp_path / "photo.nii.gz"), np.zeros((4, 8, 8, 3), np.uint8), {"rgb": True})


# ----- labels writer + reader -----------------------------------------------------------


def test_labels_round_trip_reopens_as_labels_on_the_ct_geometry(ct_file, tmp_path):
    path, _ = ct_file
    data, kwargs, _ = _read(path)
    ct_meta = plugin_meta(kwargs["metadata"])
    mask = np.zeros(data.shape, np.uint8)
    mask[2:5, 4:12, 3:9] = 1
    mask[6:8, 10:15, 2:5] = 2
    labels = labels_layer_data(
        mask, np.asarray(ct_meta["affine"]), "infection", "infection_mask", source_ornt=np.asarray(ct_meta["source_ornt"])
    )
    written = npe2.write(str(tmp_path / "mask.nii.gz"), [labels], plugin_name=PLUGIN)
    back, back_kwargs, layer_type = _read(written[0])
    assert layer_type == "labels"
    np.testing.assert_array_equal(back, mask)
    assert np.issubdtype(back.dtype, np.integer)
    assert np.allclose(back_kwargs["scale"], kwargs["scale"])
    assert np.allclose(back_kwargs["translate"], kwargs["translate"])
    assert np.allclose(plugin_meta(back_kwargs["metadata"])["affine"], ct_meta["affine"])
    # the file itself overlays the source CT voxel for voxel
    assert np.allclose(nib.load(written[0]).affine, RAS_AFFINE)


def test_labels_with_many_ids_written_by_the_plugin_reopen_as_labels(tmp_path):
    mask = np.zeros((5, 8, 9), np.int32)
    mask.flat[::3] = np.arange(1, 121) * 100  # 120 ids up to 12000
    meta = {"scale": np.array([2.0, 1.0, 1.0]), "translate": np.zeros(3), "metadata": {}}
    out = npe2.write(str(tmp_path / "ids.nii.gz"), [(mask, meta, "labels")], plugin_name=PLUGIN)[0]
    back, _, layer_type = _read(out)
    assert layer_type == "labels"
    np.testing.assert_array_equal(back, mask)


def test_labels_round_trip_in_the_viewer(make_napari_viewer, ct_file, tmp_path):
    from napari.layers import Image, Labels

    viewer = make_napari_viewer()
    ct = viewer.open(str(ct_file[0]), plugin=PLUGIN)[0]
    assert isinstance(ct, Image)
    mask = np.zeros(ct.data.shape, np.uint8)
    mask[3:6, 2:9, 4:7] = 1
    painted = viewer.add_labels(mask, name="painted", scale=ct.scale, translate=ct.translate)
    out = tmp_path / "painted.nii.gz"
    painted.save(str(out), plugin=PLUGIN)
    reopened = viewer.open(str(out), plugin=PLUGIN)[0]
    assert isinstance(reopened, Labels)
    np.testing.assert_array_equal(reopened.data, mask)
    np.testing.assert_allclose(reopened.scale, ct.scale)
    np.testing.assert_allclose(reopened.translate, ct.translate)
    corner = np.array(ct.data.shape) - 1
    np.testing.assert_allclose(reopened.data_to_world(corner), ct.data_to_world(corner))

    saved_ct = tmp_path / "ct_saved.nii.gz"
    ct.save(str(saved_ct), plugin=PLUGIN)
    again = viewer.open(str(saved_ct), plugin=PLUGIN)[0]
    assert isinstance(again, Image)
    np.testing.assert_array_equal(again.data, ct.data)
    assert np.allclose(nib.load(str(saved_ct)).affine, RAS_AFFINE)


def test_small_integer_volumes_from_other_tools_open_as_labels(tmp_path):
    xyz = np.zeros((12, 10, 6), np.uint8)
    xyz[2:6, 3:8, 1:4] = 1
    xyz[7:10, 3:8, 1:4] = 2
    data, kwargs, layer_type = _read(_write_nifti(tmp_path / "seg.nii.gz", xyz))
    assert layer_type == "labels"
    assert set(np.unique(data)) == {0, 1, 2}
    ct_like, ct_kwargs, _ = _read(_write_nifti(tmp_path / "ct.nii.gz", np.where(xyz > 0, 40, -1000).astype(np.int16)))
    assert np.allclose(kwargs["scale"], ct_kwargs["scale"]) and np.allclose(kwargs["translate"], ct_kwargs["translate"])
    np.testing.assert_array_equal(data > 0, ct_like > 0)


@pytest.mark.parametrize(
    "xyz",
    [
        _ct_xyz(),  # a CT in HU (negative values)
        np.random.default_rng(2).integers(0, 256, (12, 10, 6)).astype(np.uint8),  # a windowed 0-255 CT
        np.random.default_rng(3).integers(0, 4096, (12, 10, 6)).astype(np.uint16),  # raw detector values
        np.random.default_rng(4).integers(0, 3, (12, 10, 6)).astype(np.float32),  # floats are never guessed as labels
    ],
    ids=["hu", "windowed", "raw", "float"],
)
def test_scans_are_not_mistaken_for_labels(tmp_path, xyz):
    _, _, layer_type = _read(_write_nifti(tmp_path / "scan.nii.gz", xyz))
    assert layer_type == "image"
