"""Training dynamics and inference without training (neural-tangents' ``nt.predict``).

* `gradient_descent_mse`: closed-form gradient flow on MSE for a given kernel;
* `gradient_descent_mse_ensemble`: mean and covariance of an infinite ensemble of infinitely
  wide networks trained on MSE, from a ``kernel_fn``;
* `gp_inference`: NNGP / NTK / NTKGP posteriors;
* `gradient_descent`: gradient [momentum] flow for any differentiable loss (ODE solve);
* `max_learning_rate`: the largest learning rate for which gradient descent on MSE converges;
* `log_marginal_likelihood`, `MarginalLikelihood`: the evidence of a kernel, and a network's
  hyperparameters learned by maximising it with any ``torch.optim`` optimizer.
* `nystrom`: Nyström kernel regression solved Falkon's way, for 10⁵–10⁶ training points.

The t = ∞ and finite-time paths take ``solver="cholesky" | "cg" | "auto"``: dense
factorizations, or matrix products only (preconditioned conjugate gradients, Lanczos) over
kernels in memory, stored on disk or recomputed from ``kernel_fn`` block by block. An
iterative solve that stops short of its tolerance raises `ConvergenceError`.

Times are in units of ``learning_rate`` and the dynamics are normalized by ``y_train.size``
(the loss is ``0.5 * mean((f - y)**2)`` over all entries), as in neural-tangents.
"""

from ._predict._common import Gaussian as Gaussian
from ._predict._ensemble import gradient_descent_mse_ensemble as gradient_descent_mse_ensemble
from ._predict._gp import gp_inference as gp_inference
from ._predict._likelihood import MarginalLikelihood as MarginalLikelihood
from ._predict._likelihood import log_marginal_likelihood as log_marginal_likelihood
from ._predict._mse import PredictFn as PredictFn
from ._predict._mse import gradient_descent_mse as gradient_descent_mse
from ._predict._mse import max_learning_rate as max_learning_rate
from ._predict._nystrom import nystrom as nystrom
from ._predict._ode import ODEState as ODEState
from ._predict._ode import PredictFnODE as PredictFnODE
from ._predict._ode import gradient_descent as gradient_descent
from ._predict._solvers import ConvergenceError as ConvergenceError

__all__ = [
    "ConvergenceError",
    "Gaussian",
    "MarginalLikelihood",
    "ODEState",
    "PredictFn",
    "PredictFnODE",
    "gp_inference",
    "gradient_descent",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "log_marginal_likelihood",
    "max_learning_rate",
    "nystrom",
]
