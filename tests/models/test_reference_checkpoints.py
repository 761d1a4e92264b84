"""Reference checkpoints of both families: scored by sweep.evaluate, the family told by the keys."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from models.checkpoint import CheckpointError, family_of, load_weights, read_checkpoint
from quant import QuantPolicy

REPO = Path(__file__).resolve().parents[2]


def test_evaluate_mnist_resnet10_w4a4_scores_9877(shared_dir):
    """The reference code's count on the 10,000 test digits: 9877."""
    ckpt = shared_dir / "checkpoints" / "apot_mnist_resnet10" / "w4a4_model_best.pth.tar"
    data = shared_dir / "datasets" / "mnist_subset.npz"
    for f in (ckpt, data):
        if not f.is_file():
            pytest.skip(f"{f} not found")
    out = subprocess.run([sys.executable, "-m", "sweep.evaluate", str(ckpt), "--arch", "mnist_resnet10",
                          "--w-bits", "4", "--a-bits", "4", "--scheme", "apot", "--dataset", "npz",
                          "--data-path", str(data), "--json"], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["correct"], result["total"]) == (9877, 10000)
    assert result["quant"]["family"] == "imagenet" and result["missing_alphas"] == []


def test_family_from_keys_with_or_without_module_prefix():
    cifar = models.build_model("resnet20", policy=QuantPolicy(w_bits=4, a_bits=4)).state_dict()
    imagenet = models.build_model("mnist_resnet10", in_channels=1, policy=QuantPolicy(w_bits=4, a_bits=4)).state_dict()
    fp = models.build_model("mnist_resnet10", in_channels=1).state_dict()
    for prefix in ("", "module."):
        assert family_of({prefix + k: v for k, v in cifar.items()}) == "cifar"
        assert family_of({prefix + k: v for k, v in imagenet.items()}) == "imagenet"
        assert family_of({prefix + k: v for k, v in fp.items()}) is None


def test_checkpoint_of_the_other_family_is_one_clear_message(tmp_path):
    sd = models.build_model("mnist_resnet10", in_channels=1, policy=QuantPolicy(w_bits=2, a_bits=2)).state_dict()
    path = tmp_path / "in.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    model = models.build_model("mnist_resnet10", in_channels=1,
                               policy=QuantPolicy(w_bits=2, a_bits=2, family="cifar"))
    with pytest.raises(CheckpointError, match=r"in.pth.tar: is a imagenet-family quantized checkpoint "
                                              r"\(keys ending in .weight_alpha\), the model \(mnist_resnet10\) "
                                              r"is cifar-family; set quant.family: imagenet"):
        load_weights(model, read_checkpoint(path)["state_dict"], path)


def _ngrid_checkpoint(tmp_path, extra=()):
    """A checkpoint laid out as the N_grid code writes it: CIFAR family, ``module.`` keys,
    ``<conv>.act_alpha``, and unused ``factorW``/``factorA`` buffers; no Z stored."""
    torch.manual_seed(0)
    model = models.build_model("resnet20", policy=QuantPolicy(w_bits=2, a_bits=2, scheme="ngrid", z=4.0))
    with torch.no_grad():
        model.layer2[0].conv1.weight_quant.wgt_alpha.fill_(1.3)
    sd = {}
    for k, v in model.state_dict().items():
        sd["module." + k.replace(".act_quant.act_alpha", ".act_alpha")] = v
        if k.endswith(".weight_quant.wgt_alpha"):
            conv = k[: -len(".weight_quant.wgt_alpha")]
            for name in ("factorW", "factorA") + tuple(extra):
                sd[f"module.{conv}.{name}"] = torch.tensor(0.0)
    path = tmp_path / "ngrid.pth.tar"
    torch.save({"state_dict": sd, "best_prec": 69.75, "epoch": 1}, path)
    return model, path


def test_ngrid_checkpoint_loads_and_scores(tmp_path, cifar_npz):
    from sweep.cli import evaluate
    model, path = _ngrid_checkpoint(tmp_path)
    q = models.build_model("resnet20", policy=QuantPolicy(w_bits=2, a_bits=2, scheme="ngrid", z=4.0))
    info = load_weights(q, read_checkpoint(path)["state_dict"], path)
    assert len(info["ignored_buffers"]) == 2 * 20 and info["missing_alphas"] == []
    assert float(q.layer2[0].conv1.weight_quant.wgt_alpha.detach()) == pytest.approx(1.3)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), q.eval()
    assert torch.equal(model(x), q(x))
    args = [str(path), "--arch", "resnet20", "--w-bits", "2", "--a-bits", "2", "--scheme", "ngrid",
            "--z", "4", "--dataset", "npz", "--data-path", str(cifar_npz), "--json"]
    assert evaluate.main(args) == 0


def test_ngrid_checkpoint_with_another_unknown_key_stays_an_error(tmp_path, capsys):
    from sweep.cli import evaluate
    _, path = _ngrid_checkpoint(tmp_path, extra=("factorX",))
    args = [str(path), "--arch", "resnet20", "--w-bits", "2", "--a-bits", "2", "--scheme", "ngrid",
            "--z", "4", "--dataset", "synthetic"]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert "ngrid.pth.tar: does not fit model resnet20: 20 key(s) the model does not have, e.g. " in err
    assert ".factorX" in err and ".factorW" not in err
