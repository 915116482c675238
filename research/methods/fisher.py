"""Diagonal Fisher information estimators, per sample with ``torch.func``.

The literature's anchors disagree on what "the Fisher" of EWC (Kirkpatrick et al. 2017) is, so each estimator
is offered by name, and a run records which one it used. With g_y(x) = ∇_θ log p(y|x; θ) and N examples:

- ``exact``:     F = 1/N Σ_n Σ_y p(y|x_n) g_y(x_n)²            (the true Fisher; van de Ven 2025 finds it best)
- ``sample``:    F = 1/N Σ_n g_ŷ(x_n)²,  ŷ ~ p(y|x_n)           (one Monte-Carlo label per example)
- ``empirical``: F = 1/N Σ_n g_{y_n}(x_n)²                      (the example's true label)
- ``batched``:   F = 1/B Σ_b (∇_θ mean_{n∈b} −log p(y_n|x_n))²  (Avalanche's EWCPlugin: squared minibatch-mean
  gradients, B minibatches; ≈ the empirical Fisher divided by the batch size, so λ depends on the batch size)

All estimators run with the model in eval mode (no dropout noise, BatchNorm uses and keeps its running
statistics) and restore the previous mode afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap
from torch.nn import functional as F

from research.data.inputs import Inputs, compact, take, unsqueeze
from research.data.inputs import count as count_examples
from research.methods.base import HeadBatch
from research.methods.layer_fisher import CLOSED_FORM, add_layer, own_names
from research.models.modes import eval_mode

FisherEstimator = Literal["exact", "sample", "empirical", "batched"]
FISHER_ESTIMATORS: tuple[str, ...] = ("exact", "sample", "empirical", "batched")

# Upper bound on floats held by one vmap chunk of per-sample (per-class) gradients: 2**26 floats = 256 MiB.
_CHUNK_FLOATS = 2**26


def fisher_diagonal(
    model: nn.Module,
    batches: Iterable[HeadBatch],
    param_names: list[str],
    estimator: FisherEstimator = "exact",
    generator: torch.Generator | None = None,
    values: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Diagonal Fisher for the named parameters over ``batches`` (each scored by its own head).

    ``values`` are the parameter values at which the model is evaluated (default: its own). A value with fewer
    rows than its parameter evaluates the model as it was before that parameter grew (a shared head with only
    the outputs it had then; ``research.models.extent.values_at``), so the softmax runs over those outputs only
    and the result has the value's shape. Every parameter enters detached, those not estimated as constants, so
    the result never carries an autograd graph."""
    if estimator not in FISHER_ESTIMATORS:
        raise ValueError(f"unknown Fisher estimator '{estimator}'; valid choices: {', '.join(FISHER_ESTIMATORS)}")
    params, constants = split_values(model, param_names, values)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    num_params = sum(p.numel() for p in params.values())
    closed_form = {
        full
        for name, module in model.named_modules()
        if isinstance(module, CLOSED_FORM)
        for full in own_names(name, module, params).values()
    }
    general_numel = sum(p.numel() for n, p in params.items() if n not in closed_form)
    count = 0
    with eval_mode(model):
        for batch in batches:
            if estimator == "batched":
                _add(fisher, _batch_mean_gradient(model, params, constants, batch), square=True)
                count += 1
                continue
            # ``exact`` holds one Jacobian row per output of this head, for the parameters without a closed form
            classes = model.heads[batch.head].out_features  # type: ignore[index]
            per_example = (general_numel if estimator == "exact" else num_params) * classes
            for x, y in example_chunks(batch, per_example):
                if estimator == "exact":
                    _add(fisher, _exact_sum(model, params, constants, batch.head, x))
                else:
                    if estimator == "sample":
                        with torch.no_grad():
                            probs = functional_call(model, (params, constants), (x,), {"head": batch.head}).softmax(-1)
                        y = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                    grads = _per_sample_gradients(model, params, constants, batch.head, x, y)
                    _add(fisher, {n: g.pow(2).sum(0) for n, g in grads.items()})
                count += count_examples(x)
    if count == 0:
        raise ValueError("cannot estimate a Fisher from no data")
    return {n: (f / count).detach() for n, f in fisher.items()}


