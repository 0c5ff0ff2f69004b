"""The notebooks under test and their small parameters, shared by the headless runs
(``test_notebooks.py``) and the browser runs (``test_browser.py``)."""

from __future__ import annotations

from pathlib import Path

from e4e_lab.models import BANNERS

EXPECTED = ["01_quickstart", "02_boxes_and_masks", "03_correspondence_explorer",
            "04_attention_and_injection", "05_interactive_tuning", "06_method_walkthrough",
            "07_multi_object", "08_compare_methods"]
BANNER = BANNERS["tiny"]

# small: 128 px (the toy pairs' own size; tiny latent 16x16, injected grids 8x8 and 16x16),
# 14 denoising steps. Not 64 px: there the coarsest injected grid is 4x4 (16 px cells) and
# the toy creatures' masks cover fewer than 2 of its cells, which the transfer refuses.
SMALL = dict(model="tiny", size=128, num_steps=20, skip_steps=6, feat_range=[2, 12],
             adain_range=[10, 20])


def extra_parameters(name: str, tmp: Path) -> dict:
    return {
        "01_quickstart": {"out_dir": str(tmp / "quickstart")},
        "02_boxes_and_masks": {"boxes_out": str(tmp / "boxes.json")},
        "03_correspondence_explorer": {"dift_block": 2, "dift_ensemble": 2,
                                       "feature_steps": [2, 6]},
        "04_attention_and_injection": {"attention_step": 3},
        "05_interactive_tuning": {"export_dir": str(tmp / "gallery")},
        "06_method_walkthrough": {},
        "07_multi_object": {"pairs_out": str(tmp / "pairs" / "multi_pairs.json")},
        # a fine DIFT grid (up-block 2) so that k = 4 parts have room
        "08_compare_methods": {"pbe_steps": 10, "dift_block": 2, "dift_ensemble": 2},
    }[name]
