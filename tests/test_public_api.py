"""The public surface is exactly what is documented: every public module declares ``__all__``,
``dir()`` shows nothing else, and the README's lists name the same layers and functions."""

from __future__ import annotations

import importlib
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

#: Public module -> its documented public names (the README's "Status" and "Porting" lists).
PUBLIC: dict[str, set[str]] = {
    "tangents": {
        "Kernel", "stax", "batch", "predict", "empirical", "NtkImplementation", "empirical_kernel_fn",
        "empirical_nngp_fn", "empirical_ntk_fn", "empirical_ntk_vp_fn", "linearize", "taylor_expand",
        "monte_carlo_kernel_fn", "__version__", "store", "compute_kernel", "KernelStore",
        "evidence", "plot", "from_torch", "RunawayWorkWarning",
    },
    "tangents.predict": {
        "Gaussian", "ODEState", "PredictFn", "PredictFnODE", "gp_inference", "gradient_descent",
        "gradient_descent_mse", "gradient_descent_mse_ensemble", "max_learning_rate",
        "log_marginal_likelihood", "MarginalLikelihood", "ConvergenceError", "nystrom",
    },
    "tangents.blocks": {
        "RunawayWorkWarning", "Block", "BlockPlan", "BlockProgress", "available_memory", "batch", "block_arguments",
        "block_call", "first_tensor", "inner_bars_hidden", "is_analytic", "leading_size",
        "one_intra_op_thread", "plan_blocks", "run_in_process", "run_threaded", "slice_inputs",
        "swap_pairs", "tiled",
    },
    "tangents.store": {
        "IncompleteStoreError", "KernelArray", "KernelStore", "StoreBusyError", "StoreMismatchError",
        "compute_kernel",
    },
    "tangents.distributed": {"connect", "local_client", "run_on_dask"},
    "tangents.sklearn": {"InfiniteWidthKernel", "NTKClassifier", "NTKRegressor"},
    "tangents.evidence": {
        "DEFAULT_CIRCLE_WIDTHS", "DEFAULT_WIDTHS", "LR_FRACTION", "N_ANGLES", "EvidenceError",
        "EvidenceReport", "default_network", "run",
    },
    "tangents.lift": {"LiftError", "LiftedNetwork", "Node", "from_torch"},
    "tangents.plot": {
        "COLORS", "PowerLawFit", "convergence", "figure_grid", "fit_power_law", "kernel_heatmap",
        "kernel_vs_angle", "new_axes", "residual_projections", "spectrum", "trajectories",
    },
    "tangents.cli": {"COMMANDS", "entry", "main"},
    "tangents.empirical": {
        "EmpiricalKernelFn", "NtkImplementation", "NtkPlan", "empirical_kernel_fn", "empirical_nngp_fn",
        "empirical_ntk_fn", "empirical_ntk_vp_fn",
    },
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_names_are_exactly_the_documented_ones(name: str) -> None:
    module = importlib.import_module(name)
    assert set(module.__all__) == PUBLIC[name]
    for public in module.__all__:
        assert getattr(module, public) is not None


def test_dir_of_the_package_shows_only_public_names() -> None:
    import tangents

    # tangents.sklearn (optional dependency) is public but left out of ``import *``
    assert set(dir(tangents)) == PUBLIC["tangents"] | {"sklearn"}


def test_stax_names_are_the_readme_status_list() -> None:
    from tangents import stax

    status = README.read_text().split("## Status", 1)[1].split("\n## ", 1)[0]
    stax_block = status.split("- `tangents.stax` layers", 1)[1].split("\n- `tangents.batch`", 1)[0]
    documented = set(re.findall(r"`([A-Za-z_]+)`", stax_block))
    assert set(stax.__all__) - {"Layer", "StaxModule"} == documented
    visible = {n for n in dir(stax) if not n.startswith("_")}
    assert visible == set(stax.__all__), visible ^ set(stax.__all__)


def test_layers_index_like_neural_tangents_triples() -> None:
    from tangents import stax

    net = stax.serial(stax.Dense(3), stax.Relu())
    init_fn, apply_fn, kernel_fn = net
    assert len(net) == 3
    assert net[0] == init_fn and net[1] == apply_fn and net[2] == kernel_fn and net[-1] == kernel_fn
    assert net[:2] == (init_fn, apply_fn)
    with pytest.raises(TypeError, match=r"indexes like neural-tangents' triple .* got str"):
        net["kernel_fn"]
    with pytest.raises(IndexError):
        net[3]


def test_a_first_small_kernel_imports_nothing_heavy() -> None:
    """A first 100 x 100 FC kernel in a fresh process: torch.broadcast_shapes imported sympy
    (through torch.fx's symbolic shapes) on its first call, 0.3-0.7 s of a 0.04 s call; the
    kernel path must not reach it (nor torch._dynamo)."""
    import subprocess
    import sys

    probe = (
        "import sys, torch, tangents\n"
        "from tangents import stax\n"
        "_, _, k = stax.serial(stax.Dense(64), stax.Relu(), stax.Dense(64), stax.Erf(), stax.Dense(1))\n"
        "k(torch.randn(100, 10), None, ('nngp', 'ntk'))\n"
        "print(sorted(m for m in ('sympy', 'torch._dynamo') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.strip() == "[]", (done.stdout, done.stderr[-2000:])
