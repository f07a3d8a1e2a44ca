"""The GPU path (run where CUDA is available; skipped elsewhere): every cell variant and model option
gives on CUDA what it gives on the CPU, outputs and gradients, with padded variable-length batches."""

from __future__ import annotations

import pytest
import torch

from cellsearch.model import ModelSpec, build
from cellsearch.pooling import POOLINGS
from cellsearch.stack import LayerSpec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("options", [{}, {"patch": 3, "normalize": True}, {"patch": 2}])
def test_cuda_matches_cpu(pooling, options):
    torch.manual_seed(0)
    layers = (LayerSpec("lstm", 6), LayerSpec("peephole", 5, True), LayerSpec("cifg", 4), LayerSpec("gru", 3, True))
    cpu = build(ModelSpec(3, layers, 4, "classification", 0.0, pooling=pooling, **options)).eval()
    gpu = build(ModelSpec(3, layers, 4, "classification", 0.0, pooling=pooling, **options)).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    x = torch.randn(6, 11, 3)
    lengths = torch.tensor([11, 4, 1, 9, 7, 2])
    out_cpu = cpu(x, lengths)
    out_gpu = gpu(x.cuda(), lengths.cuda())
    assert torch.allclose(out_cpu, out_gpu.cpu(), atol=1e-4)
    out_cpu.square().sum().backward()
    out_gpu.square().sum().backward()
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        assert torch.allclose(p_cpu.grad, p_gpu.grad.cpu(), atol=1e-3, rtol=1e-3), name


@pytest.mark.parametrize("base", ["seasonal_naive", "theta"])
def test_cuda_forecasting_base_matches_cpu(base):
    torch.manual_seed(1)
    spec = ModelSpec(2, (LayerSpec("gru", 8),), 5, "forecasting", patch=2, pooling="attention", season=4,
                     target_index=1, base=base)
    cpu = build(spec).eval()
    gpu = build(spec).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    x = torch.randn(4, 9, 2)
    lengths = torch.tensor([9, 3, 6, 1])
    assert torch.allclose(cpu(x, lengths), gpu(x.cuda(), lengths.cuda()).cpu(), atol=1e-4)
