"""The training engine: real learning on real images, determinism, resume, NaN, schedules."""
import math

import pytest
import torch

from sweep.config import resolve_trial
from sweep.train.engine import NonFiniteLoss, Trainer, lr_factor


def _tiny(**train):
    tree = {"data": {"dataset": "synthetic", "synthetic": {"train_size": 128, "test_size": 64, "image_size": 16}},
            "model": {"arch": "resnet20"},
            "quant": {"w_bits": 3, "a_bits": 3, "scheme": "apot"},
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, **train}}
    return resolve_trial(tree)


def _metrics(trainer):
    rows = []
    trainer.run(lambda m, t: rows.append({k: v for k, v in m.items() if k not in ("epoch_time_s",)}))
    return rows


def test_same_config_and_seed_give_the_same_metrics():
    a, b = _metrics(Trainer(_tiny(), log=lambda s: None)), _metrics(Trainer(_tiny(), log=lambda s: None))
    assert a == b
    c = _metrics(Trainer(_tiny(seed=1), log=lambda s: None))
    assert a != c


def test_resume_from_last_checkpoint_continues_exactly(tmp_path):
    full = _metrics(Trainer(_tiny(epochs=3)))
    first = Trainer(_tiny(epochs=3))
    first.run(lambda m, t: t.save(tmp_path / "last.pt") if m["epoch"] == 2 else None)
    resumed = Trainer(_tiny(epochs=3))
    resumed.load_state(tmp_path / "last.pt")
    assert resumed.epoch == 2
    rest = []
    resumed.run(lambda m, t: rest.append({k: v for k, v in m.items() if k != "epoch_time_s"}))
    assert [r["epoch"] for r in rest] == [3]
    assert rest[0] == full[2]


def test_nan_loss_stops_with_a_clear_error():
    with pytest.raises(NonFiniteLoss, match=r"epoch 1: training loss is (nan|inf)"):
        Trainer(_tiny(lr=1e12, epochs=1)).run()


def test_metrics_names_and_validation_split():
    tree = _tiny().to_dict()
    tree["data"]["val_fraction"] = 0.25
    tr = Trainer(resolve_trial(tree))
    rows = _metrics(tr)
    m = rows[-1]
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
                "alpha/weight/layer1.0.conv1", "alpha/act/layer3.0.downsample.0"):
        assert key in m, key
    assert len(tr.data.val) == 32 and len(tr.data.train) == 96 and len(tr.data.test) == 64
    assert tr.summary()["best"]["epoch"] in (1, 2)


def test_lr_schedules():
    step = _tiny(schedule="step", milestones=[2, 4], gamma=0.1, epochs=6).train
    assert [lr_factor(step, e, 0, 10) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = _tiny(schedule="cosine", epochs=4).train
    assert [lr_factor(cos, e, 5, 10) for e in range(4)] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    warm = _tiny(schedule="constant", warmup_epochs=1, epochs=3).train
    assert lr_factor(warm, 0, 0, 10) == pytest.approx(0.1) and lr_factor(warm, 0, 9, 10) == 1.0


def test_alpha_learning_rates_are_their_own_groups():
    tr = Trainer(_tiny(alpha_lr_act=0.3, alpha_lr_weight=0.07, alpha_weight_decay=0.0))
    lrs = sorted(g["lr"] for g in tr.optimizer.param_groups)
    assert lrs == pytest.approx([0.05, 0.07, 0.3])


@pytest.mark.slow
def test_fp32_to_w4a4_fine_tune_reaches_88_percent_on_real_cifar(cifar_npz, apot_ckpt_dir):
    """The issue's check: the reference code went 97 -> 744 -> 754 -> 761 of 846."""
    tree = {"data": {"dataset": "npz", "path": str(cifar_npz)},
            "model": {"arch": "resnet20"},
            "quant": {"w_bits": 4, "a_bits": 4, "scheme": "apot"},
            "train": {"epochs": 3, "lr": 0.004, "alpha_lr_act": 0.004, "alpha_lr_weight": 0.004,
                      "batch_size": 128, "schedule": "step", "eval_before": True,
                      "init": str(apot_ckpt_dir / "fp32_model_best.pth.tar")}}
    rows = _metrics(Trainer(resolve_trial(tree)))
    correct = [round(r["val_acc"] * 846 / 100) for r in rows]
    print("correct per epoch (0 = before training):", correct)
    assert correct[0] < 200            # the quantized model before any training
    assert correct[-1] >= 0.88 * 846


def test_training_steps_equal_the_reference_code_on_mnist(mnist_npz):
    """From the same initial weights and batches, the engine's W2A2 training steps give the
    reference codebase's outputs bit for bit (tests/reference_apot.py: its quantized layers,
    optimiser groups and absolute alpha learning rates). Only the float32 summation order
    of the alpha gradients differs; measured, the two stay bit-equal for 27 steps (seed 0)."""
    import torch.nn.functional as F
    from tests.reference_apot import reference_model, reference_optimizer, state_dict_from_project
    tree = {"data": {"dataset": "npz", "path": str(mnist_npz)}, "model": {"arch": "resnet20"},
            "quant": {"w_bits": 2, "a_bits": 2, "scheme": "apot"},
            "train": {"epochs": 4, "lr": 0.05, "batch_size": 128, "schedule": "cosine", "seed": 0}}
    tr = Trainer(resolve_trial(tree), log=lambda s: None)
    ref = reference_model(0, 2, in_channels=1)
    ref.load_state_dict(state_dict_from_project(tr.model))
    opt = reference_optimizer(ref, lr=0.05)
    tr.model.train()
    ref.train()
    for step, (x, y) in enumerate(tr.train_loader.epoch(0)):
        if step == 10:
            break
        tr._set_lr(0, step)
        out = tr.model(x)
        loss = F.cross_entropy(out, y)
        tr.optimizer.zero_grad()
        loss.backward()
        out_ref = ref(x)
        loss_ref = F.cross_entropy(out_ref, y)
        opt.zero_grad()
        loss_ref.backward()
        assert torch.equal(out, out_ref), f"step {step}: outputs differ"
        if step == 0:
            ours = dict(tr.model.named_parameters())
            for name, p in ref.named_parameters():
                g = ours[name.replace(".act_alpha", ".act_quant.act_alpha")].grad
                if name.endswith("alpha"):
                    torch.testing.assert_close(g, p.grad, rtol=1e-3, atol=1e-9, msg=name)
                else:
                    torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-8, msg=name)
        tr.optimizer.step()
        opt.step()
    assert step == 10


