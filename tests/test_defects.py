"""Published-code defects (docs/method.md, "Where we differ") not covered elsewhere.

1, 2: test_transfer.py::test_every_mode_runs_with_and_without_guidance
3: test_transfer.py::test_default_config_without_sam_masks
4: test_attention.py::test_structure_refresh_hits_the_injected_row
5: test_transfer.py::test_branches_reconstruct_their_images
6: test_inversion.py::test_cache_reuses_and_keys_on_content
8: test_attention.py::test_explicit_attention_only_when_recording (+ dtype below)
9: test_correspondence.py::test_matches_brute_force_with_masks

Deliberate differences (docs/method.md items 11-17):
11 (last noise map kept): test_inversion.py::test_round_trip_is_exact
12 (background cells never win): test_correspondence.py::test_background_reference_cells_never_win
13 (AdaIN cells equal to 1): test_fidelity.py::test_adain_masks_are_the_published_ones
15 (batch layout): test_fidelity.py (the whole-run equivalence)
16 (noise per image): test_fidelity.py::test_trajectories_have_independent_noise
The options (schedule, mask_resize, freeu, resample): test_fidelity.py,
test_config.py, test_freeu.py, test_images.py.
"""

import re
from pathlib import Path

import torch

from e4e_lab.io.formats import lookup_box
from e4e_lab.models.loading import default_dtype

LIB = Path(__file__).resolve().parents[1] / "e4e_lab"


def test_7_no_hard_coded_cuda():
    """Tensors go to the device the caller passed; only the default choice names CUDA."""
    placing = re.compile(r"""(\.to|device)\(\s*["']cuda|device\s*=\s*["']cuda""")
    for path in LIB.rglob("*.py"):
        text = path.read_text()
        assert ".cuda()" not in text, path
        for line in text.splitlines():
            if placing.search(line):
                assert path.name == "loading.py", (path, line)


def test_8_half_precision_on_cuda_full_on_cpu():
    assert default_dtype(torch.device("cuda")) == torch.float16
    assert default_dtype(torch.device("cpu")) == torch.float32


def test_10_box_lookup_by_file_name():
    boxes = {"cat.png": [1, 2, 3, 4], "bird_02": [5, 6, 7, 8]}
    assert lookup_box(boxes, "cat.png") == [1, 2, 3, 4]  # no digits in the name
    assert lookup_box(boxes, "/some/folder/cat.png") == [1, 2, 3, 4]
    assert lookup_box(boxes, "bird_02.jpg") == [5, 6, 7, 8]  # by stem
    assert lookup_box(boxes, "dog.png") is None  # missing: no crash, no box
