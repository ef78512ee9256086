"""The HEST ridge probe: frozen features -> StandardScaler -> PCA(256) -> Ridge (HEST's bench/trainer.py:
lsqr solver, alpha = 100 / (n_features x n_genes), no intercept), scikit-learn throughout.

HEST fits no intercept; the PCA scores are zero-mean on the training spots, so fitting the centred
targets and adding the training mean back leaves every per-gene Pearson r as HEST's while the
predictions keep the genes' levels (which hit@K's per-spot gene ranking needs)."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def ridge_probe(n_features: int, n_genes: int, n_train: int, pca_dim: int = 256, seed: int = 0) -> Pipeline:
    """The unfitted pipeline; PCA keeps min(pca_dim, n_features, n_train) components."""
    dim = min(pca_dim, n_features, n_train)
    alpha = 100.0 / (dim * n_genes)
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("pca", PCA(n_components=dim, random_state=seed)),
            ("ridge", Ridge(alpha=alpha, solver="lsqr", fit_intercept=False, max_iter=1000)),
        ]
    )


def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, pca_dim: int = 256, seed: int = 0):
    """Fit on the training spots, predict the held-out ones; returns (predictions, fitted pipeline)."""
    model = ridge_probe(train_x.shape[1], train_y.shape[1], len(train_x), pca_dim, seed)
    mean = train_y.mean(axis=0)
    model.fit(train_x, train_y - mean)
    return (model.predict(test_x) + mean).astype(np.float32), model