def split_values(
    model: nn.Module, param_names: list[str], values: dict[str, Tensor] | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the estimated parameters, everything else ``functional_call`` needs: buffers and the other parameters),
    all detached. ``values`` override the model's own parameters (see ``fisher_diagonal``). Passing every
    parameter explicitly matters: one left to the module itself would be a live, trainable tensor on the forward
    path, and the estimate would carry its autograd graph into the training loss."""
    current = {n: p.detach() for n, p in model.named_parameters()}
    current.update({n: v.detach() for n, v in (values or {}).items()})
    params = {n: current[n] for n in param_names}
    constants = {**dict(model.named_buffers()), **{n: v for n, v in current.items() if n not in params}}
    return params, constants


def _add(total: dict[str, Tensor], part: dict[str, Tensor], square: bool = False, init: bool = False) -> None:
    """``total[n] += part[n]`` (squared if asked); ``init``: a name not in ``total`` yet starts at ``part[n]``."""
    for n, value in part.items():
        value = value.pow(2) if square else value
        if init and n not in total:
            total[n] = value
        else:
            total[n] += value


def example_chunks(batch: HeadBatch, floats_per_example: int) -> Iterable[tuple[Tensor, Tensor]]:
    """Split a batch so that the per-example gradients of one chunk (``floats_per_example`` floats each) stay
    within the memory bound of 2**26 floats (256 MiB)."""
    size = max(1, _CHUNK_FLOATS // max(1, floats_per_example))
    for start in range(0, len(batch.y), size):
        yield compact(take(batch.x, slice(start, start + size))), batch.y[start : start + size]


def _log_probs_fn(model: nn.Module, constants: dict[str, Tensor], head: str):
    def log_probs(params: dict[str, Tensor], x: Inputs) -> Tensor:
        logits = functional_call(model, (params, constants), (unsqueeze(x),), {"head": head})
        return F.log_softmax(logits, dim=-1).squeeze(0)

    return log_probs


def _exact_sum(model: nn.Module, params: dict[str, Tensor], constants: dict[str, Tensor], head: str, x: Inputs):
    """Σ_n Σ_y p(y|x_n) g_y(x_n)² for one chunk.

    Linear, embedding and layer-norm parameters take closed forms (research.methods.layer_fisher): one backward
    pass per class over the whole chunk gives each layer's output gradients, and the per-example gradients of
    those parameters follow from them and the layer's input, never through the whole model's per-example
    gradients (on CPU, writing those out costs far more than the arithmetic). For a linear layer that sees each
    example once, z = W a + b, the per-example gradient is δ_y aᵀ, so its exact Fisher is Σ_n (Σ_y p_y δ_y²)(a²)ᵀ:
    one matrix product for all classes. Every other parameter (convolutions, batch norm, a layer called twice)
    takes the general route: the per-example Jacobian of log p over classes with ``vmap(jacrev(·))``, in
    sub-chunks sized by those parameters alone.
    """
    closed = _closed_form(model, params, constants, head, x)
    rest = {n: p for n, p in params.items() if n not in closed}
    out = dict(closed)
    if rest:
        fixed = {n: p for n, p in params.items() if n not in rest}
        classes = model.heads[head].out_features  # type: ignore[index]
        size = max(1, _CHUNK_FLOATS // max(1, sum(p.numel() for p in rest.values()) * classes))
        for start in range(0, count_examples(x), size):
            part = take(x, slice(start, start + size))
            _add(out, _exact_sum_jacobian(model, rest, {**constants, **fixed}, head, part), init=True)
    return out


def _closed_form(
    model: nn.Module, params: dict[str, Tensor], constants: dict[str, Tensor], head: str, x: Inputs
) -> dict[str, Tensor]:
    """The exact Fisher sums of the requested parameters of linear, embedding and layer-norm layers that run once
    per forward pass (see ``_exact_sum``); other parameters are left out of the result."""
    wanted = set(params)
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, CLOSED_FORM) and own_names(name, module, wanted)
    }
    seen: dict[str, list[tuple[Tensor, Tensor, int]]] = {name: [] for name in layers}

    def capture(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            # Every parameter enters detached, so the first layers' outputs have no graph: they become graph
            # leaves here, so that the log-probabilities can be differentiated with respect to each output
            # (inputs such as token ids cannot require a gradient themselves). The model goes on with a copy, so
            # an in-place activation after the layer changes the copy, never the output differentiated against.
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            seen[name].append((inputs[0].detach(), output, output._version))
            return output.clone()

        return hook

    handles = [module.register_forward_hook(capture(name)) for name, module in layers.items()]
    try:
        with torch.enable_grad():
            logits = functional_call(model, (params, constants), (x,), {"head": head})
    finally:
        for handle in handles:
            handle.remove()
    # Usable: called once (and, though the model works on a copy, its output unchanged since).
    usable = {n: c[0] for n, c in seen.items() if len(c) == 1 and c[0][1]._version == c[0][2]}
    result: dict[str, Tensor] = {}
    for name, calls in seen.items():  # a layer the forward pass never reached (another head) has no gradient
        if not calls:
            result.update(
                {full: torch.zeros_like(params[full]) for full in own_names(name, layers[name], wanted).values()}
            )
    if not usable:
        return result
    with torch.enable_grad():
        log_probs = F.log_softmax(logits, dim=-1)
    probs = log_probs.detach().exp()
    examples = log_probs.shape[0]
    flat = {
        n
        for n, (a, out, _) in usable.items()
        if isinstance(layers[n], nn.Linear) and a.dim() == 2 and a.shape[0] == out.shape[0] == examples
    }
    weighted = {n: torch.zeros_like(usable[n][1]) for n in flat}  # Σ_y p_y δ_y², per example and unit
    totals = {full: torch.zeros_like(params[full]) for n in usable for full in own_names(n, layers[n], wanted).values()}
    handled = set(usable)
    outputs = [out for _, out, _ in usable.values()]
    for y in range(log_probs.shape[1]):
        deltas = torch.autograd.grad(log_probs[:, y].sum(), outputs, retain_graph=True, allow_unused=True)
        for (name, (a, out, _)), delta in zip(usable.items(), deltas, strict=True):
            if name not in handled:
                continue
            delta = torch.zeros_like(out) if delta is None else delta
            if name in flat:
                weighted[name].add_(probs[:, y : y + 1] * delta.pow(2))
            elif not add_layer(totals, name, layers[name], a, delta, probs[:, y], wanted):
                handled.discard(name)  # the general route takes it
    for name in handled:
        mine = own_names(name, layers[name], wanted)
        if name in flat:
            if "weight" in mine:
                totals[mine["weight"]] = weighted[name].T @ usable[name][0].pow(2)
            if "bias" in mine:
                totals[mine["bias"]] = weighted[name].sum(0)
        result.update({full: totals[full] for full in mine.values()})
    return result


def _exact_sum_jacobian(
    model: nn.Module, params: dict[str, Tensor], constants: dict[str, Tensor], head: str, x: Inputs
) -> dict[str, Tensor]:
    """Σ_n Σ_y p(y|x_n) g_y(x_n)² for ``params`` through per-example Jacobians (any layer type); ``constants``
    are the buffers and the parameters held fixed."""
    log_probs = _log_probs_fn(model, constants, head)
    jacobians = vmap(jacrev(log_probs), in_dims=(None, 0))(params, x)  # name -> (N, C, *shape)
    with torch.no_grad():
        probs = vmap(log_probs, in_dims=(None, 0))(params, x).exp()  # (N, C)
    out = {}
    for n, jac in jacobians.items():
        weights = probs.reshape(*probs.shape, *([1] * (jac.dim() - 2)))
        out[n] = (weights * jac.pow(2)).sum(dim=(0, 1))
    return out


def _per_sample_gradients(
    model: nn.Module, params: dict[str, Tensor], constants: dict[str, Tensor], head: str, x: Inputs, y: Tensor
) -> dict[str, Tensor]:
    log_probs = _log_probs_fn(model, constants, head)

    def nll(p: dict[str, Tensor], xi: Inputs, yi: Tensor) -> Tensor:
        # gather, not [yi]: under vmap the label is a batched tensor, which plain indexing cannot take.
        return -log_probs(p, xi).gather(0, yi.unsqueeze(0)).squeeze(0)

    return vmap(grad(nll), in_dims=(None, 0, 0))(params, x, y)


def _batch_mean_gradient(
    model: nn.Module, params: dict[str, Tensor], constants: dict[str, Tensor], batch: HeadBatch
) -> dict[str, Tensor]:
    def mean_nll(p: dict[str, Tensor]) -> Tensor:
        logits = functional_call(model, (p, constants), (compact(batch.x),), {"head": batch.head})
        return F.cross_entropy(logits, batch.y)

    return grad(mean_nll)(params)
