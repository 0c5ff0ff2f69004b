"""The committed toy example pairs, their provenance tags, and the photo warning."""

import dataclasses
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from e4e_lab.method.masks import load_mask
from e4e_lab.toy import world
from e4e_lab.toy.examples import toy_world_info, write_examples

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "example" / "toy"


def test_committed_examples_are_what_the_world_draws(tmp_path):
    written = write_examples(tmp_path)
    assert {p.name for p in written} == {p.name for p in EXAMPLES.iterdir()}
    for path in written:
        if path.suffix == ".png":
            ours, committed = (np.asarray(Image.open(p)) for p in (path, EXAMPLES / path.name))
            assert np.array_equal(ours, committed), path.name
        else:
            assert path.read_text() == (EXAMPLES / path.name).read_text(), path.name


def test_each_species_has_a_held_out_pair_with_exact_masks():
    for species in world.SPECIES:
        for role in ("structure", "appearance"):
            info = toy_world_info(EXAMPLES / f"{species}_{role}.png")
            assert info["species"] == species and info["role"] == role
            assert world.is_heldout(info["seed"])
            mask = load_mask(EXAMPLES / f"{species}_{role}_mask.png")
            parts = world.sample(info["seed"], info["size"], species).parts
            assert np.array_equal(mask.numpy() > 0, parts > 0)
    assert toy_world_info(ROOT / "example" / "chelsea_cat.png") is None


def test_a_photo_given_to_the_toy_model_is_warned_about(models, tmp_path, caplog):
    from e4e_lab.session import Lab

    toy = dataclasses.replace(models, kind="toy")  # the tiny weights, labelled as the toy model
    lab = Lab(models=toy, cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        lab.load_image(EXAMPLES / "bird_structure.png", 64)
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        lab.load_image(ROOT / "example" / "chelsea_cat.png", 64)
    assert any("not a toy-world image" in r.getMessage() for r in caplog.records)
