"""One training loop and one evaluation for every method (SPEC section 4).

Rows stay on the training device for the whole run: each epoch draws one permutation there
and slices batches from it, losses are accumulated on the device and read once, and
evaluation runs under ``torch.inference_mode`` in large batches.
"""

import contextlib
import functools
import itertools
import random
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from quantization import TemperatureSchedule
from quantization.thresholds import is_finite_number, is_whole_number, value_text

from .methods import METHODS, Method, QuantizerContext, get_method
from .mlp import MLP, SplitModel

BATCH_SIZE = 512
EVAL_BATCH_SIZE = 65536
ADAM_PIECES, ADAM_CHUNK = 256, 4096  # on CUDA Adam updates the stacked weights in at most 256 pieces of at least 4096
STACK_PARAMETERS = 2**24  # MLP weights trained as one stack at most: with gradients and Adam's state about 270 MB


INTEGER_SETTING_KEYS = ("hidden_layers", "hidden_neurons", "num_epochs")
SETTING_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {  # key -> (the range in words, its test)
    "weight_decay": (">= 0", lambda v: v >= 0),
    "learning_rate": ("> 0", lambda v: v > 0),
    "hidden_layers": (">= 0", lambda v: v >= 0),
    "hidden_neurons": (">= 1", lambda v: v >= 1),
    "num_epochs": (">= 1", lambda v: v >= 1),
    "decrease_factor": ("in (0, 1]", lambda v: 0 < v <= 1),
    "dropout_rate": ("in [0, 1)", lambda v: 0 <= v < 1),
}


@dataclass(frozen=True)
class Setting:
    """One hyperparameter setting of the search space (the paper's Table 3)."""

    weight_decay: float
    learning_rate: float
    hidden_layers: int
    hidden_neurons: int
    num_epochs: int
    decrease_factor: float
    dropout_rate: float

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> "Setting":
        """Read the seven keys from a dict or CSV row, numbers or their text (other keys are ignored)."""
        missing = [f.name for f in fields(cls) if f.name not in values]
        if missing:
            raise ValueError(f"a setting needs the keys {', '.join(SETTING_KEYS)}; missing {', '.join(missing)}")
        return cls(**{f.name: _parsed(values[f.name]) for f in fields(cls)})

    @staticmethod
    def check_value(key: str, value: object) -> None:
        """Raise a ValueError naming ``key`` unless ``value`` is a finite number (a whole one for
        the integer keys) in its range (``SETTING_RANGES``)."""
        words, in_range = SETTING_RANGES[key]
        if not is_finite_number(value):
            raise ValueError(f"{key} must be a finite number, got {value_text(value)}")
        if key in INTEGER_SETTING_KEYS and not is_whole_number(value):
            raise ValueError(f"{key} must be a whole number, got {value_text(value)}")
        if not in_range(value):
            raise ValueError(f"{key} must be {words}, got {value_text(value)}")

    def __post_init__(self) -> None:
        for key in SETTING_RANGES:  # checked, then stored as plain int or float (from NumPy or a CSV's 3.0, say)
            value = getattr(self, key)
            self.check_value(key, value)
            object.__setattr__(self, key, int(value) if key in INTEGER_SETTING_KEYS else float(value))


SETTING_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Setting))


