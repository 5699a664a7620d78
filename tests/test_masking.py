import torch

from mdm.pretrain.masking import apply_mask, mask_to_pixels, num_kept, patch_mask


def test_keeps_exactly_int_L_times_one_minus_ratio():
    L = 64
    t = torch.arange(0, 1001, 7)
    ratio = t.double() / 1000
    mask = patch_mask(ratio, L, generator=torch.Generator().manual_seed(0))
    kept = (~mask).sum(1)
    expected = torch.tensor([int(L * (1 - r)) for r in (t / 1000).tolist()])
    assert torch.equal(kept, expected)
    assert torch.equal(num_kept(L, ratio), expected)


def test_deterministic_under_a_seed_and_different_per_sample():
    ratio = torch.full((4,), 0.5)
    a = patch_mask(ratio, 256, generator=torch.Generator().manual_seed(3))
    b = patch_mask(ratio, 256, generator=torch.Generator().manual_seed(3))
    c = patch_mask(ratio, 256, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])


def test_ratio_zero_masks_nothing_and_one_masks_all():
    m = patch_mask(torch.tensor([0.0, 1.0]), 16, generator=torch.Generator().manual_seed(0))
    assert not m[0].any() and m[1].all()


def test_apply_mask_fills_only_masked_patches():
    x = torch.rand(2, 3, 8, 8) + 1.0  # strictly positive
    mask = torch.tensor([[True, False, False, True], [False, False, False, False]])
    y = apply_mask(x, mask, patch_size=4, fill=0.0)
    pix = mask_to_pixels(mask, 8, 8, 4)
    assert torch.all(y[pix.expand_as(y) == 1] == 0)
    assert torch.equal(y[pix.expand_as(y) == 0], x[pix.expand_as(x) == 0])
    assert pix[0, 0, :4, :4].all() and pix[0, 0, 4:, 4:].all() and not pix[0, 0, :4, 4:].any()