@pytest.mark.slow
def test_mnist_w2a2_from_scratch_learns_digits(mnist_npz):
    """W2A2 ResNet-20 from scratch, 4 epochs, cosine from 0.05, on real MNIST digits.

    The issue's reference run went 8495 -> 9417 -> 9526 -> 9643 of 10,000: one draw from
    a wide distribution. ``bench/accuracy_mnist.py`` measured, on an H100, seeds 0-9 of
    this engine at 95.94 +- 0.62 % (5 of 10 at 96 % or more; seed 0: 96.08 %) and the
    reference code (tests/reference_apot.py) at 96.19 +- 0.49 % (6 of 9); on this CPU
    seed 0 gives 95.46 %. The check asserts real learning at 95 %, not one lucky draw;
    ``test_training_steps_equal_the_reference_code_on_mnist`` checks the equivalence.
    """
    tree = {"data": {"dataset": "npz", "path": str(mnist_npz)},
            "model": {"arch": "resnet20"},
            "quant": {"w_bits": 2, "a_bits": 2, "scheme": "apot"},
            "train": {"epochs": 4, "lr": 0.05, "batch_size": 128, "schedule": "cosine"}}
    tr = Trainer(resolve_trial(tree))
    assert tr.data.in_channels == 1 and not tr.data.flip and tr.data.crop_pad == 0
    rows = _metrics(tr)
    print("test accuracy per epoch:", [round(r["val_acc"], 2) for r in rows])
    assert len(tr.data.val) == 10000
    assert rows[-1]["val_acc"] >= MNIST_TARGET


MNIST_TARGET = 95.0


@pytest.mark.slow
def test_whole_model_compile_trains_like_eager():
    """train.compile: the same training, fused (numerics close to eager, not bit-equal)."""
    eager = _metrics(Trainer(_tiny(epochs=1)))
    compiled = _metrics(Trainer(_tiny(epochs=1, compile=True)))
    assert compiled[0]["train_loss"] == pytest.approx(eager[0]["train_loss"], rel=0.05)
    assert set(compiled[0]) == set(eager[0])


def test_checkpoint_stores_the_trial_policy(tmp_path):
    from models.checkpoint import build_from_checkpoint, policy_of, read_checkpoint
    tree = _tiny().to_dict()
    tree["quant"]["layers"] = {"layer2.*": {"act_scheme": "uniform", "w_bits": 4}}
    cfg = resolve_trial(tree)
    tr = Trainer(cfg, log=lambda s: None)
    assert tr.model.quant_policy.layers == cfg.quant.layers
    ckpt = read_checkpoint(tr.save(tmp_path / "last.pt", with_state=False))
    assert ckpt["quant"] == cfg.quant.to_dict(layer_pairs=True)
    assert ckpt["quant"]["act_scheme"] == "apot" and ckpt["quant"]["family"] is None
    assert policy_of(ckpt) == cfg.quant
    assert ckpt["model"] == {"arch": "resnet20", "num_classes": 10, "in_channels": 3}
    model, _ = build_from_checkpoint(tmp_path / "last.pt")
    x = torch.randn(2, 3, 16, 16)
    tr.model.eval(), model.eval()
    assert torch.equal(tr.model.cpu()(x), model(x))
