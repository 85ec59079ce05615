"""Shrink's second-order choice survives the slightly indefinite Hessians that float32 accumulation gives."""
import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.structured.scores import damped_inverse


def _indefinite(columns: int = 16, negative: float = -0.05) -> torch.Tensor:
    # H = Q diag(eigenvalues) Q^T with one eigenvalue below zero by more than 1% of the mean diagonal
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(columns, columns, dtype=torch.float64))
    eigenvalues = torch.ones(columns, dtype=torch.float64)
    eigenvalues[0] = negative
    return (q * eigenvalues) @ q.T


def test_the_damping_is_raised_until_the_factorisation_succeeds():
    hessian = _indefinite()
    with pytest.raises(torch.linalg.LinAlgError):  # what the first damping alone gives
        torch.linalg.cholesky(hessian + 0.01 * hessian.diagonal().mean() * torch.eye(16, dtype=torch.float64))
    inverse = damped_inverse(hessian.float(), 0.01)
    # the inverse of H + 0.1 * mean(diag) I: the first tenfold raise is enough
    expected = torch.linalg.inv(hessian + 0.1 * hessian.diagonal().mean() * torch.eye(16, dtype=torch.float64))
    torch.testing.assert_close(inverse, expected, rtol=1e-6, atol=1e-6)


def test_a_hopeless_hessian_is_one_clear_error():
    with pytest.raises(LLMPruneError, match="indefinite"):
        damped_inverse(_indefinite(negative=-1e9).float(), 0.01)
