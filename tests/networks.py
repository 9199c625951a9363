"""Small fully-connected test networks, one or more per layer family of `tangents.stax`.

Shared by the contract tests (`test_contract.py`), the Monte Carlo convergence tests
(`test_monte_carlo.py`) and anyone who wants "every layer" as a parameter list::

    from networks import NETWORKS, inputs

    @pytest.mark.parametrize("net", NETWORKS, ids=lambda n: n.id)
    def test_something(net):
        layer = net.build(512)      # the network at hidden width 512
        x = inputs(net, 4)          # (4, D) float64 inputs suited to it

Each network is built lazily from ``tangents.stax`` by name, so a layer that does not exist
(yet) fails only the tests of its own network, with an ``AttributeError`` naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from tangents import stax

#: Input features of every test network.
D = 5
#: Output width of every test network (kernels are averaged over it: trace_axes=(-1,)).
OUT = 8


@dataclasses.dataclass(frozen=True)
class Net:
    """A test network.

    Attributes:
        id: pytest id.
        build: ``(width, out=OUT)`` -> the network (a `stax.Layer`) with hidden layers of
            that width, input ``(N, D)`` and output ``(N, out)``.
        depth: number of hidden layers in sequence (counting a finite-width LayerNorm as
            one more). The mean of the empirical kernels of finite networks differs from
            the infinite-width kernel by O((depth − 1) / width); with a single hidden layer
            and a Dense readout it is exact at any width (the readout is independent of the
            hidden layer, and the hidden units are i.i.d.).
        mc_width: hidden width used by the Monte Carlo tests (deep nets are costlier).
        finite: whether the network has a finite-width ``apply_fn`` (``ExpNormalized`` has
            none in neural-tangents either).
        unit_inputs: whether the inputs must have mean square exactly 1 per example, so the
            first pre-activations have unit variance (``Hermite`` assumes it).
        stochastic: whether ``apply_fn`` is random (``Dropout`` in train mode).
        input_shape: the shape of one example: ``(D,)`` for the fully-connected networks,
            ``(C, *spatial)`` (channels-first) for the spatial ones of `networks_spatial`.
        diagonal_spatial: for spatial networks, whether ``kernel_fn(..., diagonal_spatial=True)``
            is allowed (no layer needs location–location covariances) — ``None`` for
            fully-connected networks, where the option does not apply.
        quadrature: whether the kernel comes from Gauss–Hermite quadrature
            (``ElementwiseNumerical`` and the activations built on it), whose error is not
            symmetric in (x1, x2): neural-tangents 0.6.5 gives a tanh network an NNGP with
            |K − Kᵀ| = 1.7e-4 and an NTK with 5e-4 of their scale at degree 25.
    """

    id: str
    build: Callable[..., stax.Layer]
    depth: int = 1
    mc_width: int = 1024
    finite: bool = True
    unit_inputs: bool = False
    stochastic: bool = False
    quadrature: bool = False
    input_shape: tuple[int, ...] = (D,)
    diagonal_spatial: bool | None = None

    def __repr__(self) -> str:
        return f"Net({self.id})"


def _layer(name: str, *args, **kwargs) -> stax.Layer:
    """``stax.<name>(*args, **kwargs)``, looked up when the network is built."""
    return getattr(stax, name)(*args, **kwargs)


def _activation_net(
    name: str, *args, unit_inputs: bool = False, id: str | None = None, quadrature: bool = False, **kwargs
) -> Net:
    """Dense -> activation -> Dense readout (one hidden layer)."""
    W_std, b_std = (1.0, None) if unit_inputs else (1.3, 0.2)

    def build(width: int, out: int = OUT) -> stax.Layer:
        return stax.serial(
            stax.Dense(width, W_std=W_std, b_std=b_std),
            _layer(name, *args, **kwargs),
            stax.Dense(out, W_std=1.1, b_std=None if unit_inputs else 0.1),
        )

    suffix = "".join(f"_{a}" for a in args) + "".join(f"_{k}{v}" for k, v in kwargs.items())
    net_id = id or f"act_{name}{suffix}".replace(".", "p")
    return Net(net_id, build, unit_inputs=unit_inputs, quadrature=quadrature)


def _dense_net(parameterization: str, b_std: float | None) -> Net:
    def build(width: int, out: int = OUT) -> stax.Layer:
        return stax.serial(
            stax.Dense(width, W_std=1.5, b_std=b_std, parameterization=parameterization),
            stax.Relu(),
            stax.Dense(out, W_std=1.2, b_std=b_std, parameterization=parameterization),
        )

    return Net(f"dense_{parameterization}_b{b_std}".replace(".", "p"), build)


# E[sin u sin v] and E[cos u cos v] for (u, v) ~ N(0, [[v1, c], [c, v2]]).
def _sin_nngp(c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    return torch.exp(-(v1 + v2) / 2) * torch.sinh(c)


def _sin_d_nngp(c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    return torch.exp(-(v1 + v2) / 2) * torch.cosh(c)


def _net(id: str, depth: int = 1, **options) -> Callable[[Callable[..., stax.Layer]], Net]:
    mc_width = {1: 1024, 2: 256, 3: 128}[depth]
    return lambda build: Net(id, build, depth=depth, mc_width=mc_width, **options)


@_net("dense_only", depth=1)
def _dense_only(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(stax.Dense(width, W_std=1.3, b_std=0.1), stax.Dense(out, W_std=0.8, b_std=0.3))


@_net("two_hidden_erf_relu", depth=2)
def _two_hidden(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        stax.Dense(width, W_std=1.5, b_std=0.1),
        stax.Erf(),
        stax.Dense(width, W_std=1.5, b_std=0.1),
        stax.Relu(),
        stax.Dense(out),
    )


@_net("layernorm", depth=2)
def _layernorm(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        stax.Dense(width, W_std=1.5, b_std=0.3),
        _layer("LayerNorm"),
        stax.Relu(),
        stax.Dense(out, b_std=0.1),
    )


@_net("dropout", stochastic=True)
def _dropout(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        stax.Dense(width, W_std=1.5, b_std=0.1),
        stax.Relu(),
        _layer("Dropout", 0.8),
        stax.Dense(out, b_std=0.1),
    )


@_net("repeat", depth=3)
def _repeat(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        stax.Dense(width, W_std=1.4, b_std=0.1),
        stax.repeat(stax.serial(stax.Relu(), stax.Dense(width, W_std=1.4, b_std=0.1)), 2),
        stax.Erf(),
        stax.Dense(out),
    )


@_net("parallel_concat")
def _parallel_concat(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        stax.FanOut(2),
        stax.parallel(
            stax.serial(stax.Dense(width, W_std=1.5, b_std=0.1), stax.Relu()),
            stax.serial(stax.Dense(width, W_std=1.2), stax.Erf()),
        ),
        stax.FanInConcat(),
        stax.Dense(out, b_std=0.1),
    )


@_net("fanin_sum", depth=2)
def _fanin_sum(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        stax.FanOut(2),
        stax.parallel(
            stax.Dense(width, W_std=1.0, b_std=0.2),
            stax.serial(stax.Dense(width, W_std=1.5), stax.Relu(), stax.Dense(width, W_std=1.2)),
        ),
        stax.FanInSum(),
        stax.Relu(),
        stax.Dense(out),
    )


@_net("fanin_prod")
def _fanin_prod(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        stax.FanOut(2),
        stax.parallel(stax.Dense(width, W_std=1.2, b_std=0.1), stax.Dense(width, W_std=0.9, b_std=0.3)),
        stax.FanInProd(),
        stax.Dense(out, b_std=0.1),
    )


@_net("residual_identity", depth=2)
def _residual(width: int, out: int = OUT) -> stax.Layer:
    return stax.serial(
        stax.Dense(width, W_std=1.2, b_std=0.1),
        stax.FanOut(2),
        stax.parallel(stax.Identity(), stax.serial(stax.Relu(), stax.Dense(width, W_std=1.3))),
        stax.FanInSum(),
        stax.Erf(),
        stax.Identity(),
        stax.Dense(out),
    )


DENSE_NETWORKS: list[Net] = [
    _dense_net(p, b) for p in ("ntk", "standard") for b in (None, 0.0, 0.05)
] + [_dense_only]

ACTIVATION_NETWORKS: list[Net] = [
    _activation_net("Relu"),
    _activation_net("LeakyRelu", 0.1),
    _activation_net("ABRelu", -0.4, 1.2),
    _activation_net("Abs"),
    _activation_net("Erf", a=1.3, b=0.7, c=0.1),
    _activation_net("Sigmoid_like"),
    _activation_net("Gelu"),
    _activation_net("Sin", a=1.1, b=0.8, c=0.3),
    _activation_net("Cos"),
    _activation_net("Rbf", gamma=0.6),
    _activation_net("Exp", a=0.7, b=0.5),
    _activation_net("Gaussian"),
    dataclasses.replace(_activation_net("ExpNormalized"), finite=False),
    _activation_net("Hermite", 2, unit_inputs=True),
    _activation_net("Hermite", 3, unit_inputs=True),
    _activation_net("Monomial", 2),
    _activation_net("RectifiedMonomial", 2),
    _activation_net("Polynomial", [0.1, 1.0, 0.5, -0.2], id="act_Polynomial_cubic"),
    _activation_net("Gabor"),
    _activation_net("Sign"),
    Net(
        "act_Elementwise_sin",
        lambda width, out=OUT: stax.serial(
            stax.Dense(width, W_std=1.3, b_std=0.2),
            _layer("Elementwise", torch.sin, _sin_nngp, _sin_d_nngp),
            stax.Dense(out, W_std=1.1, b_std=0.1),
        ),
    ),
    Net(
        "act_ElementwiseNumerical_tanh",
        lambda width, out=OUT: stax.serial(
            stax.Dense(width, W_std=1.3, b_std=0.2),
            # Degree 100: at neural-tangents' usual 25 the quadrature's NTK is 1.4% off on
            # the diagonal here (pre-activation variance 1.7), which the Monte Carlo test
            # detects; at 100 it is 1e-5.
            _layer("ElementwiseNumerical", torch.tanh, 100),
            stax.Dense(out, W_std=1.1, b_std=0.1),
        ),
        quadrature=True,
    ),
    _activation_net("Tanh", quadrature=True),
    _activation_net("Softplus", quadrature=True),
    _activation_net("Sigmoid", quadrature=True),
    _activation_net("SiLU", quadrature=True),
    _activation_net("Elu", quadrature=True),
    _activation_net("Elu", alpha=0.5, quadrature=True),
]

COMBINATOR_NETWORKS: list[Net] = [
    _two_hidden,
    _layernorm,
    _dropout,
    _repeat,
    _parallel_concat,
    _fanin_sum,
    _fanin_prod,
    _residual,
]

#: Every test network.
NETWORKS: list[Net] = DENSE_NETWORKS + ACTIVATION_NETWORKS + COMBINATOR_NETWORKS
#: The networks with a finite-width forward pass.
FINITE_NETWORKS: list[Net] = [net for net in NETWORKS if net.finite]


def ids(net: Net) -> str:
    return net.id


def inputs(net: Net, n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(n, *net.input_shape)`` inputs (``(n, D)`` for FC networks) with per-example mean
    squares between ~0.5 and ~1.5 (exactly 1 if the network needs unit inputs), drawn from
    their own generator."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *net.input_shape), generator=generator, dtype=torch.float64)
    dims = tuple(range(1, x.ndim))
    x = x / x.square().mean(dims, keepdim=True).sqrt()  # mean square 1
    if not net.unit_inputs:
        x = x * torch.linspace(0.7, 1.2, n, dtype=torch.float64).reshape((n,) + (1,) * len(dims))
    return x.to(dtype)


__all__ = ["D", "OUT", "Net", "NETWORKS", "FINITE_NETWORKS", "inputs", "ids"]
