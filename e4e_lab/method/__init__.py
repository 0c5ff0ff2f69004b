"""The method, one stage per file (stage numbers as in ``docs/method.md``).

=========  ==================================================================
stage      file
=========  ==================================================================
—          ``config.py``: :class:`TransferConfig`, every knob and its checks;
           ``config_groups.py``: its groups (inversion, injection, AdaIN, ...)
1          ``images.py``: loading and fitting images (:class:`LoadedImage`)
1          ``masks.py``: object masks, and masks on the layer and latent grids
2          ``inversion.py``: edit-friendly DDPM inversion, cached;
           ``seeding.py``: each image's own noise stream
2, 4g      ``schedule.py``: the DDPM (eta = 1) step shared by inversion and denoising
2, 5       ``latents.py``: VAE encoding and decoding, latent previews
4a-d       ``layers.py``: which layers are injected, the rows of the UNet batch;
           ``attention.py``: the attention processors (feature, V/KV, cross-image)
4b         ``correspondence.py``: nearest-neighbour matching, correspondence fields;
           ``regions.py``: region pairs, matching inside partner regions per layer
4f         ``adain.py``: masked AdaIN on latents
3-5        ``transfer.py``: initialisation, the denoising loop, decoding
—          ``recording.py``: what a run records for the viewers (a hook)
=========  ==================================================================

Boxes and the JSON input formats are in :mod:`e4e_lab.io.formats`; the models (SD 1.5,
FreeU, SAM-HQ, DIFT: stage 0) in :mod:`e4e_lab.models`.
"""
