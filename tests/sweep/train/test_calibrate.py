"""Calibration from training batches: BatchNorm re-estimation and the engine's use of it
and of fitted thresholds (train.init_alphas, train.bn_reestimate_batches)."""
import pytest
import torch
from torch import nn

from quant.calibrate import fit_alphas
from sweep.config import resolve_trial
from sweep.train.calibrate import calibrate, reestimate_batchnorm
from sweep.train.engine import Trainer


def test_batchnorm_statistics_are_the_plain_average_over_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=0.3)).eval()
    batches = [(torch.randn(8, 2, 6, 6) * (i + 1) + i, None) for i in range(4)]
    assert reestimate_batchnorm(model, iter(batches), 3) == 3
    outs = [model[0](x).detach() for x, _ in batches[:3]]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3)) for o in outs]).mean(0)      # unbiased, as BatchNorm keeps it
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.3 and not model.training
    assert reestimate_batchnorm(model, iter(batches), 0) == 0


def _tiny(**train):
    tree = {"data": {"dataset": "synthetic", "synthetic": {"train_size": 96, "test_size": 32, "image_size": 16}},
            "model": {"arch": "resnet20"}, "quant": {"w_bits": 2, "a_bits": 2, "scheme": "apot"},
            "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "eval_before": True, **train}}
    return Trainer(resolve_trial(tree), log=lambda s: None)


def test_the_engine_fits_thresholds_at_the_start_and_reestimates_before_each_evaluation():
    """A fresh start with ``init_alphas: mse`` and ``bn_reestimate_batches: 2``: the epoch-0
    row has the thresholds ``fit_alphas`` gives on the first training batch, and the
    model scored after the epoch has the BatchNorm statistics of that epoch's first 2
    batches with its final weights."""
    tr = _tiny(init_alphas="mse", bn_reestimate_batches=2)
    twin = _tiny()
    x0, _ = next(iter(twin.train_loader.epoch(0)))
    fitted = fit_alphas(twin.model, x0)
    rows = []
    tr.run(lambda m, t: rows.append(m))
    assert rows[0]["epoch"] == 0
    assert {k: rows[0][f"alpha/{k}"] for k in fitted} == {k: new for k, (old, new) in fitted.items()}
    state = {k: v.clone() for k, v in tr.model.state_dict().items()}
    calibrate(tr.model, tr.train_loader, bn_batches=2, epoch0=0)
    for name, value in tr.model.state_dict().items():
        torch.testing.assert_close(value, state[name], msg=name)


def test_keep_and_zero_batches_leave_the_model_as_loaded():
    tr = _tiny()
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    assert tr.calibrate_start() == {"alphas": {}, "bn_batches": 0}
    for name, value in tr.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    with pytest.raises(ValueError, match="init_alphas 'best'; expected one of: keep, mse"):
        calibrate(tr.model, tr.train_loader, "best")


def test_reestimation_moves_only_batchnorm_not_a_dambq_clip():
    """BatchNorm alone runs in train mode while its statistics are re-estimated: a DAMBQ
    weight clip (an EMA updated by training forwards) stays as loaded."""
    import models
    from quant import QuantPolicy
    from quant.dambq import DambqWeightQuantizer
    torch.manual_seed(0)
    model = models.build_model("resnet20", policy=QuantPolicy(w_bits=4, a_bits=4, scheme="dambq")).eval()
    clips = {n: m.clip.clone() for n, m in model.named_modules() if isinstance(m, DambqWeightQuantizer)}
    assert clips
    bn = model.layer1[0].bn1
    before = bn.running_mean.clone()
    batches = [(torch.randn(8, 3, 32, 32), None) for _ in range(2)]
    assert reestimate_batchnorm(model, iter(batches), 2) == 2
    assert not torch.equal(bn.running_mean, before) and not model.training
    for name, m in model.named_modules():
        if isinstance(m, DambqWeightQuantizer):
            assert torch.equal(m.clip, clips[name]), name
