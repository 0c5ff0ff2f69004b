"""What the viewers show and the evaluation measures (no UI code here).

- ``grids.py``: pixels <-> grid cells, the injected grids, masks at those grids;
- ``lookup.py``: :class:`FeatureLookup`, a click answered by one matrix-vector product;
- ``recording.py``: a transfer recorded with its matched features; match changes;
- ``warps.py``: the reference warped into the target layout, unused reference pixels;
- ``attention_maps.py``: the attention of one query position, and its layouts;
- ``config_diff.py``: fields that differ between runs' configs;
- ``adain_demo.py``: masked AdaIN on one latent, with its statistics;
- ``parts.py``: joint k-means parts of a pair and the part confusion;
- ``metrics.py``: the weights-free scores of a result;
- ``sweep.py``: a grid of transfers over one or two config fields, and its contact sheet.
"""
