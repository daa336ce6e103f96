"""An example plugin: a user's own transfer method, compared against OT without editing otbench.

Check it with ``otbench methods --check --plugin examples/my_method.py`` (the interface,
gradient and determinism checks the built-in methods pass), run it with
``otbench run configs/cross.yaml --plugin examples/my_method.py --set method=cosine``, or
compare it with OT and fine-tuning in a sweep:
``otbench sweep examples/compare.yaml --plugin examples/my_method.py``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from otbench.methods import HyperParam, LayerPair, StepOutputs, TransferMethod, register_method
from otbench.methods.base import per_pair_terms, pool_to_smaller


@register_method("cosine")
class CosineMatching(TransferMethod):
    """1 − cosine similarity between channel-averaged teacher and student feature maps."""

    summary = "example plugin: cosine distance of channel-mean feature maps"
    reads = frozenset({"student_features", "teacher_features"})
    needs_layer_pairs = True
    hyperparams = (HyperParam("weight", "float", 1.0, 1e-3, 10.0, log=True,
                              help="weight of the summed cosine distances"),)

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        return per_pair_terms("cosine", self.pairs, step, self.hparams["weight"], cosine_distance)


def cosine_distance(_pair: LayerPair, teacher: Tensor, student: Tensor) -> Tensor:
    teacher, student = pool_to_smaller(teacher, student)
    t_map, s_map = teacher.mean(1).flatten(1), student.mean(1).flatten(1)
    return 1 - F.cosine_similarity(t_map, s_map, dim=1).mean()
