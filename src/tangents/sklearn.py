"""Infinitely wide networks in scikit-learn: estimators and a Gaussian-process kernel.

* `NTKRegressor`, `NTKClassifier`: the infinite ensemble of infinitely wide networks
  trained on MSE (``kernel="ntk"``) or the network's Gaussian process (``kernel="nngp"``)
  as scikit-learn estimators (``Pipeline``, ``GridSearchCV``, ``cross_val_score``,
  ``clone``, pickling);
* `InfiniteWidthKernel`: a network's NNGP or NTK as a
  ``sklearn.gaussian_process.kernels.Kernel`` whose hyperparameters (``W_std``, ``b_std``,
  activation parameters) ``GaussianProcessRegressor`` tunes by the marginal likelihood.

Needs scikit-learn: ``pip install 'tangents[sklearn]'``.

Example:
    >>> from tangents.sklearn import NTKClassifier
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> NTKClassifier().fit(X[:1000], y[:1000]).score(X[1000:], y[1000:])
"""

from ._sklearn._estimators import NTKClassifier as NTKClassifier
from ._sklearn._estimators import NTKRegressor as NTKRegressor
from ._sklearn._kernel import InfiniteWidthKernel as InfiniteWidthKernel

__all__ = ["InfiniteWidthKernel", "NTKClassifier", "NTKRegressor"]
