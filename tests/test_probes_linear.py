"""LinearProbe: scikit-learn contract, hand-computed closed forms, parity with a sklearn pipeline."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from probes import LinearProbe


def blobs(n=200, d=10, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    true = np.zeros(d)
    true[0] = 1.0
    X = rng.normal(size=(n, d)) * np.linspace(1, 3, d) + sep * np.outer(y - 0.5, true) + 5.0
    return X, y, true


def test_fit_returns_self_and_learns_direction():
    X, y, true = blobs()
    for method in ("logistic", "mass_mean", "lda"):
        p = LinearProbe(method=method)
        assert p.fit(X, y) is p
        assert p.score(X, y) > 0.85
        cos = float(torch.dot(p.direction_, torch.as_tensor(true, dtype=torch.float32)))
        assert cos > 0.9, (method, cos)
        assert abs(float(p.direction_.norm()) - 1.0) < 1e-6
        assert p.predict_proba(X).shape == (len(X), 2)


def test_logistic_matches_sklearn_pipeline_in_raw_space():
    X, y, _ = blobs(seed=1)
    Xtr, ytr, Xte = X[:150], y[:150], X[150:]
    p = LinearProbe("logistic", C=0.5).fit(Xtr, ytr)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=1000)).fit(Xtr, ytr)
    np.testing.assert_allclose(p.decision_function(Xte), ref.decision_function(Xte), atol=1e-5)
    # standardisation uses the training split only
    np.testing.assert_allclose(p.mean_, Xtr.mean(0))


def test_mass_mean_hand_computation():
    X = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 2.0], [6.0, 2.0]])
    y = np.array([0, 0, 1, 1])
    p = LinearProbe("mass_mean").fit(X, y)
    # mu0 = (1, 0), mu1 = (5, 2): theta = (4, 2); midpoint (3, 1): b = -(12 + 2) = -14
    np.testing.assert_allclose(p.coef_, [4.0, 2.0])
    assert p.intercept_ == pytest.approx(-14.0)
    np.testing.assert_allclose(p.direction_.numpy(), np.array([4, 2]) / np.sqrt(20), rtol=1e-6)
    assert p.class_gap_ == pytest.approx(np.sqrt(20))


def test_lda_hand_computation():
    X = np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 2.0], [4.0, 3.0], [6.0, 2.0], [5.0, 4.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    p = LinearProbe("lda", standardize=False, shrinkage=0.0).fit(X, y)
    m0, m1 = X[:3].mean(0), X[3:].mean(0)
    c = np.concatenate([X[:3] - m0, X[3:] - m1])
    S = c.T @ c / (len(X) - 2)
    w = np.linalg.solve(S, m1 - m0)
    np.testing.assert_allclose(p.coef_, w, rtol=1e-6)
    assert p.intercept_ == pytest.approx(-w @ (m0 + m1) / 2, rel=1e-6)


def test_string_labels_and_torch_input():
    X, y, _ = blobs()
    labels = np.where(y == 1, "yes", "no")
    p = LinearProbe("mass_mean").fit(torch.as_tensor(X, dtype=torch.float32), labels)
    assert set(p.predict(X)) <= {"yes", "no"}
    assert p.score(X, labels) > 0.85


def test_errors_are_clear():
    X, y, _ = blobs(n=20)
    with pytest.raises(RuntimeError, match="not fitted"):
        LinearProbe().predict(X)
    with pytest.raises(ValueError, match="exactly two classes"):
        LinearProbe().fit(X, np.zeros(20))
    with pytest.raises(ValueError, match="labels"):
        LinearProbe().fit(X, y[:10])
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LinearProbe().fit(Xn, y)
    with pytest.raises(ValueError, match="Unknown probe method"):
        LinearProbe(method="svm").fit(X, y)
    with pytest.raises(ValueError, match="empty"):
        LinearProbe().fit(np.zeros((0, 3)), np.zeros(0))
    p = LinearProbe().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        p.predict(X[:, :3])
