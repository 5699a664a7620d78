import torch

from mdm.common.synthetic import SyntheticHistology, render


def _dice(pred, gt):
    inter = (pred & gt).sum().item()
    return 2 * inter / max(pred.sum().item() + gt.sum().item(), 1)


def test_deterministic_and_any_size():
    a, ia = render(0, 3, 7, 48, 80)
    b, ib = render(0, 3, 7, 48, 80)
    c, _ = render(1, 3, 7, 48, 80)
    assert a.shape == (3, 48, 80) and ia.shape == (48, 80)
    assert torch.equal(a, b) and torch.equal(ia, ib) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_the_three_sets_keep_apart():
    ds = SyntheticHistology(seed=0, label_slides=3, test_slides=2, images_per_slide=4, pool_slides=5)
    labeled, test, pool = set(ds.labeled_ids()), set(ds.test_ids()), set(ds.unlabeled_ids(200))
    assert len(labeled) == 12 and len(test) == 8 and len(pool) == 200
    assert not (labeled & test) and not (pool & test) and not (pool & labeled)
    assert not ({s for s, _ in labeled} & {s for s, _ in test})  # test slides unseen by the labels
    assert {s for s, _ in test} <= {s for s, _ in pool}  # the pool covers the target slides
    assert len({s for s, _ in pool}) == 10


def test_a_global_threshold_does_poorly():
    """The best single threshold on any one channel (chosen on the test set itself, either polarity) must stay
    far from a perfect segmentation: colour alone does not tell glands from stroma."""
    ds = SyntheticHistology(seed=0, image_size=64)
    images, masks = zip(*(ds.render(*i) for i in ds.test_ids()))
    x, gt = torch.stack(images), torch.stack(masks) > 0
    assert 0.15 < gt.float().mean() < 0.6  # glands neither rare nor everywhere
    channels = list(x.unbind(1)) + [x.mean(1)]
    best = 0.0
    for ch in channels:
        for thr in torch.linspace(-1, 1, 41):
            for pred in (ch > thr, ch <= thr):
                best = max(best, _dice(pred, gt))
    assert best < 0.7, best
    # ... while the images are not noise: gland pixels differ from stroma on average
    assert (x.mean(1)[gt].mean() - x.mean(1)[~gt].mean()).abs() > 0.0
