"""CUDA graphs: record a network's GPU kernels once, then replay them with one launch.

A sampler calls the same network with tensors of the same shapes tens of times. In eager PyTorch
each call launches hundreds of kernels from Python, and at small batches (one image with guidance)
that launching, not the GPU, sets the pace. Replaying a recorded graph runs exactly the same kernels
without it. Inference only: the graph holds its own input and output buffers.
"""

from __future__ import annotations

from typing import Callable

import torch


class CUDAGraphed:
    """fn(*tensors) -> tensor, recorded on its first call for each input signature (shapes, dtypes,
    devices) and replayed afterwards. Inputs are copied into the graph's buffers; the output is a
    fresh copy, so the caller may keep it across calls. Whatever else `fn` reads (weights, a text
    context) must stay the same tensors between calls."""

    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 2):
        self.fn, self.warmup = fn, warmup
        self.graphs: dict[tuple, tuple[list[torch.Tensor], torch.Tensor, torch.cuda.CUDAGraph]] = {}

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple((x.shape, x.dtype, x.device) for x in inputs)
        if key not in self.graphs:
            self.graphs[key] = self._record(inputs)
        buffers, output, graph = self.graphs[key]
        for buffer, x in zip(buffers, inputs):
            buffer.copy_(x)
        graph.replay()
        return output.clone()

    def _record(self, inputs: tuple[torch.Tensor, ...]):
        if not all(x.is_cuda for x in inputs):
            raise ValueError("CUDA graphs need CUDA tensors; run on a GPU or leave cuda_graph off")
        buffers = [x.clone() for x in inputs]
        side = torch.cuda.Stream()  # warm-up on a side stream, as capture requires (cuDNN and cuBLAS choose kernels)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*buffers)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.fn(*buffers)
        return buffers, output, graph
