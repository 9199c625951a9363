"""The private torch APIs that tangents uses (`tangents._torch_private`) still exist and behave
as used. A torch release that changes one fails here, by name, instead of deep in a kernel."""

from __future__ import annotations

import torch
from torch.func import vmap

from tangents import _torch_private as private


def test_pytree_round_trip_of_nested_containers() -> None:
    tree = {"a": (torch.zeros(1), [torch.ones(2), None]), "b": torch.full((3,), 2.0)}
    leaves, spec = private.tree_flatten(tree)
    assert [leaf.numel() if leaf is not None else None for leaf in leaves] == [1, 2, None, 3]
    rebuilt = private.tree_unflatten([None if leaf is None else leaf + 1 for leaf in leaves], spec)
    assert torch.equal(rebuilt["a"][1][0], torch.full((2,), 2.0)) and rebuilt["a"][1][1] is None
    doubled = private.tree_map(lambda t: t * 2, {"x": torch.ones(2)})
    assert torch.equal(doubled["x"], torch.full((2,), 2.0))


def test_functorch_wrapped_tensors_are_recognised() -> None:
    assert private._is_wrapped is not None, "torch._C._functorch.is_functorch_wrapped_tensor is gone"
    assert not private.is_functorch_wrapped(torch.zeros(2))
    seen: list[bool] = []

    def probe(t: torch.Tensor) -> torch.Tensor:
        seen.append(private.is_functorch_wrapped(t))
        return t

    vmap(probe)(torch.zeros(3, 2))
    assert seen == [True]


def test_linear_and_matmul_dispatch_targets_exist() -> None:
    # (F.linear may be that very function; what matters is that the private name still exists)
    assert getattr(getattr(torch._C, "_nn", None), "linear", None) is private.C_LINEAR, "torch._C._nn.linear is gone"
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    assert torch.allclose(private.C_LINEAR(x, w), x @ w.T)
    assert private.TensorBase is not torch.Tensor and issubclass(torch.Tensor, private.TensorBase)
    assert hasattr(private.TensorBase, "matmul")


def test_jvp_decompositions_import() -> None:
    import sys

    private.load_jvp_decompositions()
    assert "torch._decomp.decompositions_for_jvp" in sys.modules


def test_batch_norm_and_dropout_base_classes() -> None:
    nn = torch.nn
    assert getattr(nn.modules.batchnorm, "_BatchNorm", None) is private.BATCH_NORMS, "nn.modules.batchnorm._BatchNorm is gone"
    assert getattr(nn.modules.dropout, "_DropoutNd", None) is private.DROPOUTS, "nn.modules.dropout._DropoutNd is gone"
    for layer in (nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.LazyBatchNorm1d(), nn.SyncBatchNorm(3)):
        assert isinstance(layer, private.BATCH_NORMS) and hasattr(layer, "track_running_stats"), type(layer)
    for layer in (nn.Dropout(0.1), nn.Dropout2d(0.1), nn.AlphaDropout(0.1)):
        assert isinstance(layer, private.DROPOUTS) and layer.p == 0.1, type(layer)
    assert not isinstance(nn.LayerNorm(3), private.BATCH_NORMS)
