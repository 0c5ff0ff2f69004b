"""Quality metrics for appearance transfer. Each says what it measures and its direction.

Images are (3, H, W) float tensors in [0, 1]; masks are (H, W) 0/1.

Structure preservation (result vs structure image):
- :func:`ssim` (higher is better, 1 = identical): SSIM of the greyscale images; no
  network weights.
- :func:`edge_ssim` (higher is better): SSIM of Sobel edge magnitudes, less sensitive
  to the colour change that a transfer is supposed to make.
- :func:`self_similarity_distance` (lower is better, 0 = same structure): distance
  between the cosine self-similarity matrices of ViT patch features (the DINO-based
  structure loss of Splicing ViT / Cross-Image Attention). Needs a ViT: a real one
  from :func:`load_vit` ("facebook/dino-vitb8" by default) or a tiny random one.

Appearance transfer (result vs appearance image):
- :func:`part_colour_distance` (lower is better): mean CIE-Lab distance between the
  mean colour of each target part in the result and of the reference part it matched.
- :func:`histogram_distance` (lower is better, 0 = same colours): chi-square distance
  of Lab colour histograms inside the two masks.

Correspondence quality:
- :func:`pck` (higher is better): share of keypoints whose predicted match lies within
  ``alpha * max(h, w)`` of the annotated one (SPair-71k's PCK@alpha).
- :func:`cycle_consistency` (higher is better): share of matched target positions
  that the reverse matching sends back within ``radius`` cells.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..method.correspondence import CorrespondenceField, nearest_neighbors
from ..method.masks import mask_at

# ------------------------------------------------------------- colour space --

_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]])
_D65 = torch.tensor([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(3, ...) sRGB in [0, 1] -> (3, ...) CIE-Lab (D65)."""
    rgb = rgb.float().clamp(0, 1)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,j...->i...", _RGB_TO_XYZ, lin)
    xyz = xyz / _D65.view(3, *([1] * (xyz.ndim - 1)))
    eps = 216 / 24389
    f = torch.where(xyz > eps, xyz.clamp_min(1e-12) ** (1 / 3), (24389 / 27 * xyz + 16) / 116)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _grey(img: torch.Tensor) -> torch.Tensor:
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).float()


# ----------------------------------------------------------------- structure --

def _ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5,
              data_range: float = 1.0) -> torch.Tensor:
    coords = torch.arange(window, dtype=torch.float32) - window // 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :])[None, None]
    pad = window // 2
    blur = lambda x: F.conv2d(F.pad(x[None, None], [pad] * 4, mode="reflect"), kernel)[0, 0]  # noqa: E731
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ssim(result: torch.Tensor, structure: torch.Tensor) -> float:
    """Mean SSIM of the greyscale images (Gaussian window 11, sigma 1.5). Higher is better."""
    return float(_ssim_map(_grey(result), _grey(structure)).mean())


def sobel_magnitude(grey: torch.Tensor) -> torch.Tensor:
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    k = torch.stack([kx, kx.T])[:, None]
    g = F.conv2d(F.pad(grey[None, None], [1] * 4, mode="replicate"), k)[0]
    return g.pow(2).sum(0).sqrt()


def edge_ssim(result: torch.Tensor, structure: torch.Tensor) -> float:
    """SSIM between Sobel edge magnitudes (normalised to [0, 1]). Higher is better."""
    ea, eb = sobel_magnitude(_grey(result)), sobel_magnitude(_grey(structure))
    top = max(float(ea.max()), float(eb.max()), 1e-8)
    return float(_ssim_map(ea / top, eb / top).mean())


def load_vit(model_id: str = "facebook/dino-vitb8", device="cpu", local_files_only: bool = False):
    """A transformers ViT (DINO by default) for :func:`self_similarity_distance`."""
    from transformers import ViTModel

    from ..errors import ModelUnavailableError

    try:
        return ViTModel.from_pretrained(model_id, local_files_only=local_files_only,
                                        add_pooling_layer=False).to(device).eval()
    except Exception as exc:
        raise ModelUnavailableError(f"ViT '{model_id}' could not be loaded ({type(exc).__name__}); "
                                    f"download it with `hf download {model_id}`") from None


@torch.no_grad()
def vit_patch_features(vit, img: torch.Tensor) -> torch.Tensor:
    """(N, C) patch tokens of the last layer for one image (ImageNet normalisation)."""
    size = vit.config.image_size
    x = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(next(vit.parameters()).device)
    tokens = vit(pixel_values=x).last_hidden_state[0]
    return tokens[1:].float().cpu()  # drop CLS


def self_similarity_distance(vit, result: torch.Tensor, structure: torch.Tensor) -> float:
    """Mean absolute difference of the patch cosine self-similarity matrices. Lower is better."""
    def selfsim(img):
        f = F.normalize(vit_patch_features(vit, img), dim=-1)
        return f @ f.T

    return float((selfsim(result) - selfsim(structure)).abs().mean())


