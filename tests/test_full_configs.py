"""The paper-size (`--full`) configurations of the three reproduced networks build and run a forward pass with the
right output shapes. They are meant for a GPU and were not trained here (no GPU lent); this checks that a site
with one can run `qc train ... --full` without discovering a shape error after hours of data simulation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_chest_iqa_full_forward():
    from detectors import chest_iqa as c

    cfg = c.FULL_CONFIG
    m = c.build_model(widths=tuple(cfg["widths"]), convs_per_block=cfg["convs_per_block"], n_scalars=3,
                      in_ch=cfg["in_ch"], batch_norm=cfg["batch_norm"], masked_pool=cfg["masked_pool"],
                      abs_first=cfg["abs_first"]).eval()
    crops = np.random.default_rng(0).normal(0, 0.05, (1,) + c.STORE).astype(np.float32)
    x = torch.from_numpy(c._center(c.to_channels(crops, cfg["in_ch"]), c.CROP).copy())
    with torch.inference_mode():
        out = m(x, torch.zeros(1, 3))
    assert out["window"].shape == (1, 2) and out["dose"].shape == (1, 2)
    assert out["snr"].shape == (1,) and out["brisque"].shape == (1,)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert sum(p.numel() for p in m.parameters()) > 10 * sum(
        p.numel() for p in c.build_model(in_ch=5, batch_norm=False, masked_pool=True, abs_first=True).parameters())


def test_noise2quality_full_forward():
    from detectors import noise2quality as n

    cfg = n.FULL_CONFIG
    m = n.build_model(features=tuple(cfg["features"]), dropout=cfg["dropout"], norm=cfg["norm"]).eval()
    w = np.random.default_rng(0).uniform(0, 1, (1, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        smap, logits = m(torch.from_numpy(n.input_channels(w)), torch.ones(1, 64, 64, dtype=torch.bool))
    assert tuple(smap.shape) == (1, 64, 64) and tuple(logits.shape) == (1, len(n.DOSE_LEVELS_PCT))


def test_tfkt_full_forward():
    from detectors import tfkt

    m = tfkt.build_model(tfkt.FULL_CONFIG)
    s = tfkt.score_slices(m, np.full((1, tfkt.SIZE, tfkt.SIZE), 0.5, np.float32))
    assert s.shape == (1,) and 0.0 <= s[0] <= 4.0
