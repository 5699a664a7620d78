import pytest
import torch
from pytorch_msssim import ssim

from mdm.common import rng
from mdm.nn.unet import UNetModel
from mdm.pretrain.losses import masked_ssim_loss, ssim_loss, ssim_map
from mdm.pretrain.objectives import GaussianDiffusion, MaskedDiffusion


def test_ssim_loss_of_an_image_with_itself_is_zero():
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.allclose(ssim_loss(x, x), torch.zeros(3), atol=1e-6)
    assert ssim_loss(x, torch.rand_like(x)).min() > 0.3


def test_own_ssim_map_matches_pytorch_msssim_on_whole_images():
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 24, 24), torch.rand(4, 3, 24, 24)
    y = 0.7 * x + 0.3 * y
    ours = ssim_map(x, y, 5, 1.5).mean((1, 2, 3))
    theirs = ssim(x, y, data_range=1.0, size_average=False, win_size=5, win_sigma=1.5)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_masked_ssim_only_sees_masked_pixels():
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    y = x.clone()
    y[..., :8] = torch.rand(1, 3, 16, 8) * 2 - 1  # the left half differs
    right = torch.zeros(1, 1, 16, 16)
    right[..., 8:] = 1
    left = 1 - right
    assert masked_ssim_loss(y, x, left) > 0.3
    # the right half's valid region still sees 2 columns of the changed half through the 5x5 window
    assert masked_ssim_loss(y, x, right) < masked_ssim_loss(y, x, left)
    assert masked_ssim_loss(y, x, torch.zeros_like(right)) == 0


def test_loss_under_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    model = UNetModel(image_size=16, model_channels=32, channel_mult=(1, 1), num_res_blocks=1,
                      attention_resolutions=(8,), num_head_channels=32)
    for p in model.parameters():  # non-zero output layers so the prediction depends on every weight
        torch.nn.init.normal_(p, std=0.05)
    obj = MaskedDiffusion(patch_size=4)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    keys = rng.sample_keys(0, 0, 0, 2)
    fp32 = obj.loss(model, x, keys).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj.loss(model, x, keys)
    assert out.loss.dtype == torch.float32
    assert torch.allclose(out.loss, fp32, rtol=0.03, atol=0.01)


def test_objectives_replay_from_keys():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    keys = rng.sample_keys(1, 5, 0, 4)
    mdm = MaskedDiffusion(patch_size=4)
    t = mdm.sample_t(keys)
    assert t.min() >= 1 and t.max() <= 1000
    a, ma = mdm.corrupt(x, t, keys)
    b, mb = mdm.corrupt(x, t, keys)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    # a sample's draws do not depend on the rest of the batch
    a2, _ = mdm.corrupt(x[2:], t[2:], keys[2:])
    assert torch.equal(a2, a[2:])
    ddpm = GaussianDiffusion(schedule="cosine")
    n1, e1 = ddpm.corrupt(x, ddpm.sample_t(keys), keys)
    assert abs(float(e1.mean())) < 0.1 and abs(float(e1.std()) - 1) < 0.1


def test_uniform_and_normal_streams_look_right():
    keys = rng.sample_keys(0, 0, 0, 64)
    u = rng.uniform(keys, 1, 1000)
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01
    assert not torch.equal(rng.uniform(keys, 1, 10), rng.uniform(keys, 2, 10))
    assert rng.sample_keys(0, 0, 0, 64).unique().numel() == 64


@pytest.mark.parametrize("loss", ["ssim", "ssim_masked"])
def test_mdm_objective_lowers_its_loss_on_a_fixed_batch(loss):
    torch.manual_seed(0)
    model = UNetModel(image_size=16, model_channels=32, channel_mult=(1, 1), num_res_blocks=1,
                      attention_resolutions=(), num_head_channels=32)
    obj = MaskedDiffusion(patch_size=4, loss=loss)
    g = torch.Generator().manual_seed(0)
    # smooth images: reconstructible from their visible patches
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4, generator=g), size=16, mode="bilinear") * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    keys = rng.sample_keys(0, 0, 0, 4)  # fixed timesteps and masks: the batch is fixed
    losses = []
    for _ in range(150):
        out = obj.loss(model, x, keys)
        opt.zero_grad()
        out.loss.mean().backward()
        opt.step()
        losses.append(float(out.loss.detach().mean()))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


def test_mae_masks_a_fixed_share_sees_timestep_zero_and_scores_masked_pixels_only():
    """4x4 image, 2x2 patches (4 patches), mask ratio 0.75: exactly 3 patches hidden for every key; the model gets
    t = 0; the loss is the squared error over the hidden pixels alone (by hand: a prediction wrong by 1 only on the
    visible patch scores 0, wrong by 2 everywhere scores 4)."""
    from mdm.pretrain.objectives import MaskedAutoencoder

    mae = MaskedAutoencoder(timesteps=1000, patch_size=2, fill=0.0, mask_ratio=0.75)
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    keys = rng.sample_keys(0, 0, 0, 3)
    seen = {}

    def model_wrong_on_visible(x, t):
        seen["t"] = t
        visible = (x != 0).float()  # masked pixels are 0
        return x0 + visible

    out = mae.loss(model_wrong_on_visible, x0, keys)
    assert torch.equal(seen["t"], torch.zeros(3, dtype=torch.int64))
    hidden = (out.x_t == 0).float().reshape(3, -1).sum(1)
    assert torch.equal(hidden, torch.full((3,), 12.0))  # 3 of 4 patches of 4 pixels
    torch.testing.assert_close(out.loss, torch.zeros(3))
    out = mae.loss(lambda x, t: x0 + 2, x0, keys)
    torch.testing.assert_close(out.loss, torch.full((3,), 4.0))
    x_t, mask = mae.corrupt(x0, torch.tensor([250, 500, 1000]), keys)  # extraction: t / T of the patches
    assert mask.sum(1).tolist() == [1, 2, 4]
