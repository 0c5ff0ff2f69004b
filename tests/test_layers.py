"""Where injection happens (``e4e_lab/method/layers.py``): the decoder self-attention
layers of the two finest resolutions."""

from e4e_lab.method.layers import injected_layers


def test_injected_layers_are_two_finest_decoder_resolutions(models):
    layers = injected_layers(models.unet)
    # tiny model: up-blocks 2 and 3 hold the finest decoder self-attention, 3 layers each
    assert len(layers) == 6
    assert all(l.startswith(("up_blocks.2.", "up_blocks.3.")) and ".attn1." in l for l in layers)
