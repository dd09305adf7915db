"""The stacked engine's training step on CUDA, replayed as a CUDA graph."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch


class GraphedStep:
    """A training step of the stacked engine on CUDA replayed as a CUDA graph: one launch per batch, not one per kernel.

    ``training_step(rows, targets, fixed_inputs, summed_loss)`` trains on one batch, drawing its
    random numbers (dropout) from ``generator``. The graph computes exactly what the step computes
    (the same kernels on copies of the batch in fixed buffers). It is captured again after
    :meth:`new_epoch`, because the temperature is a constant of the captured kernels, into the
    memory pool of the graph it replaces (which is never replayed again), so memory does not grow
    with the epochs; batches of another size (an epoch's last) run eagerly.
    """

    def __init__(self, training_step: Callable[..., None], generator: torch.Generator) -> None:
        self.training_step, self.generator = training_step, generator
        self.stream = _capture_stream(torch.cuda.current_device())  # warm-up and capture run here (CUDA graphs need it)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stale = True  # the graph must be captured (again) before its next replay
        self.buffers: tuple | None = None  # (rows, targets, fixed inputs) the graph reads

    def new_epoch(self) -> None:
        """Capture the graph again before its next replay (the temperature has changed)."""
        self.stale = True

    def __call__(self, rows: torch.Tensor, targets: torch.Tensor, fixed_inputs: Mapping[int, torch.Tensor],
                 summed_loss: torch.Tensor | None) -> None:
        if self.buffers is None:  # the first batch trains eagerly: lazy initialisations happen outside a capture
            self._on_side_stream(self.training_step, rows, targets, fixed_inputs, summed_loss)
            self.buffers = (rows.clone(), targets.clone(), {block: t.clone() for block, t in fixed_inputs.items()})
            return
        static_rows, static_targets, static_fixed = self.buffers
        if rows.shape != static_rows.shape:
            self.training_step(rows, targets, fixed_inputs, summed_loss)
            return
        static_rows.copy_(rows)
        static_targets.copy_(targets)
        for block, inputs in fixed_inputs.items():
            static_fixed[block].copy_(inputs)
        if self.stale:
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self.generator)
            pool = None if self.graph is None else self.graph.pool()
            self._on_side_stream(self._capture, graph, pool, static_rows, static_targets, static_fixed, summed_loss)
            self.graph, self.stale = graph, False
        self.graph.replay()

    def _capture(self, graph: torch.cuda.CUDAGraph, pool: tuple | None, *batch) -> None:
        graph.capture_begin(pool=pool)
        try:
            self.training_step(*batch)
        finally:
            graph.capture_end()

    def _on_side_stream(self, function: Callable[..., None], *arguments) -> None:
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            function(*arguments)
        current.wait_stream(self.stream)


@functools.cache
def _capture_stream(device: int) -> torch.cuda.Stream:
    """One side stream per GPU for every capture: cuBLAS keeps a workspace for each stream it runs on."""
    return torch.cuda.Stream(device)
