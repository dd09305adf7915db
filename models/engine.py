"""The stacked training engine: the protocol's accelerator of the training loop.

:func:`train_models` trains several networks of one setting (this project's :class:`MLP` behind
any quantizer) as one :class:`StackedMLP`: batched matmuls, a hand-written backward pass, the
quantizers' fused Functions called by hand (``Quantizer.soft_with_backward``), one Adam over all
weights and, on CUDA, each step replayed as a CUDA graph (models/cuda_graphs.py). It computes
what :func:`models.training.train_model` computes for each network, to rounding (see
tests/test_models.py), with the per-operation overhead paid once per group. Rows stay on the
training device for the whole run: each epoch draws one permutation there and slices batches
from it, and losses are accumulated on the device and read once.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from quantization import Quantizer, TemperatureSchedule

from .cuda_graphs import GraphedStep
from .mlp import MLP, SplitModel
from .setting import Setting
from .training import BATCH_SIZE, check_split_models, input_width, needs_input_grad, training_rows

ADAM_PIECES, ADAM_CHUNK = 256, 4096  # on CUDA Adam updates the stacked weights in at most 256 pieces of at least 4096


class StackedMLP:
    """``G`` MLPs of one setting trained as one: batched matmuls and a hand-written backward.

    The networks may differ in input width: the first layer runs per block of networks with
    equal input width and equal ``input_grad`` (whether their input needs a gradient; the MLPs
    must come with each block's networks adjacent), every later layer as one batched matmul over
    all ``G``. All weights live in one flat parameter (``flat``, viewed as ``[G, in, out]`` weights
    and ``[G, 1, out]`` biases) whose gradient :meth:`backward` writes in place, so one optimizer
    step updates every network. Activations live in buffers reused from step to step.
    """

    def __init__(self, mlps: Sequence[MLP], input_grad: Sequence[bool]) -> None:
        for mlp in mlps:
            _check_stock_mlp(mlp)
        layers = [[m for m in mlp if isinstance(m, nn.Linear)] for mlp in mlps]
        widths = {tuple(linear.out_features for linear in linears) for linears in layers}
        dropouts = {next((m.p for m in mlp if isinstance(m, nn.Dropout)), 0.0) for mlp in mlps}
        if len(widths) > 1 or len(dropouts) > 1:
            raise ValueError("networks trained together must share depth, widths and dropout (one setting); "
                             "train the others apart")
        kinds = [(linears[0].in_features, wants) for linears, wants in zip(layers, input_grad)]
        ends = list(itertools.accumulate(len(list(run)) for _, run in itertools.groupby(kinds)))
        self.blocks = list(zip([0, *ends[:-1]], ends))  # [start, stop) of each run of equal kinds
        if len(self.blocks) != len(set(kinds)):
            raise ValueError(f"MLPs of equal input width and input_grad must be adjacent, got {kinds}")
        self.input_grad = [input_grad[start] for start, _ in self.blocks]  # per block
        columns = [[(lin.weight.detach().T, lin.bias.detach()[None]) for lin in column] for column in zip(*layers)]
        tensors = [torch.stack(ws) for start, stop in self.blocks for ws in zip(*columns[0][start:stop])]
        tensors += [torch.stack(ws) for column in columns[1:] for ws in zip(*column)]
        self.flat = nn.Parameter(torch.cat([t.reshape(-1) for t in tensors]))
        self.flat.grad = torch.zeros_like(self.flat)
        values, grads = (self._views(t, [t.shape for t in tensors]) for t in (self.flat.detach(), self.flat.grad))
        first = 2 * len(self.blocks)  # tensors of the first layer: (weight, bias) per block
        self.first, self.first_grad = self._pairs(values[:first]), self._pairs(grads[:first])
        self.later, self.later_grad = self._pairs(values[first:]), self._pairs(grads[first:])  # per later layer
        self.dropout = dropouts.pop()
        self.size = len(mlps)
        self._buffers: dict[int, list[torch.Tensor]] = {}
        self._inputs: list[torch.Tensor] = []  # per block [G_b, B, in_b], saved for backward
        self._activations: list[torch.Tensor] = []  # per hidden layer [G, B, H] after ReLU and dropout
        self._keep: list[torch.Tensor | None] = []  # per hidden layer, the scaled dropout mask [B, H]

    @staticmethod
    def _views(flat: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
        return [part.view(shape) for part, shape in zip(flat.split([s.numel() for s in shapes]), shapes)]

    @staticmethod
    def _pairs(tensors: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(tensors[0::2], tensors[1::2]))

    def _buffers_for(self, batch: int) -> list[torch.Tensor]:
        """One output buffer [G, B, out] per layer, and two gradient buffers [G, B, H]."""
        if batch not in self._buffers:
            outs = [self.first[0][0].shape[-1]] + [w.shape[-1] for w, _ in self.later]
            new = [self.flat.new_empty(self.size, batch, out) for out in outs]
            self._buffers[batch] = new + [self.flat.new_empty(self.size, batch, outs[0]) for _ in range(2)]
        return self._buffers[batch]

    @torch.no_grad()
    def forward(self, inputs: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        # per block [G_b, B, in_b] -> [G, B]
        """The training forward pass: one dropout mask per layer, drawn from ``generator``, shared by the G networks."""
        buffers = self._buffers_for(inputs[0].shape[1])
        self._inputs = list(inputs)
        x = buffers[0]
        for (start, stop), block_input, (weight, bias) in zip(self.blocks, self._inputs, self.first):
            torch.baddbmm(bias, block_input, weight, out=x[start:stop])
        self._activations, self._keep = [], []
        for layer, (weight, bias) in enumerate(self.later):
            x.relu_()
            keep = None
            if self.dropout > 0:
                keep = x.new_empty(x.shape[1:]).bernoulli_(1 - self.dropout, generator=generator)
                keep = keep / (1 - self.dropout)
                x.mul_(keep)
            self._activations.append(x)
            self._keep.append(keep)
            x = torch.baddbmm(bias, x, weight, out=buffers[layer + 1])
        return x.squeeze(-1)

    @torch.no_grad()
    def backward(self, grad_output: torch.Tensor) -> list[torch.Tensor | None]:
        # [G, B] (one output) or [G, B, C] -> per block [G_b, B, in_b]
        """Write d(sum of grad_output * output)/d(flat) into ``flat.grad``; return the input gradients.

        Blocks without ``input_grad`` get None.
        """
        buffers = self._buffers_for(grad_output.shape[1])
        grad = grad_output.unsqueeze(-1) if grad_output.dim() == 2 else grad_output  # [G, B, out]
        spare = buffers[-2:]
        for layer in reversed(range(len(self.later))):
            (weight, _), (weight_grad, bias_grad) = self.later[layer], self.later_grad[layer]
            below = self._activations[layer]
            _weight_grad(below, grad, out=weight_grad)
            torch.sum(grad, dim=1, keepdim=True, out=bias_grad)
            grad = _input_grad(grad, weight, out=spare[layer % 2])
            if self._keep[layer] is not None:
                grad.mul_(self._keep[layer])
            torch.ops.aten.threshold_backward.grad_input(grad, below, 0, grad_input=grad)  # ReLU
        input_grads = []
        for (start, stop), wants, block_input, (weight, _), (weight_grad, bias_grad) in zip(
            self.blocks, self.input_grad, self._inputs, self.first, self.first_grad
        ):
            _weight_grad(block_input, grad[start:stop], out=weight_grad)
            torch.sum(grad[start:stop], dim=1, keepdim=True, out=bias_grad)
            input_grads.append(_input_grad(grad[start:stop], weight) if wants else None)
        return input_grads

    def flat_chunks(self, pieces: int, smallest: int) -> list[nn.Parameter]:
        """Parameters viewing ``flat`` in at most ``pieces`` pieces of at least ``smallest`` entries,
        each with its piece of ``flat.grad``.

        An optimizer updating them updates ``flat``. On CUDA, Adam's fused multi-tensor kernel
        gives each piece its own thread blocks, where one large tensor would get only a few.
        """
        size = max(smallest, -(-self.flat.numel() // pieces))
        chunks = []
        for values, grad in zip(self.flat.detach().split(size), self.flat.grad.split(size)):
            chunk = nn.Parameter(values)  # shares flat's storage
            chunk.grad = grad
            chunks.append(chunk)
        return chunks

    @torch.no_grad()
    def unstack_into(self, mlps: Sequence[MLP]) -> None:
        """Copy the trained weights back into the separate MLPs."""
        for (start, stop), (weight, bias) in zip(self.blocks, self.first):
            for g in range(start, stop):
                first = mlps[g][0]
                first.weight.copy_(weight[g - start].T)
                first.bias.copy_(bias[g - start, 0])
        for g, mlp in enumerate(mlps):
            for linear, (weight, bias) in zip([m for m in mlp if isinstance(m, nn.Linear)][1:], self.later):
                linear.weight.copy_(weight[g].T)
                linear.bias.copy_(bias[g, 0])


def _check_stock_mlp(mlp: nn.Module) -> None:
    """Refuse networks other than :class:`MLP`'s layout, which the hand-written backward assumes."""
    kinds = [type(m) for m in mlp] if isinstance(mlp, nn.Sequential) else [type(mlp)]
    hidden = (len(kinds) - 1) // 3
    stock = [nn.Linear, nn.ReLU, nn.Dropout] * hidden + [nn.Linear]
    if not isinstance(mlp, MLP) or kinds != stock:
        names = ", ".join(kind.__name__ for kind in kinds)
        raise ValueError(f"the stacked engine trains this project's MLP (Linear, ReLU, Dropout per hidden layer, then "
                         f"Linear to the outputs); got {type(mlp).__name__}({names}); train other networks with "
                         "models.train_model")


def _weight_grad(inputs: torch.Tensor, grad: torch.Tensor, out: torch.Tensor) -> None:
    # [G, B, in], [G, B, out] -> [G, in, out]
    """Write ``inputs^T @ grad`` into ``out``.

    For one output (the H -> 1 output layer) as ``(grad^T @ inputs)^T``, whose product [G, 1, in] is
    ``out`` transposed and contiguous: on CPU a third of the time of the matrix-vector product.
    """
    if grad.shape[-1] == 1:
        torch.bmm(grad.transpose(1, 2), inputs, out=out.transpose(1, 2))
    else:
        torch.bmm(inputs.transpose(1, 2), grad, out=out)


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    # [G, B, out], [G, in, out] -> [G, B, in]
    """``grad @ weight^T``; for one output an outer product, a broadcast multiply (faster than a matmul of depth 1)."""
    if grad.shape[-1] == 1:
        return torch.mul(grad, weight.transpose(1, 2), out=out)
    return torch.bmm(grad, weight.transpose(1, 2), out=out)


class _TrainingStep:
    """One optimizer step of a stacked group on one batch: quantizers, stacked MLP, backward, Adam."""

    def __init__(self, stacked: StackedMLP, quantizers: Sequence[Quantizer | None],
                 quantizer_parameters: Sequence[nn.Parameter],
                 optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        self.stacked, self.quantizers, self.quantizer_parameters = stacked, quantizers, quantizer_parameters
        self.optimizer, self.generator = optimizer, generator

    def __call__(self, rows: torch.Tensor, targets: torch.Tensor, fixed_inputs: Mapping[int, torch.Tensor],
                 summed_loss: torch.Tensor | None) -> None:
        # rows [B, d], targets [B], per fixed block [G_b, B, in_b]
        """Train on one batch; add each network's summed squared error (a classifier's summed cross-entropy)
        to ``summed_loss`` [G] unless None."""
        stacked = self.stacked
        inputs, quantizer_backwards = [], []  # per block [G_b, B, in_b]; per trainable block G_b functions
        for block, (first, stop) in enumerate(stacked.blocks):
            if block in fixed_inputs:
                inputs.append(fixed_inputs[block])
                continue
            outputs, backwards = zip(*(self.quantizers[g].soft_with_backward(rows) for g in range(first, stop)))
            inputs.append(torch.stack(outputs) if len(outputs) > 1 else outputs[0].unsqueeze(0))
            quantizer_backwards.append(backwards)
        out = stacked.forward(inputs, self.generator)  # [G, B], or class scores [G, B, C]
        if out.dim() == 3:
            grad = _cross_entropy_grad(out, targets, summed_loss)
        else:
            error = out - targets  # [G, B]
            if summed_loss is not None:
                summed_loss += error.square().sum(dim=1)
            grad = error * (2 / rows.shape[0])  # d(mean squared error)/d(prediction)
        for p in self.quantizer_parameters:
            p.grad = None
        input_grads = stacked.backward(grad)
        trained_input_grads = [grad for grad in input_grads if grad is not None]  # of the trainable blocks
        for backwards, grads in zip(quantizer_backwards, trained_input_grads):
            for backward, grad in zip(backwards, grads):
                backward(grad)
        self.optimizer.step()

def _cross_entropy_grad(logits: torch.Tensor, targets: torch.Tensor, summed: torch.Tensor | None) -> torch.Tensor:
    # [G, B, C], class indices [B] -> [G, B, C]
    """d(mean cross-entropy)/d(logits) = (softmax(logits) - onehot(targets)) / B; adds each network's summed
    cross-entropy to ``summed`` [G] unless None."""
    index = targets.long().view(1, -1, 1).expand(logits.shape[0], -1, 1)  # [G, B, 1]
    log_probs = logits.log_softmax(dim=-1)
    if summed is not None:
        summed -= log_probs.gather(-1, index).sum(dim=(1, 2))
    grad = log_probs.exp_()  # softmax
    grad.scatter_add_(-1, index, torch.full_like(index, -1, dtype=grad.dtype))
    return grad.mul_(1 / logits.shape[1])


def train_models(models: Sequence[SplitModel], x: torch.Tensor, y: torch.Tensor, setting: Setting, seed: int,
                 cuda_graphs: bool = True) -> list[float]:
    """Train networks of one setting together; return each one's last-epoch mean training loss.

    Networks of one output train on the mean squared error, networks of C >= 2 outputs (classifiers,
    all of a group alike) on the mean cross-entropy of the class indices in ``y``.

    ``setting`` gives the learning rate, weight decay, epochs and temperature decrease; the
    networks' layers and dropout are their own (:func:`models.build_model` builds them from the setting).

    Adam on shuffled batches of 512, the temperature lowered after every epoch. The networks
    see the same batches and dropout masks (drawn from one generator seeded with ``seed``, so a
    network's training does not depend on the others in its group) and run as one
    :class:`StackedMLP`: each network's gradients, Adam updates and results are its own, but
    the per-operation overhead is paid once for the group. Quantizers without trainable
    parameters (fixed ones, or trainable ones whose parameters were frozen) quantize the training
    rows once, before the first epoch, in hard mode: the network trains on what it is evaluated
    on. Trainable ones run through :meth:`Quantizer.soft_with_backward`, fed the input gradients
    of the stacked MLP.
    On CUDA each step is replayed as a CUDA graph (``cuda_graphs=False``: launched op by op), on
    the GPU of ``x``, and torch's CUDA cache is emptied when the stack is done, which returns the
    graphs' memory to the device. The quantizers' ``.grad`` is None afterwards. Rows and
    targets are cast to the networks' dtype.
    """
    models = list(models)
    _check_trainable_together(models)
    x, y = training_rows(models[0], x, y)
    needs_grad = [needs_input_grad(m.quantizer) for m in models]
    order = sorted(range(len(models)), key=lambda g: (models[g].mlp[0].in_features, not needs_grad[g]))
    graphed = cuda_graphs and x.is_cuda
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():  # streams and graphs on x's GPU
        stack = [models[g] for g in order]
        summed_loss = _train_stack(stack, [needs_grad[g] for g in order], x, y, setting, seed, graphed)
        if graphed:  # the graphs' memory pool, freed with the stack, goes back to the device (to other processes too)
            torch.cuda.empty_cache()
    losses = (summed_loss / x.shape[0]).tolist()
    return [losses[order.index(g)] for g in range(len(models))]


def _check_trainable_together(models: Sequence[SplitModel]) -> None:
    """Refuse networks that cannot train as one stack: other MLPs, shared parameters, mixed dtypes or input widths."""
    check_split_models(models)
    for model in models:
        _check_stock_mlp(model.mlp)
    parameters = [id(p) for model in models for p in model.parameters()]
    if len(set(parameters)) < len(parameters):
        raise ValueError("networks trained together share parameters (the same network or quantizer twice); "
                         "train each once")
    dtypes = {model.mlp[0].weight.dtype for model in models}
    if len(dtypes) > 1:
        raise ValueError(f"networks trained together must share one dtype, got {sorted(map(str, dtypes))}; "
                         "convert them with .to(dtype)")
    widths = {input_width(model) for model in models}
    if len(widths) > 1:
        raise ValueError(f"networks trained together must read the same features, got {sorted(widths)} of them; "
                         "train them apart")


def _train_stack(models: Sequence[SplitModel], needs_grad: Sequence[bool], x: torch.Tensor, y: torch.Tensor,
                 setting: Setting, seed: int, graphed: bool) -> torch.Tensor:
    """:func:`train_models` on networks in stacking order; return their summed training losses of the last epoch [G]
    (squared errors; a classifier's cross-entropies).

    The stack, its optimizer and its CUDA graph live only here, so their memory is free when it returns.
    """
    quantizers = [m.quantizer for m in models]
    stacked = StackedMLP([m.mlp for m in models], needs_grad)
    quantizer_parameters = [p for q in quantizers if q is not None for p in q.parameters() if p.requires_grad]
    # on CUDA with or without graphs alike, so that both paths compute the same numbers
    mlp_parameters = stacked.flat_chunks(ADAM_PIECES, ADAM_CHUNK) if x.is_cuda else [stacked.flat]
    optimizer = torch.optim.Adam([*mlp_parameters, *quantizer_parameters], lr=setting.learning_rate,
                                 weight_decay=setting.weight_decay, fused=True, capturable=graphed)
    # NOTE[DIFF]: batches and dropout masks from a generator per row, shared by its networks
    generator = torch.Generator(device=x.device).manual_seed(seed)
    train_step = _TrainingStep(stacked, quantizers, quantizer_parameters, optimizer, generator)
    if graphed:
        train_step = GraphedStep(train_step, generator)
    schedule = TemperatureSchedule(setting.decrease_factor, setting.num_epochs)
    n = x.shape[0]
    for model in models:
        model.train()
        model.set_hard(False)
    with torch.no_grad():  # blocks without trainable quantizers: what they see never changes
        fixed_blocks = {
            block: torch.stack([x if quantizers[g] is None else quantizers[g].decode(quantizers[g].encode(x))  # hard
                                for g in range(start, stop)])  # [G_b, n, in_b]
            for block, (start, stop) in enumerate(stacked.blocks) if not stacked.input_grad[block]
        }
    fixed_epoch = {block: torch.empty_like(inputs) for block, inputs in fixed_blocks.items()}  # reshuffled in place
    summed_loss = torch.zeros(len(models), device=x.device)  # of the last epoch
    for epoch in range(setting.num_epochs):
        for model in models:
            model.set_temperature(schedule.tau)
        if graphed:
            train_step.new_epoch()
        last_epoch = epoch == setting.num_epochs - 1
        shuffled = torch.randperm(n, device=x.device, generator=generator)  # shuffled once: batches are slices
        x_epoch, y_epoch = x.index_select(0, shuffled), y.index_select(0, shuffled)
        for block, inputs in fixed_blocks.items():  # into the same memory every epoch: no fresh pages to fault in
            torch.index_select(inputs, 1, shuffled, out=fixed_epoch[block])
        for start in range(0, n, BATCH_SIZE):
            batch = slice(start, start + BATCH_SIZE)
            fixed_inputs = {block: inputs[:, batch] for block, inputs in fixed_epoch.items()}
            train_step(x_epoch[batch], y_epoch[batch], fixed_inputs, summed_loss if last_epoch else None)
        schedule.step()
    for p in quantizer_parameters:
        p.grad = None  # of the last batch only (on CUDA it may live in the graph's memory pool)
    stacked.unstack_into([m.mlp for m in models])
    for model in models:
        # NOTE[DIFF]: the paper does not say at which temperature the soft losses are taken
        model.set_temperature(schedule.tau)  # the soft-mode evaluations use the final temperature
    return summed_loss

