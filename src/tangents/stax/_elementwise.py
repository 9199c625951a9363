r"""The one skeleton every elementwise nonlinearity φ goes through.

For a zero-mean Gaussian pair (u, v) with Var u = Σ(a,a), Var v = Σ(b,b),
Cov(u, v) = Σ(a,b), an activation is defined by its Gaussian expectations

    T(Σ)  = E[φ(u) φ(v)],        Ṫ(Σ) = E[φ'(u) φ'(v)],

and the layer maps the kernel as  Σ' = T(Σ),  Θ' = Ṫ(Σ) ⊙ Θ  (Jacot et al. 2018).
A subclass gives ``fn`` (the finite-width φ) and ``expectations`` (T and Ṫ, elementwise
over tensors of any shape); ``expectation_diagonal`` (T at u = v) may be overridden with
an exact closed form. This class does the rest for every kernel layout.
"""

from __future__ import annotations

from typing import Any

import torch

from .._kernel import Kernel
from ._compiled import compiled_pair_map
from ._covariance import entry_variances, kernel_variances, with_exact_diagonal
from ._layer import Layer
from ._requirements import Diagonal, Requirements
from ._tape import skipping_covariances


class Activation(Layer):
    """Base class of elementwise nonlinearities (closed-form or numerical)."""

    @property
    def requirements(self) -> Requirements:
        return Requirements(diagonal_spatial=Diagonal())

    @property
    def replays_covariances(self) -> bool:
        return True  # `map_kernel` maps each covariance alone

    # ------------------------------------------------------------------ to implement

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        """φ applied elementwise (the finite-width forward pass)."""
        raise NotImplementedError

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(T, Ṫ)`` elementwise; ``Ṫ`` may be ``None`` when ``need_derivative`` is False.

        Args:
            cov12: covariances Σ(a, b), any shape.
            var1: variances Σ(a, a), broadcastable to ``cov12``.
            var2: variances Σ(b, b), broadcastable to ``cov12``.
            need_derivative: whether Ṫ is needed (only when the NTK is computed).
        """
        raise NotImplementedError

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        """T at coincident points, E[φ(u)²] with Var u = ``var``."""
        return self.expectations(var, var, var, False)[0]

    # ------------------------------------------------------------------ shared

    def apply(self, params: Any, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.fn(x)

    def check_gaussian(self, k: Any) -> Kernel:
        if not isinstance(k, Kernel):
            raise ValueError(f"{self.name}: expects a single input, got a list of {len(k)} branches.")
        if not k.is_gaussian:
            raise ValueError(
                f"{self.name}: the input must be Gaussian (a Dense or Conv layer must come before "
                f"an activation), got the output of a layer that is not affine (or the raw inputs)."
            )
        return k

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        k = self.check_gaussian(k)
        return self.map_kernel(k).replace(is_gaussian=False)

    def map_kernel(self, k: Kernel) -> Kernel:
        """Σ' = T(Σ), Θ' = Ṫ(Σ) Θ on every covariance of ``k``."""
        var1, var2 = kernel_variances(k)
        a, b = entry_variances(var1, var2, k.diagonal_spatial, two_batch_axes=True)
        compiled = compiled_pair_map(self, k.nngp, k.ntk, a, b)  # None unless compiling spatial tiles
        if compiled is not None:
            nngp, ntk = compiled
        else:
            nngp, tdot = self.expectations(k.nngp, a, b, k.ntk is not None)
            ntk = None if k.ntk is None else tdot * k.ntk  # type: ignore[operator]
        if skipping_covariances():  # replayed from a tape (see `_tape`)
            return k.replace(nngp=nngp, ntk=ntk, cov1=None, cov2=None)
        cov1 = self._within(k.cov1, var1, k)
        cov2 = None if k.cov2 is None else self._within(k.cov2, var2, k)
        nngp = with_exact_diagonal(k, nngp, cov1)
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2)

    def _within(self, cov: torch.Tensor, var: torch.Tensor, k: Kernel) -> torch.Tensor:
        """T applied to a covariance of one batch with itself."""
        if k.diagonal_batch and (k.diagonal_spatial or cov.ndim == 1):
            return self.expectation_diagonal(cov)
        a, b = entry_variances(var, var, k.diagonal_spatial, two_batch_axes=not k.diagonal_batch)
        return self.expectations(cov, a, b, False)[0]
