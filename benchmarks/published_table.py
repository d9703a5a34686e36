"""Presets: analytic parameters and forward GFLOPs next to the published figures (issue #2).

The published numbers live once, in tests/published/test_published_params_flops.py (with their
sources); this script prints them beside ``vlscale.costs`` as a Markdown table:

    .venv/bin/python benchmarks/published_table.py > reports/presets_vs_published.md
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vlscale.costs.flops import forward_flops
from vlscale.costs.params import count_params
from vlscale.specs import get_model, list_models

TESTS = Path(__file__).resolve().parents[1] / "tests" / "published"


def published() -> tuple[dict, dict]:
    path = TESTS / "test_published_params_flops.py"
    spec = importlib.util.spec_from_file_location("published_params_flops", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OPENCLIP_PROFILE, module.EVA_CLIP_PAPER


def pct(ours: float, theirs: float) -> str:
    return f"{100 * (ours / theirs - 1):+.2f}%"


def main() -> None:
    profile, eva = published()
    print("# Presets: analytic vs published\n")
    print("Published: OpenCLIP docs/model_profile.csv (M params, GFLOPs per sample at the preset's")
    print("image size and context length); EVA-CLIP-18B paper Table 1 for EVA-CLIP-8B/18B.\n")
    print("| model | image M (ours / pub) | text M (ours / pub) | image GF (ours / pub) "
          "| text GF (ours / pub) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name in list_models():
        spec = get_model(name)
        p, f = count_params(spec), forward_flops(spec)
        im, tm, ig, tg = p.image / 1e6, p.text / 1e6, f.image / 1e9, f.text / 1e9
        if name in profile:
            pi, pt, gi, gt = profile[name]
            print(
                f"| {name} | {im:.2f} / {pi} ({pct(im, pi)}) | {tm:.2f} / {pt} ({pct(tm, pt)}) "
                f"| {ig:.2f} / {gi} ({pct(ig, gi)}) | {tg:.2f} / {gt} ({pct(tg, gt)}) |"
            )
        elif name in eva:
            pi, pt = (x / 1e6 for x in eva[name])
            print(
                f"| {name} | {im:.0f} / {pi:.0f} ({pct(im, pi)}) | {tm:.2f} / {pt:.0f} "
                f"({pct(tm, pt)}) | {ig:.1f} / — | {tg:.2f} / — |"
            )
        else:
            print(f"| {name} | {im:.3f} / — | {tm:.3f} / — | {ig:.4f} / — | {tg:.4f} / — |")


if __name__ == "__main__":
    main()
