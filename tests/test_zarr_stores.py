"""The workflow's Zarr stores open with plain xarray, as the README shows, without a warning.

The rules declare a store by its ``zarr.json`` instead of as a ``directory()`` output: Snakemake
marks directory outputs with a ``.snakemake_timestamp`` file inside them, and Zarr 3 warned on
every open of such a store (``ZarrUserWarning: Object at .snakemake_timestamp is not recognized
as a component of a Zarr hierarchy``).
"""

from __future__ import annotations

import warnings

import xarray as xr

from saliency_fingerprints.store import remove_empty_store_folders, store_root


def test_every_store_of_the_workflow_opens_without_a_warning(tiny_run):
    stores = sorted(tiny_run.glob("results/**/*.zarr"))
    kinds = {store.relative_to(tiny_run / "results").parts[0] for store in stores}
    assert kinds == {"data", "saliency", "sanity"}
    for store in stores:
        assert sorted(p.name for p in store.iterdir() if p.name.startswith(".")) == [], store
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = xr.open_zarr(store, consolidated=False)  # as in the README
            assert ds.data_vars, store
            ds.close()


def test_store_root_and_empty_store_folders(tmp_path):
    store = tmp_path / "a.zarr"
    assert store_root(store / "zarr.json") == str(store)
    assert store_root(tmp_path / "model.safetensors") == str(tmp_path / "model.safetensors")
    # Snakemake makes the folder of a declared <store>/zarr.json before the job; a failed job
    # leaves it empty and it is removed, a finished store is kept
    store.mkdir()
    finished = tmp_path / "b.zarr"
    finished.mkdir()
    (finished / "zarr.json").write_text("{}")
    remove_empty_store_folders([str(store / "zarr.json"), str(finished / "zarr.json")])
    assert not store.exists() and (finished / "zarr.json").exists()


def test_text_coordinates_are_written_as_variable_length_strings(tmp_path):
    """Fixed-length UTF-32 text has no Zarr v3 specification (zarr warns that such stores may
    become unreadable); the writers store variable-length strings, which read back equal."""
    import numpy as np

    from saliency_fingerprints.store import ChunkedMapWriter, open_store, write_dataset

    split = np.array(["train", "test", "train"], dtype="<U5")
    ds = xr.Dataset(
        {"label": ("sample", np.array(["a", "bb", "a"]))},
        coords={"sample": np.arange(3), "split": ("sample", split)},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_dataset(ds, tmp_path / "table.zarr")
        with ChunkedMapWriter(
            tmp_path / "maps.zarr",
            shape=(3, 1, 2, 2),
            chunk_size=2,
            coords={"sample": np.arange(3), "split": ("sample", split)},
            attrs={},
            fingerprint="f",
            data_vars={"note": ("sample", np.full(3, "", dtype="<U4"))},
        ) as writer:
            for index, start, stop in [(0, 0, 2), (1, 2, 3)]:
                note = np.array(["x", "yyyy", "z"], dtype="<U4")[start:stop]
                writer.write_chunk(index, np.zeros((stop - start, 1, 2, 2)), {"note": note})
        table, maps = open_store(tmp_path / "table.zarr"), open_store(tmp_path / "maps.zarr")
        assert list(table["split"].values) == list(split)
        assert list(table["label"].values) == ["a", "bb", "a"]
        assert list(maps["split"].values) == list(split)
        assert list(maps["note"].values) == ["x", "yyyy", "z"]
        assert (maps["split"].values == "train").tolist() == [True, False, True]
