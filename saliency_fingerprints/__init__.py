"""saliency-fingerprints: do saliency maps identify the network that made them?

Library code behind the Snakemake workflow. One module per stage:

* :mod:`.datasets`  - dataset sources -> one labelled Zarr store (images, labels, split)
* :mod:`.models`    - architectures (registry by name)
* :mod:`.training`  - seeded, deterministic classifier training (primaries and secondaries)
* :mod:`.saliency`  - batched saliency engines, one module per method (registry by name)
* :mod:`.store`     - chunked, atomic, resumable Zarr writing; xarray reading
* :mod:`.shuffle`   - pixel-shuffled controls
* :mod:`.secondary` - map preprocessing, image-disjoint split, secondary datasets
* :mod:`.evaluate`  - cross-evaluation tables
* :mod:`.plots`     - heatmaps and map grids
"""

__version__ = "0.1.0"