def _parsed(value: object) -> object:
    """A number written as text ("2", "1e-3") as a float; anything else as it is (for the checks to name)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


Split = tuple[torch.Tensor, torch.Tensor]  # (x [n, d], y [n]), standardized, on the device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(method: Method, setting: Setting, ctx: QuantizerContext) -> SplitModel:
    """A fresh network for ``method`` on the device of the training rows."""
    quantizer = None if method.quantizer is None else method.quantizer(ctx)
    in_features = ctx.n_features if quantizer is None else quantizer.out_features
    mlp = MLP(in_features, setting.hidden_neurons, setting.hidden_layers, setting.dropout_rate)
    return SplitModel(quantizer, mlp).to(ctx.train_x.device)


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
            raise ValueError("networks trained together must share depth, widths and dropout (one setting); train the others apart")
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
    def forward(self, inputs: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:  # per block [G_b, B, in_b] -> [G, B]
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
    def backward(self, grad_output: torch.Tensor) -> list[torch.Tensor | None]:  # [G, B] -> per block [G_b, B, in_b]
        """Write d(sum of grad_output * output)/d(flat) into ``flat.grad``; return the input gradients.

        Blocks without ``input_grad`` get None.
        """
        buffers = self._buffers_for(grad_output.shape[1])
        grad = grad_output.unsqueeze(-1)  # [G, B, out]
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
    if not isinstance(mlp, MLP) or kinds != [nn.Linear, nn.ReLU, nn.Dropout] * hidden + [nn.Linear] or mlp[-1].out_features != 1:
        names = ", ".join(kind.__name__ for kind in kinds)
        raise ValueError(f"the training loop trains this project's MLP (Linear, ReLU, Dropout per hidden layer, then Linear "
                         f"to one output); got {type(mlp).__name__}({names}); train other networks with a loop of your own")


def _weight_grad(inputs: torch.Tensor, grad: torch.Tensor, out: torch.Tensor) -> None:  # [G, B, in], [G, B, out] -> [G, in, out]
    """Write ``inputs^T @ grad`` into ``out``.

    For one output (the H -> 1 output layer) as ``(grad^T @ inputs)^T``, whose product [G, 1, in] is
    ``out`` transposed and contiguous: on CPU a third of the time of the matrix-vector product.
    """
    if grad.shape[-1] == 1:
        torch.bmm(grad.transpose(1, 2), inputs, out=out.transpose(1, 2))
    else:
        torch.bmm(inputs.transpose(1, 2), grad, out=out)


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:  # [G, B, out], [G, in, out] -> [G, B, in]
    """``grad @ weight^T``; for one output an outer product, a broadcast multiply (faster than a matmul of depth 1)."""
    if grad.shape[-1] == 1:
        return torch.mul(grad, weight.transpose(1, 2), out=out)
    return torch.bmm(grad, weight.transpose(1, 2), out=out)


def needs_input_grad(quantizer: nn.Module | None) -> bool:
    """Whether the MLP must hand an input gradient to this quantizer (it has parameters to train)."""
    return quantizer is not None and any(p.requires_grad for p in quantizer.parameters())


class _TrainingStep:
    """One optimizer step of a stacked group on one batch: quantizers, stacked MLP, backward, Adam."""

    def __init__(self, stacked: StackedMLP, quantizers: Sequence[nn.Module | None], quantizer_parameters: Sequence[nn.Parameter],
                 optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        self.stacked, self.quantizers, self.quantizer_parameters = stacked, quantizers, quantizer_parameters
        self.optimizer, self.generator = optimizer, generator

    def __call__(self, rows: torch.Tensor, targets: torch.Tensor, fixed_inputs: Mapping[int, torch.Tensor],
                 squared_error: torch.Tensor | None) -> None:  # rows [B, d], targets [B], per fixed block [G_b, B, in_b]
        """Train on one batch; add each network's summed squared error to ``squared_error`` [G] unless None."""
        stacked = self.stacked
        inputs, quantizer_backwards = [], []  # per block [G_b, B, in_b]; per trainable block G_b functions
        for block, (first, stop) in enumerate(stacked.blocks):
            if block in fixed_inputs:
                inputs.append(fixed_inputs[block])
                continue
            outputs, backwards = zip(*(self.quantizers[g].soft_with_backward(rows) for g in range(first, stop)))
            inputs.append(torch.stack(outputs) if len(outputs) > 1 else outputs[0].unsqueeze(0))
            quantizer_backwards.append(backwards)
        error = stacked.forward(inputs, self.generator) - targets  # [G, B]
        if squared_error is not None:
            squared_error += error.square().sum(dim=1)
        for p in self.quantizer_parameters:
            p.grad = None
        input_grads = stacked.backward(error * (2 / rows.shape[0]))  # d(mean squared error)/d(prediction)
        trained_input_grads = [grad for grad in input_grads if grad is not None]  # of the trainable blocks
        for backwards, grads in zip(quantizer_backwards, trained_input_grads):
            for backward, grad in zip(backwards, grads):
                backward(grad)
        self.optimizer.step()


