"""Quantized ResNet speed against full precision, measured side by side in one run.

For ResNet-20 at batch 128: fp32, W4A4, W3A3, W2A2 (apot), and optionally W4A4 with
the reference's projection (a levels x elements distance matrix) for scale. Prints the
median time of a training step (forward, backward, SGD step) and of inference, each
as a ratio to fp32, and the memory a training step holds: on CUDA the peak allocated,
on CPU the tensors saved for backward (the activations a step keeps alive).

    python bench/bench_quant.py                 # CPU, all threads torch uses
    python bench/bench_quant.py --device cuda   # a GPU
    python bench/bench_quant.py --reference     # add the reference-style W4A4 row
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import models  # noqa: E402
import quant  # noqa: E402
from quant import kernels  # noqa: E402


class _ReferenceAct(torch.autograd.Function):
    """The reference activation quantizer: argmin over a (levels x elements) matrix."""

    @staticmethod
    def forward(ctx, a, alpha, lv):
        x = a.div(alpha)
        c = x.clamp(max=1)
        flat = c.reshape(-1)
        idx = (flat.unsqueeze(0) - lv.unsqueeze(1)).abs().min(dim=0)[1]
        q = lv[idx].view(c.shape)
        ctx.save_for_backward(x, q)
        return q.mul(alpha)

    @staticmethod
    def backward(ctx, g):
        x, q = ctx.saved_tensors
        i = (x > 1.0).float()
        return g * (1 - i), (g * (i + (q - x) * (1 - i))).sum(), None


def _use_reference_projection(model):
    for m in model.modules():
        if isinstance(m, quant.ActQuantizer):
            m.forward = (lambda self: lambda a: _ReferenceAct.apply(a, self.act_alpha, self.lv))(m)
    return model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _saved_bytes(step) -> int:
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per configuration")
    p.add_argument("--reference", action="store_true", help="add W4A4 with the reference projection")
    p.add_argument("--kernels", choices=["compiled", "eager"], default=kernels.mode())
    args = p.parse_args(argv)
    kernels.set_mode(args.kernels)
    device = torch.device(args.device)
    torch.manual_seed(0)

    configs = {"fp32": 32, "W4A4": 4, "W3A3": 3, "W2A2": 2}
    nets = {name: models.build_model(args.arch, policy=quant.QuantPolicy(w_bits=b, a_bits=b, scheme="apot")).to(device)
            for name, b in configs.items()}
    if args.reference:
        nets["W4A4 reference projection"] = _use_reference_projection(
            models.build_model(args.arch, policy=quant.QuantPolicy(w_bits=4, a_bits=4, scheme="apot")).to(device))
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def train_step(net, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
        return run

    def infer(net):
        def run():
            with torch.no_grad():
                net(x)
        return run

    steps = {}
    for name, net in nets.items():
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        steps[name] = (train_step(net.train(), opt), infer(net))
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"{args.arch}, batch {args.batch}, kernels {kernels.mode()}, torch {torch.__version__}")
    t0 = time.perf_counter()
    for name, (train, inf) in steps.items():  # warm-up: compilation, allocator, caches
        nets[name].train(); train(); train()
        nets[name].eval(); inf(); inf()
    print(f"warm-up (includes kernel compilation) {time.perf_counter() - t0:.1f} s")

    times = {name: ([], []) for name in steps}
    for _ in range(args.reps):  # interleaved, so load changes hit every configuration alike
        for name, (train, inf) in steps.items():
            nets[name].train()
            times[name][0].append(_time(train, device))
            nets[name].eval()
            times[name][1].append(_time(inf, device))

    mem = {}
    for name, (train, _) in steps.items():
        nets[name].train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            train()
            mem[name] = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            mem[name] = _saved_bytes(train) / 2**20
    mem_label = "peak MiB" if device.type == "cuda" else "saved-for-backward MiB"

    base_train = statistics.median(times["fp32"][0])
    base_inf = statistics.median(times["fp32"][1])
    print(f"\n{'config':28s} {'train ms':>9s} {'x fp32':>7s} {'infer ms':>9s} {'x fp32':>7s} {mem_label:>24s}")
    for name, (tr, inf) in times.items():
        mt, mi = statistics.median(tr), statistics.median(inf)
        print(f"{name:28s} {mt * 1e3:9.1f} {mt / base_train:7.2f} {mi * 1e3:9.1f} {mi / base_inf:7.2f} {mem[name]:24.1f}")


if __name__ == "__main__":
    main()
