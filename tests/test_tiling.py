"""Large frames are restored in overlapping tiles that blend without seams."""
import numpy as np
import pytest
import torch

from engine.model import RestorerConfig
from engine.runtime import ModelRunner
from engine.tiling import blend_tiles, plan_tiles, tile_weight


class PointwiseModel(torch.nn.Module):
    """A stand-in restorer whose output depends only on each pixel: tiled and whole must agree exactly."""

    def __init__(self, size=8):
        super().__init__()
        self.unet = type("U", (), {"config": type("C", (), {"sample_size": size})()})()
        self.config = RestorerConfig()  # the runner reads its recipe: frames alone, no reference view
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return (x * self.scale + 0.25).clamp(-1, 1)


class BlurModel(PointwiseModel):
    """A restorer with a 5x5 receptive field, like a real one but small enough to reason about."""

    def forward(self, x):
        k = torch.ones(3, 1, 5, 5) / 25
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), k, groups=3)


@pytest.mark.parametrize("h, w", [(200, 136), (64, 300), (128, 128), (72, 65)])
def test_tiles_cover_the_frame_and_weights_sum_to_one(h, w):
    tiles = plan_tiles(h, w, 64, 16) if h % 8 == 0 and w % 8 == 0 else plan_tiles(-(-h // 8) * 8, -(-w // 8) * 8,
                                                                                   64, 16)
    H, W = max(t.y + t.h for t in tiles), max(t.x + t.w for t in tiles)
    ones = [np.ones((t.h, t.w, 1), np.float32) for t in tiles]
    assert np.allclose(blend_tiles(tiles, ones, H, W, 16), 1.0)
    for t in tiles:
        assert tile_weight(t, H, W, 16).min() > 0


def test_tiled_equals_whole_for_a_pointwise_model():
    image = np.random.default_rng(0).random((300, 200, 3), dtype=np.float32)
    tiled = ModelRunner(PointwiseModel(), device="cpu", tile=64, overlap=16).restore([image])[0]
    whole = ModelRunner(PointwiseModel(), device="cpu", tile=512).restore([image])[0]
    assert tiled.shape == image.shape
    assert np.abs(tiled - whole).max() < 1e-6


def test_no_visible_seam_with_a_real_receptive_field():
    y, x = np.mgrid[0:256, 0:256] / 255.0
    image = np.stack([x, y, (x + y) / 2], axis=2).astype(np.float32)
    tiled = ModelRunner(BlurModel(), device="cpu", tile=64, overlap=16).restore([image])[0]
    whole = ModelRunner(BlurModel(), device="cpu", tile=512).restore([image])[0]
    # the tile edges see replicate padding instead of neighbours; blending hides it to well below one 8-bit level
    assert np.abs(tiled - whole).max() < 0.5 / 255


def test_odd_sizes_come_back_at_their_own_size(tiny_weights):
    r = ModelRunner.from_pretrained(tiny_weights, device="cpu")
    images = [np.random.default_rng(i).random(s, dtype=np.float32) for i, s in
              enumerate([(37, 51, 3), (64, 64, 3), (1, 9, 3), (130, 70, 3)])]
    for img, out in zip(images, r.restore(images)):
        assert out.shape == img.shape and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 1


def test_batching_does_not_change_results(tiny_weights):
    images = [np.random.default_rng(i).random((48, 56, 3), dtype=np.float32) for i in range(3)]
    one = ModelRunner.from_pretrained(tiny_weights, device="cpu", batch_size=1).restore(images)
    three = ModelRunner.from_pretrained(tiny_weights, device="cpu", batch_size=3).restore(images)
    for a, b in zip(one, three):
        assert np.abs(a - b).max() < 1e-5


class TileMeanModel(PointwiseModel):
    """A restorer whose output depends on its whole tile (each tile comes back as its own mean colour), as a real
    model's does a little: neighbouring tiles disagree, and only the blend across the overlap hides it."""

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)


def test_tiles_that_disagree_meet_in_a_ramp_not_a_seam():
    y, x = np.mgrid[0:192, 0:192] / 191.0
    image = np.stack([x, y, x * y], axis=2).astype(np.float32)
    out = ModelRunner(TileMeanModel(), device="cpu", tile=64, overlap=16).restore([image])[0]
    step = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    tiles = plan_tiles(192, 192, 64, 16)
    means = np.array([image[t.y:t.y + t.h, t.x:t.x + t.w].mean(axis=(0, 1)) for t in tiles])
    disagreement = np.abs(np.diff(means.reshape(len(set(t.y for t in tiles)), -1, 3), axis=1)).max()
    assert disagreement > 20 / 255  # the neighbours really disagree...
    # ...and a linear ramp over 16 px spreads that over the overlap; a hard cut would show it all in one step
    assert step < disagreement / 16 * 1.5