class _GraphedStep:
    """A :class:`_TrainingStep` on CUDA replayed as a CUDA graph: one launch per batch instead of one per kernel.

    The graph computes exactly what the step computes (the same kernels on copies of the batch
    in fixed buffers). It is captured again after :meth:`new_epoch`, because the temperature is
    a constant of the captured kernels, into the memory pool of the graph it replaces (which is
    never replayed again), so memory does not grow with the epochs; batches of another size (an
    epoch's last) run eagerly.
    """

    def __init__(self, step: _TrainingStep) -> None:
        self.step = step
        self.stream = _capture_stream(torch.cuda.current_device())  # warm-up and capture run here, as CUDA graphs require
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stale = True  # the graph must be captured (again) before its next replay
        self.buffers: tuple | None = None  # (rows, targets, fixed inputs) the graph reads

    def new_epoch(self) -> None:
        self.stale = True

    def __call__(self, rows: torch.Tensor, targets: torch.Tensor, fixed_inputs: Mapping[int, torch.Tensor],
                 squared_error: torch.Tensor | None) -> None:
        if self.buffers is None:  # the first batch trains eagerly, so that lazy initialisations happen outside a capture
            self._on_side_stream(self.step, rows, targets, fixed_inputs, squared_error)
            self.buffers = (rows.clone(), targets.clone(), {block: t.clone() for block, t in fixed_inputs.items()})
            return
        static_rows, static_targets, static_fixed = self.buffers
        if rows.shape != static_rows.shape:
            self.step(rows, targets, fixed_inputs, squared_error)
            return
        static_rows.copy_(rows)
        static_targets.copy_(targets)
        for block, inputs in fixed_inputs.items():
            static_fixed[block].copy_(inputs)
        if self.stale:
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self.step.generator)
            pool = None if self.graph is None else self.graph.pool()
            self._on_side_stream(self._capture, graph, pool, static_rows, static_targets, static_fixed, squared_error)
            self.graph, self.stale = graph, False
        self.graph.replay()

    def _capture(self, graph: torch.cuda.CUDAGraph, pool: tuple | None, *batch) -> None:
        graph.capture_begin(pool=pool)
        try:
            self.step(*batch)
        finally:
            graph.capture_end()

    def _on_side_stream(self, function: Callable[..., None], *arguments) -> None:
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            function(*arguments)
        current.wait_stream(self.stream)


@functools.lru_cache(maxsize=None)
def _capture_stream(device: int) -> torch.cuda.Stream:
    """One side stream per GPU for every capture: cuBLAS keeps a workspace for each stream it runs on."""
    return torch.cuda.Stream(device)


