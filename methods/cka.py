"""Linear CKA matching: ``1 − CKA_linear(teacher, student)`` per layer pair.

Centered kernel alignment (Kornblith, Norouzi, Lee & Hinton 2019) with the linear kernel, for
``X ∈ R^{n×p}``, ``Y ∈ R^{n×q}`` (rows: the batch) with column-centered ``X_c, Y_c``:

    CKA(X, Y) = ||Y_cᵀ X_c||_F² / (||X_cᵀ X_c||_F · ||Y_cᵀ Y_c||_F)

invariant to orthogonal transforms and isotropic scaling of either side, for any widths. The
features are flattened to ``(B, C·H·W)`` (Kornblith et al. compare flattened conv activations;
pooling would discard where things are), so spatial sizes need not agree either. The loss is
``weight · Σ_pairs w_l · (1 − CKA)``; there is no canonical weight for CKA as a distillation
loss, so the default 1 puts ``1 − CKA ∈ [0, 1]`` on the task loss's scale, with a wide log range.

:func:`linear_cka` (from :mod:`.similarity`, shared with the diagnostics) is re-exported here.
"""

from __future__ import annotations

from torch import Tensor

from .base import (
    FEATURE_READS,
    HyperParam,
    LayerPair,
    StepOutputs,
    TransferMethod,
    per_pair_terms,
    register_method,
)
from .similarity import linear_cka

__all__ = ["CKAMatching", "cka_loss", "linear_cka"]


def cka_loss(_pair: LayerPair, teacher: Tensor, student: Tensor) -> Tensor:
    """``1 − CKA_linear`` of the flattened ``(B, ·)`` features."""
    return 1.0 - linear_cka(teacher, student)


@register_method("cka")
class CKAMatching(TransferMethod):
    """Aligns the example-by-example similarity structure of each layer pair; any widths."""

    summary = "linear CKA between teacher and student layers (1 − CKA per pair)"
    reference = "Kornblith et al. 2019 (CKA as a similarity index; no distillation recipe)"
    reads = FEATURE_READS
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("weight", "float", 1.0, 1e-2, 100.0, log=True,
                   help="weight of the summed 1 − CKA terms",
                   source="ours: no canonical value; 1 − CKA ∈ [0, 1] on the task loss's "
                          "scale"),
    )

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        return per_pair_terms("cka", self.pairs, step, self.hparams["weight"], cka_loss)
