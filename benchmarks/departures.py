"""How much each documented departure from the published computation moves the result.

Runs the transfer once at the published settings (the defaults) and once per option
that departs from them, on the same pair and seed, and prints for each the RMS change
of the output latent and the mean / max absolute change of the result image (0-255).
With the toy model (``--model toy``) it also prints the part-colour accuracy of each
run over held-out toy pairs, so that a departure's effect on what the method is for
is measured, not only its size.

    python benchmarks/departures.py --model tiny
    python benchmarks/departures.py --model toy --pairs 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e4e_lab.method.config import TransferConfig  # noqa: E402
from e4e_lab.session import Lab  # noqa: E402

#: Each option that departs from the published computation (name, config changes,
#: image-loading changes).
OPTIONS = [
    ("schedule=exact", dict(schedule="exact"), {}),
    ("mask_resize=area", dict(mask_resize="area"), {}),
    ("freeu=diffusers", dict(freeu="diffusers"), {}),
    ("freeu=off", dict(freeu="off"), {}),
    ("resample=lanczos", {}, dict(resample="lanczos")),
]


def example_pairs(lab: Lab, n: int, size: int | None):
    """The example pair (photos) for random-weight models, held-out toy pairs for toy."""
    if lab.models.model_id == "toy":
        from e4e_lab.toy import world

        out = []
        for i in range(n):
            s, a = world.pair(i, size or lab.models.default_size)
            out.append((a.image, s.image, torch.from_numpy(a.parts > 0).float(),
                        torch.from_numpy(s.parts > 0).float(), s.species, (s, a)))
        return out
    return [("example/chelsea_cat.png", "example/horse_silhouette.png", None, None, "animal",
             None)]


def run(lab: Lab, spec, config: TransferConfig, size, load: dict):
    app, struct, app_mask, struct_mask, domain, _ = spec
    kwargs = dict(appearance_mask=app_mask, structure_mask=struct_mask) if app_mask is not None \
        else dict(boxes=ROOT / "example" / "boxes.json", mask="box")
    pair = lab.pair(app, struct, size=size, **kwargs, **load)
    return lab.transfer(pair, config.replace(domain=domain))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--size", type=int)
    p.add_argument("--pairs", type=int, default=1, help="toy pairs (toy model only)")
    p.add_argument("--device")
    args = p.parse_args(argv)
    lab = Lab(model=args.model, device=args.device, use_disk_cache=False)
    specs = example_pairs(lab, args.pairs, args.size)
    base = TransferConfig()
    accuracy = None
    if lab.models.model_id == "toy":
        from e4e_lab.toy.quality import part_colour_accuracy as accuracy
    print(f"model {lab.models.model_id}, {len(specs)} pair(s), published settings: "
          f"schedule={base.schedule} mask_resize={base.mask_resize} freeu={base.freeu} "
          "resample=bicubic")
    reference = [run(lab, spec, base, args.size, {}) for spec in specs]

    def describe(results) -> str:
        lat = torch.stack([(r.latents[0] - b.latents[0]).pow(2).mean().sqrt()
                           for r, b in zip(results, reference)]).mean()
        px = torch.cat([((r.image - b.image) * 255).abs().flatten()
                        for r, b in zip(results, reference)])
        text = f"latent RMS {lat:.4f} | pixels mean {px.mean():.2f} max {px.max():.0f} /255"
        if accuracy is not None:
            acc = [accuracy(r.image, spec[5][0], spec[5][1]) for r, spec in zip(results, specs)]
            text += f" | part-colour accuracy {sum(acc) / len(acc):.3f}"
        return text

    if accuracy is not None:
        acc = [accuracy(r.image, spec[5][0], spec[5][1]) for r, spec in zip(reference, specs)]
        print(f"{'published':18s}: part-colour accuracy {sum(acc) / len(acc):.3f}")
    for name, changes, load in OPTIONS:
        results = [run(lab, spec, base.replace(**changes), args.size, load) for spec in specs]
        print(f"{name:18s}: {describe(results)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