def train_models(models: Sequence[SplitModel], x: torch.Tensor, y: torch.Tensor, setting: Setting, seed: int,
                 cuda_graphs: bool = True) -> list[float]:
    """Train networks of one setting together; return each one's last-epoch mean training loss.

    ``setting`` gives the learning rate, weight decay, epochs and temperature decrease; the
    networks' layers and dropout are their own (:func:`build_model` builds them from the setting).

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
    x, y = _rows_and_targets(models[0], x, y, "training")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):  # one check per run, not per batch
        raise ValueError("the training rows or targets hold NaN or infinite values; drop or impute them before training")
    needs_grad = [needs_input_grad(m.quantizer) for m in models]
    order = sorted(range(len(models)), key=lambda g: (models[g].mlp[0].in_features, not needs_grad[g]))
    graphed = cuda_graphs and x.is_cuda and hasattr(torch.cuda.CUDAGraph, "register_generator_state")  # torch >= 2.5
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():  # streams and graphs on x's GPU
        squared_error = _train_stack([models[g] for g in order], [needs_grad[g] for g in order], x, y, setting, seed, graphed)
        if graphed:  # the graphs' memory pool, freed with the stack, goes back to the device (to other processes too)
            torch.cuda.empty_cache()
    losses = (squared_error / x.shape[0]).tolist()
    return [losses[order.index(g)] for g in range(len(models))]


def _check_split_models(models: Sequence[nn.Module]) -> None:
    """Refuse no networks, or networks other than :class:`SplitModel`."""
    if not models:
        raise ValueError("no networks given; pass a list of SplitModel networks built by models.build_model")
    for model in models:
        if not isinstance(model, SplitModel):
            raise TypeError(f"expected SplitModel(quantizer, MLP) networks, as models.build_model builds them, got {type(model).__name__}")


def _check_trainable_together(models: Sequence[SplitModel]) -> None:
    """Refuse networks that cannot train as one stack: other MLPs, shared parameters, mixed dtypes or input widths."""
    _check_split_models(models)
    for model in models:
        _check_stock_mlp(model.mlp)
    parameters = [id(p) for model in models for p in model.parameters()]
    if len(set(parameters)) < len(parameters):
        raise ValueError("networks trained together share parameters (the same network or quantizer twice); train each once")
    dtypes = {model.mlp[0].weight.dtype for model in models}
    if len(dtypes) > 1:
        raise ValueError(f"networks trained together must share one dtype, got {sorted(map(str, dtypes))}; convert them with .to(dtype)")
    widths = {_input_width(model) for model in models}
    if len(widths) > 1:
        raise ValueError(f"networks trained together must read the same features, got {sorted(widths)} of them; train them apart")


def _input_width(model: SplitModel) -> int:
    """The number of features d of the rows [n, d] that ``model`` reads."""
    return model.mlp[0].in_features if model.quantizer is None else model.quantizer.n_features


def _rows_and_targets(model: SplitModel, x: torch.Tensor, y: torch.Tensor, what: str) -> Split:
    """Check rows x [n, d] (n >= 1, d the network's input width) and targets y [n]; return both in the network's dtype."""
    width = _input_width(model)
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise TypeError(f"expected tensors of {what} rows and targets, got {type(x).__name__} and {type(y).__name__}; "
                        "convert numpy arrays with torch.as_tensor")
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] != width or y.shape != x.shape[:1]:
        hint = "; flatten y with y.view(-1)" if y.dim() == 2 and y.shape[1] == 1 else ""
        raise ValueError(f"expected {what} rows x [n, {width}] with n >= 1 and targets y [n], got {list(x.shape)} and {list(y.shape)}{hint}")
    dtype = model.mlp[0].weight.dtype
    return x.to(dtype), y.to(dtype)


def _train_stack(models: Sequence[SplitModel], needs_grad: Sequence[bool], x: torch.Tensor, y: torch.Tensor,
                 setting: Setting, seed: int, graphed: bool) -> torch.Tensor:
    """:func:`train_models` on networks in stacking order; return their summed squared errors of the last epoch [G].

    The stack, its optimizer and its CUDA graph live only here, so their memory is free when it returns.
    """
    quantizers = [m.quantizer for m in models]
    stacked = StackedMLP([m.mlp for m in models], needs_grad)
    quantizer_parameters = [p for q in quantizers if q is not None for p in q.parameters() if p.requires_grad]
    # on CUDA with or without graphs alike, so that both paths compute the same numbers
    mlp_parameters = stacked.flat_chunks(ADAM_PIECES, ADAM_CHUNK) if x.is_cuda else [stacked.flat]
    optimizer = torch.optim.Adam([*mlp_parameters, *quantizer_parameters], lr=setting.learning_rate,
                                 weight_decay=setting.weight_decay, fused=True, capturable=graphed)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    step = _TrainingStep(stacked, quantizers, quantizer_parameters, optimizer, generator)
    if graphed:
        step = _GraphedStep(step)
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
    squared_error = torch.zeros(len(models), device=x.device)  # of the last epoch
    for epoch in range(setting.num_epochs):
        for model in models:
            model.set_temperature(schedule.tau)
        if graphed:
            step.new_epoch()
        last_epoch = epoch == setting.num_epochs - 1
        shuffled = torch.randperm(n, device=x.device, generator=generator)  # shuffled once: batches are slices
        x_epoch, y_epoch = x.index_select(0, shuffled), y.index_select(0, shuffled)
        for block, inputs in fixed_blocks.items():  # into the same memory every epoch: no fresh pages to fault in
            torch.index_select(inputs, 1, shuffled, out=fixed_epoch[block])
        for start in range(0, n, BATCH_SIZE):
            batch = slice(start, start + BATCH_SIZE)
            fixed_inputs = {block: inputs[:, batch] for block, inputs in fixed_epoch.items()}
            step(x_epoch[batch], y_epoch[batch], fixed_inputs, squared_error if last_epoch else None)
        schedule.step()
    for p in quantizer_parameters:
        p.grad = None  # of the last batch only (on CUDA it may live in the graph's memory pool)
    stacked.unstack_into([m.mlp for m in models])
    for model in models:
        model.set_temperature(schedule.tau)  # the soft-mode evaluations use the final temperature
    return squared_error


def train_model(model: SplitModel, x: torch.Tensor, y: torch.Tensor, setting: Setting, seed: int | None = None) -> float:
    """Train one network (see :func:`train_models`); without ``seed`` the batches follow torch's global seed."""
    if seed is None:
        seed = int(torch.randint(2**62, ()))
    return train_models([model], x, y, setting, seed)[0]


def evaluate(model: SplitModel, x: torch.Tensor, y: torch.Tensor, hard: bool = True) -> float:
    """Sample-weighted MSE over the whole split, in eval mode (dropout off)."""
    return evaluate_splits(model, {"evaluation": (x, y)}, hard)["evaluation"]


@torch.inference_mode()
def evaluate_splits(model: SplitModel, splits: Mapping[str, Split], hard: bool = True) -> dict[str, float]:
    """:func:`evaluate` on every split, with one forward pass over all their rows."""
    _check_split_models([model])
    if not splits:
        raise ValueError("no splits given; pass a mapping of names to (x, y)")
    splits = {name: _rows_and_targets(model, x, y, name) for name, (x, y) in splits.items()}
    model.eval()
    model.set_hard(hard)
    x = torch.cat([x for x, _ in splits.values()])
    error = torch.cat([model(x[start : start + EVAL_BATCH_SIZE]) for start in range(0, x.shape[0], EVAL_BATCH_SIZE)])
    error -= torch.cat([y for _, y in splits.values()])
    parts = error.double().split([y.shape[0] for _, y in splits.values()])
    return {name: part.square().sum().item() / part.shape[0] for name, part in zip(splits, parts)}


@dataclass
class MethodResult:
    """The losses of one method on one split of the data, as the result files report them."""

    losses: dict[str, float]  # split name -> hard-mode MSE
    train_loss: float
    seconds: float  # training time (of the FP network for post-training methods)
    soft_losses: dict[str, float] = field(default_factory=dict)  # soft_eval methods only
    model: SplitModel | None = None


def run_methods(
    names: Iterable[str],
    settings: Mapping[str, Setting],
    train: Split,
    evaluations: Mapping[str, Split],
    bits: int,
    seed: int,
    on_stack: Callable[[str], None] | None = None,
) -> dict[str, MethodResult]:
    """Train and evaluate each named method with its setting on one split of the data.

    Every network is built right after seeding with ``seed``, so its initial weights do not
    depend on which other methods run. A post-training method quantizes the inputs of the FP
    network of its setting, trained once and shared (with FP itself too). Networks of one
    setting train together (:func:`train_models`), in stacks of at most ``STACK_PARAMETERS``
    weights so that the paper's widest settings fit in memory; each network is charged an equal
    share of its stack's training time. ``on_stack(names)`` is called with the space-separated methods of each stack before it trains.
    """
    if isinstance(names, str):
        raise TypeError(f"names must be a list of method names, e.g. [{names!r}], not a string")
    names = list(names)
    for name in names:
        get_method(name)
    unset = [name for name in names if name not in settings]
    if unset:
        raise ValueError(f"settings has no setting for {', '.join(unset)}; give every method of names one")
    ctx = QuantizerContext.from_training_rows(train[0], bits)
    networks: dict[tuple[str, Setting], SplitModel] = {}  # (trained method, setting) -> network
    for name in names:
        key = _network_key(name, settings[name])
        if key not in networks:
            seed_everything(seed)
            networks[key] = build_model(METHODS[key[0]], key[1], ctx)
    trained: dict[tuple[str, Setting], tuple[float, float]] = {}  # key -> (train loss, seconds)
    for keys in _stacks(networks):
        if on_stack is not None:
            on_stack(" ".join(key[0] for key in keys))
        start = time.perf_counter()
        losses = train_models([networks[key] for key in keys], *train, keys[0][1], seed)
        seconds = (time.perf_counter() - start) / len(keys)
        trained.update({key: (loss, seconds) for key, loss in zip(keys, losses)})
    results = {}
    for name in names:
        method, key = METHODS[name], _network_key(name, settings[name])
        model = networks[key]
        if method.post_training:
            model = SplitModel(method.quantizer(ctx).to(train[0].device), model.mlp)
        results[name] = _evaluated(method, model, evaluations, *trained[key])
    return results


def _stacks(networks: Mapping[tuple[str, Setting], SplitModel]) -> list[list[tuple[str, Setting]]]:
    """The networks of each setting, in runs of at most ``STACK_PARAMETERS`` MLP weights (at least one network)."""
    stacks: list[list[tuple[str, Setting]]] = []
    sizes: list[int] = []  # weights per stack
    open_stack: dict[Setting, int] = {}  # setting -> index of the stack it is filling
    for key, model in networks.items():
        weights = sum(p.numel() for p in model.mlp.parameters())
        index = open_stack.get(key[1])
        if index is None or sizes[index] + weights > STACK_PARAMETERS:
            index = open_stack[key[1]] = len(stacks)
            stacks.append([])
            sizes.append(0)
        stacks[index].append(key)
        sizes[index] += weights
    return stacks


def _network_key(name: str, setting: Setting) -> tuple[str, Setting]:
    """The network a method needs: its own, or for post-training methods FP's of that setting."""
    return (METHODS[name].network, setting)


def _evaluated(
    method: Method, model: SplitModel, evaluations: Mapping[str, Split], train_loss: float, seconds: float
) -> MethodResult:
    losses = evaluate_splits(model, evaluations, hard=True)
    soft = evaluate_splits(model, evaluations, hard=False) if method.soft_eval else {}
    return MethodResult(losses, train_loss, seconds, soft, model)