# ---------------------------------------------------------------- appearance --

def histogram_distance(result: torch.Tensor, reference: torch.Tensor,
                       result_mask: torch.Tensor | None = None,
                       ref_mask: torch.Tensor | None = None, bins: int = 8) -> float:
    """Chi-square distance between Lab histograms inside the masks (0 = same). Lower is better."""
    def hist(img, mask):
        lab = rgb_to_lab(img).reshape(3, -1)
        if mask is not None:
            lab = lab[:, mask_at(mask, tuple(img.shape[1:])).flatten() > 0]
        if lab.shape[1] == 0:
            raise ValueError("histogram_distance: a mask is empty")
        lo = torch.tensor([0.0, -128.0, -128.0])[:, None]
        span = torch.tensor([100.0, 256.0, 256.0])[:, None]
        idx = ((lab - lo) / span * bins).long().clamp(0, bins - 1)
        flat = (idx[0] * bins + idx[1]) * bins + idx[2]
        h = torch.bincount(flat, minlength=bins ** 3).float()
        return h / h.sum()

    p, q = hist(result, result_mask), hist(reference, ref_mask)
    return float(0.5 * ((p - q) ** 2 / (p + q).clamp_min(1e-12)).sum())


def part_colour_distance(result: torch.Tensor, reference: torch.Tensor, parts,
                         field: CorrespondenceField) -> float:
    """Mean Lab distance between each target part's mean colour in the result and the mean
    colour of the reference part it matched most (parts from :mod:`e4e_lab.analysis.parts`).
    Lower is better."""
    conf = parts.confusion(field)
    lab_r = rgb_to_lab(result)
    lab_a = rgb_to_lab(reference)

    def part_means(lab, labels):
        grid = tuple(labels.shape)
        small = F.interpolate(lab[None], size=grid, mode="area")[0].reshape(3, -1)
        lab_flat = labels.flatten()
        sums = torch.zeros(parts.k, 3).index_add_(0, lab_flat.clamp_min(0),
                                                   small.T * (lab_flat >= 0)[:, None])
        counts = torch.bincount(lab_flat.clamp_min(0), weights=(lab_flat >= 0).float(),
                                minlength=parts.k)
        return sums / counts.clamp_min(1)[:, None], counts

    mean_t, count_t = part_means(lab_r, parts.target)
    mean_a, count_a = part_means(lab_a, parts.reference)
    dists = []
    for p in range(parts.k):
        if count_t[p] == 0 or conf[p].sum() == 0:
            continue
        q = int(conf[p].argmax())
        dists.append(float((mean_t[p] - mean_a[q]).norm()))
    return sum(dists) / len(dists) if dists else float("nan")


# ------------------------------------------------------------ correspondence --

def pck(field: CorrespondenceField, target_points: torch.Tensor, ref_points: torch.Tensor,
        image_size: tuple[int, int], alpha: float = 0.1) -> float:
    """PCK@alpha: (K, 2) target and reference keypoints as (x, y) in image pixels of
    ``image_size`` = (width, height); threshold ``alpha * max(width, height)``."""
    w, h = image_size
    ht, wt = field.target_shape
    hr, wr = field.ref_shape
    tx = (target_points[:, 0] / w * wt).long().clamp(0, wt - 1)
    ty = (target_points[:, 1] / h * ht).long().clamp(0, ht - 1)
    idx = field.index[ty * wt + tx]
    px = ((idx % wr).float() + 0.5) / wr * w
    py = ((idx // wr).float() + 0.5) / hr * h
    err = ((px - ref_points[:, 0]) ** 2 + (py - ref_points[:, 1]) ** 2).sqrt()
    ok = (idx >= 0) & (err <= alpha * max(w, h))
    return float(ok.float().mean()) if len(idx) else float("nan")


def cycle_consistency(target: torch.Tensor, ref: torch.Tensor,
                      target_mask: torch.Tensor | None = None,
                      ref_mask: torch.Tensor | None = None, radius: float = 1.0) -> float:
    """Share of matched target cells that the ref -> target matching sends back within
    ``radius`` cells, for (C, h, w) features on the same grid. Higher is better."""
    c, h, w = target.shape
    tm = None if target_mask is None else mask_at(target_mask, (h, w)).flatten()
    rm = None if ref_mask is None else mask_at(ref_mask, tuple(ref.shape[1:])).flatten()
    fwd, _ = nearest_neighbors(target.reshape(c, -1).T, ref.reshape(c, -1).T, tm, rm)
    back, _ = nearest_neighbors(ref.reshape(c, -1).T, target.reshape(c, -1).T, rm, tm)
    start = torch.nonzero(fwd >= 0).flatten()
    if len(start) == 0:
        return float("nan")
    ret = back[fwd[start]]
    ok = ret >= 0
    dy = (ret // w - start // w).float()
    dx = (ret % w - start % w).float()
    close = ok & ((dx ** 2 + dy ** 2).sqrt() <= radius + 1e-6)
    return float(close.float().mean())
