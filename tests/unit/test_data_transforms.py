"""Transforms: paper/modern/eval geometry, 10-crop against hand crops, PCA lighting, normalisation conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from classicnets.data import IMAGENET_EIGVAL, IMAGENET_EIGVEC, BatchTransform, ImageTransform, lighting
from classicnets.data import batch_transforms as bt
from classicnets.data.transforms import random_resized_box, resize_short_side, resized_crop
from classicnets.errors import UsageError
from classicnets.models.preprocessing import CAFFE_BGR_MEAN, Preprocessing


def random_image(h=20, w=24, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def hand_ten_crop(a: np.ndarray, h: int, w: int) -> list[np.ndarray]:
    """4 corners + centre, then the same of the mirror image, by slicing (CHW arrays)."""
    H, W = a.shape[1:]
    top, left = int(round((H - h) / 2)), int(round((W - w) / 2))

    def five(b):
        return [b[:, :h, :w], b[:, :h, W - w :], b[:, H - h :, :w], b[:, H - h :, W - w :],
                b[:, top : top + h, left : left + w]]  # fmt: skip

    return five(a) + five(a[:, :, ::-1])


def test_ten_crop_equals_crops_taken_by_hand():
    img = random_image(20, 24)
    pre = Preprocessing(input_size=(3, 8, 10), resize_size=None)
    out = ImageTransform(pre, train=False, ten_crop=True)(img)
    a = np.asarray(img).transpose(2, 0, 1)
    expected = np.stack(hand_ten_crop(a, 8, 10))
    assert out.shape == (10, 3, 8, 10) and out.dtype == torch.uint8
    assert np.array_equal(out.numpy(), expected)
    batch = bt.ten_crop_batch(torch.from_numpy(a.copy())[None], (8, 10))
    assert batch.shape == (1, 10, 3, 8, 10) and np.array_equal(batch[0].numpy(), expected)


def test_eval_resizes_short_side_then_centre_crops():
    img = random_image(30, 60)
    pre = Preprocessing(input_size=(3, 16, 16), resize_size=20)
    out = ImageTransform(pre, train=False)(img)
    resized = np.asarray(img.resize((40, 20), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert resize_short_side(img, 20).size == (40, 20)
    assert np.array_equal(out.numpy(), resized[:, 2:18, 12:28])


def test_small_digit_is_zero_padded_to_lenet_input():
    img = random_image(28, 28, mode="L")
    pre = Preprocessing(input_size=(1, 32, 32), resize_size=None, mean=(0.5,), std=(0.5,), channel_order="L")
    out = ImageTransform(pre, train=False)(img)[0].numpy()
    assert out.shape == (32, 32) and np.array_equal(out[2:30, 2:30], np.asarray(img))
    assert out[:2].sum() == 0 and out[:, 30:].sum() == 0
    batch = bt.center_crop_batch(torch.from_numpy(np.asarray(img).copy())[None, None], (32, 32))
    assert np.array_equal(batch[0, 0].numpy(), out)


def test_paper_recipe_is_a_crop_of_the_resized_image_maybe_mirrored():
    img = random_image(30, 45)
    pre = Preprocessing(input_size=(3, 16, 16), resize_size=20)
    t = ImageTransform(pre, train=True, recipe="paper")
    resized = np.asarray(resize_short_side(img, 20)).transpose(2, 0, 1)
    flips = set()
    for seed in range(12):
        out = t(img, np.random.default_rng(seed)).numpy()
        candidates = [(t, left, f) for t in range(5) for left in range(resized.shape[2] - 15) for f in (0, 1)]
        hits = [
            (t, left, f)
            for t, left, f in candidates
            if np.array_equal(out, (resized[:, :, ::-1] if f else resized)[:, t : t + 16, left : left + 16])
        ]
        assert hits, f"seed {seed}: not a crop of the resized image"
        flips.add(hits[0][2])
        assert np.array_equal(out, t(img, np.random.default_rng(seed)).numpy())  # same rng, same crop
    assert flips == {0, 1}


def test_pad_crop_recipe_is_a_crop_of_the_4_pixel_padded_image_maybe_mirrored():
    img = random_image(32, 32)
    t = ImageTransform(Preprocessing(input_size=(3, 32, 32), resize_size=None), train=True, recipe="pad_crop")
    padded = np.pad(np.asarray(img).transpose(2, 0, 1), ((0, 0), (4, 4), (4, 4)))  # He et al. 2016: 4 zeros a side
    seen = set()
    for seed in range(16):
        out = t(img, np.random.default_rng(seed)).numpy()
        windows = {(top, left, f): (padded[:, :, ::-1] if f else padded)[:, top : top + 32, left : left + 32]
                   for top in range(9) for left in range(9) for f in (0, 1)}  # fmt: skip
        hits = [key for key, window in windows.items() if np.array_equal(out, window)]
        assert hits, f"seed {seed}: not a crop of the padded image"
        seen.add(hits[0][2])
    assert seen == {0, 1}
    # the batch version draws offsets in the same range: every crop of a batch is a window of the padded image
    x = torch.from_numpy(padded[:, 4:36, 4:36].copy())[None].repeat(8, 1, 1, 1)
    crops = bt.random_pad_crop_batch(x, (32, 32), 4, torch.Generator().manual_seed(0))
    for crop in crops.numpy():
        assert any(np.array_equal(crop, padded[:, top : top + 32, left : left + 32]) for top in range(9)
                   for left in range(9))  # fmt: skip


def test_modern_recipe_shape_and_boxes_inside_image():
    img = random_image(40, 50)
    pre = Preprocessing(input_size=(3, 24, 24), resize_size=32)
    out = ImageTransform(pre, train=True, recipe="modern")(img, np.random.default_rng(0))
    assert out.shape == (3, 24, 24)
    rng = np.random.default_rng(1)
    for _ in range(200):
        top, left, h, w = random_resized_box(50, 40, rng)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 50 and h > 0 and w > 0
        assert 0.08 * 2000 * 0.9 <= h * w <= 2000


def test_bad_recipe_and_ten_crop_in_training_are_usage_errors():
    pre = Preprocessing(input_size=(3, 8, 8))
    with pytest.raises(UsageError, match="unknown recipe 'fancy'"):
        ImageTransform(pre, train=True, recipe="fancy")
    with pytest.raises(UsageError, match="ten_crop is an evaluation transform"):
        ImageTransform(pre, train=True, ten_crop=True)


def test_pca_noise_with_sigma_zero_is_identity():
    x = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    pre = Preprocessing(input_size=(3, 5, 6))
    assert torch.equal(BatchTransform(pre, train=True, pca_std=0.0)(x), BatchTransform(pre, train=False)(x))
    xf = x.float() / 255
    assert torch.equal(
        lighting(xf, torch.zeros(4, 3), torch.tensor(IMAGENET_EIGVAL), torch.tensor(IMAGENET_EIGVEC)), xf
    )


def test_pca_noise_matches_the_paper_formula():
    alpha = torch.tensor([[0.1, -0.2, 0.3]])
    x = torch.zeros(1, 3, 2, 2)
    out = lighting(x, alpha, torch.tensor(IMAGENET_EIGVAL), torch.tensor(IMAGENET_EIGVEC))
    expected = [
        sum(IMAGENET_EIGVEC[c][i] * alpha[0, i].item() * IMAGENET_EIGVAL[i] for i in range(3)) for c in range(3)
    ]
    assert torch.allclose(out[0, :, 1, 1], torch.tensor(expected), atol=1e-7)
    assert torch.equal(out[0, :, 0, 0], out[0, :, 1, 1])  # one offset per image, the same at every pixel
    # through BatchTransform: the per-image offset is constant over pixels, differs between images, and is
    # reproducible from (seed, epoch)
    pre = Preprocessing(input_size=(3, 4, 4), mean=(0, 0, 0), std=(1, 1, 1))
    t = BatchTransform(pre, train=True, pca_std=0.1, seed=5)
    x = torch.full((3, 3, 4, 4), 128, dtype=torch.uint8)
    y = t(x) - 128 / 255
    assert torch.allclose(y, y[:, :, :1, :1].expand_as(y), atol=1e-6) and not torch.allclose(y[0], y[1])
    t.set_epoch(0)
    assert torch.equal(t(x) - 128 / 255, y)


def test_normalisation_rgb_mean_std_and_caffe_bgr():
    x = torch.tensor([10, 20, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    rgb = BatchTransform(Preprocessing(input_size=(3, 1, 1)), train=False)(x).flatten()
    expected = [
        (v / 255 - m) / s for v, m, s in zip([10, 20, 255], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)
    ]
    assert torch.allclose(rgb, torch.tensor(expected), atol=1e-6)
    caffe = Preprocessing(input_size=(3, 1, 1), mean=CAFFE_BGR_MEAN, std=(1.0, 1.0, 1.0), channel_order="BGR",
                          pixel_scale=255.0)  # fmt: skip
    bgr = BatchTransform(caffe, train=False)(x).flatten()
    assert torch.allclose(bgr, torch.tensor([255 - 104.0, 20 - 117.0, 10 - 124.0]), atol=1e-4)


def test_batch_transform_ten_crop_channels_last_and_dtype():
    pre = Preprocessing(input_size=(3, 4, 4))
    x = torch.randint(0, 256, (2, 10, 3, 4, 4), dtype=torch.uint8)
    y = BatchTransform(pre, train=False, dtype=torch.bfloat16)(x)
    assert y.shape == (2, 10, 3, 4, 4) and y.dtype == torch.bfloat16
    flat = BatchTransform(pre, train=False)(x[:, 3])
    assert torch.allclose(y[:, 3].float(), flat, atol=0.02)
    nhwc = x[:, 0].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # what the file loader yields
    assert BatchTransform(pre, train=False)(nhwc).is_contiguous()
    assert torch.equal(BatchTransform(pre, train=False)(nhwc), BatchTransform(pre, train=False)(x[:, 0]))
    cl = BatchTransform(pre, train=False, channels_last=True)(x[:, 0])
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(
        cl, BatchTransform(pre, train=False)(x[:, 0])
    )


def test_batch_geometry_random_crop_translates_and_flip():
    x = torch.arange(2 * 28 * 28, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    out = bt.random_crop_batch(x, (32, 32), g)
    assert out.shape == (2, 1, 32, 32)
    for n in range(2):  # each digit appears whole somewhere inside its 32x32 field
        found = any(torch.equal(out[n, 0, t : t + 28, l : l + 28], x[n, 0]) for t in range(5) for l in range(5))
        assert found and int(out[n].sum()) == int(x[n].sum())
    flipped = bt.random_flip_batch(x, torch.Generator().manual_seed(1))
    for n in range(2):
        assert torch.equal(flipped[n], x[n]) or torch.equal(flipped[n], x[n].flip(-1))
    rrc = bt.random_resized_crop_batch(x, (16, 16), torch.Generator().manual_seed(2))
    assert rrc.shape == (2, 1, 16, 16) and rrc.dtype == torch.uint8


def test_resized_crop_matches_resize_then_crop():
    img = random_image(45, 61, seed=3)
    for top, left in [(0, 0), (3, 7), (5, 10)]:
        fused = np.asarray(resized_crop(img, 32, top, left, (27, 30), Image.Resampling.BILINEAR)).astype(int)
        plain = np.asarray(resize_short_side(img, 32).crop((left, top, left + 30, top + 27))).astype(int)
        assert fused.shape == (27, 30, 3) and np.abs(fused - plain).max() <= 1


def test_ten_crop_of_a_resized_image_resamples_only_the_crops(memory_cap):
    pre = Preprocessing(input_size=(3, 24, 28), resize_size=32)
    for h, w in [(40, 50), (257, 331), (50, 40)]:
        img = random_image(h, w, seed=h)
        out = ImageTransform(pre, train=False, ten_crop=True)(img)
        resized = np.asarray(resize_short_side(img, 32)).transpose(2, 0, 1)
        diff = np.abs(out.numpy().astype(int) - np.stack(hand_ten_crop(resized, 24, 28)))
        assert diff.max() <= 1, (h, w)  # resized_crop's rounding, as in the centre-crop path, nothing else
        centre = ImageTransform(pre, train=False)(img)
        assert torch.equal(out[4], centre)  # 10-crop's centre crop is the centre-crop evaluation's, exactly
    # The long thin PNG: resized whole, 256 x 25,600,000 pixels (26 GB) ended the evaluation.
    thin = Image.new("RGB", (1, 100_000), (200, 100, 50))
    paper = Preprocessing(input_size=(3, 224, 224), resize_size=256)
    with memory_cap(1 << 30):
        out = ImageTransform(paper, train=False, ten_crop=True)(thin)
    assert out.shape == (10, 3, 224, 224) and set(out.unique().tolist()) == {50, 100, 200}


def test_a_resize_past_the_pixel_limit_is_refused_before_it_allocates(memory_cap):
    from classicnets.data.transforms import ResizeTooLarge

    strip = Image.new("L", (1, 10_000_000))  # a short side resized to 28 makes it 28 x 280,000,000
    pre = Preprocessing(input_size=(1, 32, 32), resize_size=28, mean=(0.5,), std=(0.5,), channel_order="L")
    with memory_cap(1 << 30), pytest.raises(ResizeTooLarge, match=r"1x10000000 resized to 28x280000000 = 7,840,000"):
        ImageTransform(pre, train=False)(strip)
