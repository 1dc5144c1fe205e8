"""Device check: every explanation method gives the same result on CUDA as on the CPU,
with the attribution on the input's device and the model left untouched.

Run on a machine with a GPU: ``python scripts/gpu_check.py [--weights PATH]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
import torchvision

import cnnlens
from cnnlens._hooks import count_hooks


def compare(
    name: str, model: torch.nn.Module, x: torch.Tensor, options: dict[str, dict[str, object]]
) -> bool:
    gpu_model = copy.deepcopy(model).cuda()
    ok = True
    for method in sorted(cnnlens.METHODS):
        opts = options.get(method, {})
        start = time.perf_counter()
        try:
            cpu = cnnlens.explain(model, x, method, **opts)
            t_cpu = time.perf_counter() - start
            start = time.perf_counter()
            gpu = cnnlens.explain(gpu_model, x.cuda(), method, **opts)
            torch.cuda.synchronize()
            t_gpu = time.perf_counter() - start
        except Exception as exc:  # report every method, do not stop at the first
            print(f"{name:18s} {method:22s} ERROR {type(exc).__name__}: {exc}")
            ok = False
            continue
        a, b = cpu.attribution, gpu.attribution.cpu()
        scale = float(a.abs().max()) or 1.0
        err = float((a - b).abs().max()) / scale
        heat_err = float((cpu.heatmap() - gpu.heatmap().cpu()).abs().max())
        same_targets = cpu.targets is None or torch.equal(cpu.targets.cpu(), gpu.targets.cpu())
        good = (
            gpu.attribution.is_cuda and err < 2e-3 and same_targets and count_hooks(gpu_model) == 0
        )
        ok &= good
        print(
            f"{name:18s} {method:22s} {'ok ' if good else 'BAD'} rel.err {err:.1e} heat.err {heat_err:.1e} cpu {t_cpu:6.2f}s gpu {t_gpu:6.2f}s"
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--weights", help="efficientnet_lite0 state dict (if the package is not installed)"
    )
    parser.add_argument("--double", action="store_true", help="compare in float64")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    print(torch.__version__, torch.cuda.get_device_name())
    options: dict[str, dict[str, object]] = {
        "occlusion": {"window": 16, "stride": 8},
        "smoothgrad": {"samples": 8, "seed": 0},
    }
    ok = True
    torch.manual_seed(0)
    dtype = torch.float64 if args.double else torch.float32
    resnet = torchvision.models.resnet18(weights=None).eval().to(dtype)
    ok &= compare("resnet18(random)", resnet, torch.randn(2, 3, 96, 96, dtype=dtype), options)
    spec = args.weights or "efficientnet_lite0"
    lite = (
        cnnlens.load_model(spec, arch="efficientnet_lite0")
        if args.weights
        else cnnlens.load_model(spec)
    )
    x = lite.preprocess(cnnlens.sample_image("cat")).to(dtype)
    ok &= compare("efficientnet_lite0", lite.module.to(dtype), x, options)
    print("ALL OK" if ok else "SOME DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
