"""Σ_n w_n (∂ℓ_n/∂θ)² for the parameters of one layer, in closed form, from what the layer saw and the gradient at
its output: the exact Fisher's inner sums without per-example gradients of the whole model.

In eval mode the examples of a batch do not interact, so one backward pass of Σ_n log p(y|x_n) gives every
example's own output gradients δ_n, and a layer's per-example parameter gradient follows from δ_n and the layer's
input a_n alone (t runs over an example's positions, e.g. tokens; one position for a plain (N, features) input):

- ``nn.Linear``: ∇W_n = Σ_t δ_nt a_ntᵀ and ∇b_n = Σ_t δ_nt. With one position this is the outer product, and
  Σ_n w_n (∇W_n)² = (w ∘ δ²)ᵀ a² needs no per-example matrix at all; with several, either ∇W_n is formed for a
  few examples at a time, or, for short sequences, the square is expanded over position pairs (``_linear_weight``);
  either way within 2**26 floats (256 MiB) at a time.
- ``nn.Embedding``: row v of ∇E_n = Σ_{t: id_nt = v} δ_nt, a few rows per example, never a dense table (the
  padding row gets no gradient, as in autograd).
- ``nn.LayerNorm`` over the last dimension: ∇γ_n = Σ_t δ_nt ∘ x̂_nt and ∇β_n = Σ_t δ_nt (x̂: the normalised input).

A layer these cannot describe (called twice in one forward pass, an embedding whose ids are shared by the whole
batch, a renormalising embedding, a LayerNorm over several dimensions) is left to the general route: per-example
Jacobians through ``torch.func`` (research.methods.fisher).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

CLOSED_FORM = (nn.Linear, nn.Embedding, nn.LayerNorm)
_LAYER_FLOATS = 2**26  # per-example weight gradients formed at once by the several-positions Linear case


def own_names(name: str, module: nn.Module, wanted: set[str] | dict) -> dict[str, str]:
    """The module's own parameters that are wanted: short name (``weight``, ``bias``) → full name."""
    names = {short: f"{name}.{short}" if name else short for short, _ in module.named_parameters(recurse=False)}
    return {short: full for short, full in names.items() if full in wanted}


def add_layer(
    total: dict[str, Tensor], name: str, module: nn.Module, a: Tensor, delta: Tensor, weight: Tensor, wanted: set[str]
) -> bool:
    """Add Σ_n weight_n (per-example gradient)² of ``module``'s wanted parameters to ``total`` (``weight`` has one
    entry per example of the batch); False (and nothing added) when this call is not one the closed forms
    describe: its input or output is not per example (e.g. one row of position ids broadcast over the batch)."""
    mine = own_names(name, module, wanted)
    n = weight.shape[0]
    if a.shape[0] != n or delta.shape[0] != n:
        return False
    if isinstance(module, nn.Embedding):
        return _embedding(total, mine, module, a, delta, weight)
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            return False
        d = delta.reshape(n, -1, delta.shape[-1])
        if "weight" in mine:
            normalised = F.layer_norm(a, module.normalized_shape, eps=module.eps).reshape(d.shape)
            total[mine["weight"]] += weight @ (d * normalised).sum(1).pow(2)
        if "bias" in mine:
            total[mine["bias"]] += weight @ d.sum(1).pow(2)
        return True
    if a.dim() == 2:  # one position per example: the outer product, summed without forming it
        if "weight" in mine:
            total[mine["weight"]] += (weight.unsqueeze(1) * delta.pow(2)).T @ a.pow(2)
        if "bias" in mine:
            total[mine["bias"]] += weight @ delta.pow(2)
        return True
    a3, d3 = a.reshape(n, -1, a.shape[-1]), delta.reshape(n, -1, delta.shape[-1])
    if "weight" in mine:
        total[mine["weight"]] += _linear_weight(a3, d3, weight)
    if "bias" in mine:
        total[mine["bias"]] += weight @ d3.sum(1).pow(2)
    return True


def _linear_weight(a: Tensor, d: Tensor, weight: Tensor) -> Tensor:
    """Σ_n w_n (Σ_t d_nt a_ntᵀ)² for inputs a (N, T, in) and output gradients d (N, T, out), by whichever of two
    equal expansions writes less: the per-example gradients themselves (out × in each), or, for short sequences,
    the products over position pairs, (Σ_t d_t a_tᵀ)² = Σ_{t,s} (d_t ∘ d_s)(a_t ∘ a_s)ᵀ, in one matrix product
    (each pair t < s counted twice). Examples go a few at a time, within 2**26 floats."""
    n, tokens, width_in = a.shape
    width_out = d.shape[2]
    pairs = tokens * (tokens + 1) // 2
    result = a.new_zeros(width_out, width_in)
    if pairs * (width_in + width_out) < width_in * width_out:
        t, s = torch.triu_indices(tokens, tokens, device=a.device)
        twice = torch.where(t == s, 1.0, 2.0).to(a.dtype)
        step = max(1, _LAYER_FLOATS // (pairs * (width_in + width_out)))
        for i in range(0, n, step):
            da, aa = d[i : i + step], a[i : i + step]
            left = (da[:, t] * da[:, s] * (twice.unsqueeze(1) * weight[i : i + step, None, None])).reshape(
                -1, width_out
            )
            result += left.T @ (aa[:, t] * aa[:, s]).reshape(-1, width_in)
        return result
    step = max(1, _LAYER_FLOATS // (width_out * width_in))
    for i in range(0, n, step):
        per_example = d[i : i + step].transpose(1, 2) @ a[i : i + step]  # (n, out, in): ∇W_n
        result += torch.einsum("n,noi->oi", weight[i : i + step], per_example.pow_(2))
    return result


def _embedding(
    total: dict[str, Tensor], mine: dict[str, str], module: nn.Embedding, ids: Tensor, delta: Tensor, weight: Tensor
) -> bool:
    n = delta.shape[0]
    if module.max_norm is not None or "weight" not in mine:
        return module.max_norm is None  # with nothing wanted here, there is nothing to add
    ids = ids.reshape(n, -1)
    d = delta.reshape(n, ids.shape[1], -1)
    rows = module.num_embeddings
    keys = torch.arange(n, device=ids.device).unsqueeze(1) * rows + ids  # one key per (example, row) pair
    unique, inverse = torch.unique(keys.flatten(), return_inverse=True)
    gradients = d.new_zeros(len(unique), d.shape[-1]).index_add_(0, inverse, d.reshape(-1, d.shape[-1]))
    row_ids, examples = unique % rows, unique // rows
    weights = weight[examples]
    if module.padding_idx is not None:  # autograd leaves the padding row's gradient at zero
        weights = weights * (row_ids != module.padding_idx)
    total[mine["weight"]].index_add_(0, row_ids, weights.unsqueeze(1) * gradients.pow(2))
    return True
