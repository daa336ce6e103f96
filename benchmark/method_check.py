"""``otbench methods --check``: the checks every built-in method passes, run on any registered
method (a user's plugin included), so that a plugin gets the same guarantees.

For each scenario the method applies to, on small real networks (a ``cnn-l`` teacher, a
``cnn-s`` student or, in transfer, the teacher's copy) built as a run builds them, with the
method's default hyper-parameters:

- interface: a name and a summary, valid defaults, one scalar finite term per name, each named
  ``<method>/…``, reading only what ``reads`` declares;
- gradient: the terms reach the student (and every trainable parameter of the method) but
  never the teacher, neither its features nor its weights;
- determinism: the same seed gives bit-identical terms (randomness must come from torch's
  generator, which a run seeds; Python's ``random``, numpy's or a fresh generator are not).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from otbench.errors import ConfigError, OtbenchError
from otbench.methods import LayerPair, StepOutputs, TransferContext, TransferMethod
from otbench.methods.base import check_applicable

from . import models
from .config import SCENARIOS
from .models import FeatureTaps

TEACHER, STUDENT = "cnn-l", "cnn-s"
#: Digits-like inputs: one channel, 8 × 8 pixels, five classes per task, a batch of 8.
IMAGE, CLASSES, BATCH = (1, 8, 8), 5, 8
SEED = 0


@dataclass
class CheckReport:
    """What the check found for one method: the scenarios it ran in and its problems."""

    method: str
    scenarios: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class Setting:
    """One scenario's networks, as a run builds them, and one batch through them."""

    scenario: str
    context: TransferContext
    x: Tensor
    y: Tensor


def check_method(cls: type[TransferMethod]) -> CheckReport:
    """Run every check on ``cls``; the report lists each problem with its fix."""
    report = CheckReport(cls.name or cls.__qualname__)
    report.problems += _interface_problems(cls)
    for scenario, flags in SCENARIOS.items():
        try:
            check_applicable(cls, scenario, same_architecture=flags["starts_from_teacher"],
                             same_labels=flags["same_labels"])
        except ConfigError:
            continue
        report.scenarios.append(scenario)
        setting = _setting(scenario)
        report.problems += [f"{scenario}: {p}" for p in _step_problems(cls, setting)]
    if not report.scenarios:
        report.problems.append("applies to no scenario: check needs_same_architecture and "
                               "needs_same_labels")
    return report


def _interface_problems(cls: type[TransferMethod]) -> list[str]:
    problems = []
    if not cls.summary:
        problems.append("no summary: set the class attribute summary to one line saying what "
                        "the method does (otbench methods lists it)")
    for hp in cls.hyperparams:
        try:
            hp.validate(hp.default)
        except ConfigError as err:
            problems.append(f"hyper-parameter {hp.name!r}: its default is invalid ({err})")
    return problems


def _setting(scenario: str) -> Setting:
    """The scenario's teacher and student with their default layer pairs; in transfer the
    student has moved a little from its start (the teacher), as after a few steps, so that a
    distance to the teacher has a gradient."""
    flags = SCENARIOS[scenario]
    torch.manual_seed(SEED)
    teacher_spec = models.get_model_spec(TEACHER)
    teacher = models.build_model(TEACHER, CLASSES, IMAGE[0])
    if flags["starts_from_teacher"]:
        student_spec = teacher_spec
        student = models.replace_head(copy.deepcopy(teacher), student_spec, CLASSES)
    else:
        student_spec = models.get_model_spec(STUDENT)
        student = models.build_model(STUDENT, CLASSES, IMAGE[0])
    names = models.default_layer_pairs(teacher_spec, student_spec)
    t_shapes = models.feature_shapes(teacher, [t for t, _ in names], IMAGE)
    s_shapes = models.feature_shapes(student, [s for _, s in names], IMAGE)
    pairs = [LayerPair(t, s, t_shapes[t], s_shapes[s], 1.0) for t, s in names]
    context = TransferContext(
        teacher=teacher, student=student, pairs=pairs, scenario=scenario,
        same_architecture=flags["starts_from_teacher"], same_labels=flags["same_labels"],
        start_weights={n: p.detach().clone() for n, p in student.named_parameters()},
        head=models.head_parameter_names(student, student_spec))
    if flags["starts_from_teacher"]:
        with torch.no_grad():
            for param in student.parameters():
                param.add_(0.05 * torch.randn_like(param))
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(BATCH, *IMAGE, generator=generator)
    return Setting(scenario, context, x, torch.arange(BATCH) % CLASSES)


def _outputs(cls: type[TransferMethod], setting: Setting) -> tuple[StepOutputs, list[Tensor]]:
    """What a training step hands the method, only what it ``reads``; the teacher's features
    as leaves that record a gradient, so that one reaching them shows."""
    ctx, reads = setting.context, cls.reads
    teacher_logits, teacher_features = None, {}
    if reads & {"teacher_features", "teacher_logits"}:
        taps = [p.teacher for p in ctx.pairs] if "teacher_features" in reads else []
        with torch.no_grad(), FeatureTaps(ctx.teacher, taps) as tapped:
            logits = ctx.teacher(setting.x)
        teacher_features = {k: v.detach().requires_grad_() for k, v in tapped.features.items()}
        teacher_logits = logits
    taps = [p.student for p in ctx.pairs] if "student_features" in reads else []
    with FeatureTaps(ctx.student, taps) as tapped:
        student_logits = ctx.student(setting.x)
    step = StepOutputs(student_logits=student_logits, targets=setting.y,
                       student_features=dict(tapped.features),
                       teacher_features=teacher_features,
                       teacher_logits=teacher_logits if "teacher_logits" in reads else None)
    return step, list(teacher_features.values())


def _run(cls: type[TransferMethod], setting: Setting, steps: int = 2
         ) -> tuple[TransferMethod, list[dict[str, Tensor]], list[Tensor]]:
    """A fresh method under the run's seed, and its terms on ``steps`` training steps."""
    for module in (setting.context.teacher, setting.context.student):
        module.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)
    method = cls(setting.context)
    method.train()
    terms, leaves = [], []
    for _ in range(steps):
        step, teacher_leaves = _outputs(cls, setting)
        terms.append(method(step))
        leaves += teacher_leaves
    return method, terms, leaves


def _step_problems(cls: type[TransferMethod], setting: Setting) -> list[str]:
    try:
        method, runs, teacher_leaves = _run(cls, setting)
    except OtbenchError as err:
        return [f"refused the default setting: {err}"]
    except Exception as err:  # a plugin's bug: report it, with what it read
        hint = (" (a method sees only what its class attribute reads declares: "
                f"{sorted(cls.reads) or 'nothing'})" if isinstance(err, (KeyError, TypeError))
                else "")
        return [f"forward raised {type(err).__name__}: {err}{hint}"]
    problems = _term_problems(cls, runs[0])
    if problems:
        return problems
    problems += _gradient_problems(method, setting, runs, teacher_leaves)
    problems += _determinism_problems(cls, setting, runs)
    return problems


def _term_problems(cls: type[TransferMethod], terms: object) -> list[str]:
    if not isinstance(terms, dict):
        return [f"forward returned {type(terms).__name__}; return a dict of named scalar "
                "tensors (an empty one adds nothing)"]
    problems = []
    for key, value in terms.items():
        if not isinstance(key, str) or not key.startswith(f"{cls.name}/"):
            problems.append(f"term {key!r}: name each term '{cls.name}/<part>' (the runs log "
                            "it under that name)")
        elif not isinstance(value, Tensor) or value.dim() != 0:
            problems.append(f"term {key!r} is not a scalar tensor (reduce it, e.g. .mean())")
        elif not torch.isfinite(value):
            problems.append(f"term {key!r} is {value.item()} on a plain batch")
    return problems


def _gradient_problems(method: TransferMethod, setting: Setting,
                       runs: list[dict[str, Tensor]], teacher_leaves: list[Tensor]) -> list[str]:
    total = sum((value for terms in runs for value in terms.values()), torch.zeros(()))
    if not total.requires_grad:
        return ["no gradient: the terms do not depend on the student (or were detached)"
                ] if any(runs) else []
    total.backward()
    problems = []
    if any(leaf.grad is not None for leaf in teacher_leaves):
        problems.append("gradient reaches the teacher's features: detach them (.detach()) "
                        "before computing the loss; the teacher is frozen")
    if any(p.grad is not None for p in setting.context.teacher.parameters()):
        problems.append("gradient reaches the teacher's weights: the method must not run the "
                        "teacher or use its parameters with gradient")
    if not any(p.grad is not None and p.grad.abs().sum() > 0
               for p in setting.context.student.parameters()):
        problems.append("no gradient reaches the student: the terms are constant for it")
    idle = [name for name, p in method.named_parameters()
            if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    if idle:
        problems.append(f"the method's own trainable parameters {idle} get no gradient: "
                        "use them in a term or register them as buffers")
    return problems


def _determinism_problems(cls: type[TransferMethod], setting: Setting,
                          first: list[dict[str, Tensor]]) -> list[str]:
    _, second, _ = _run(cls, setting)
    for step, (one, two) in enumerate(zip(first, second, strict=True)):
        for key, value in one.items():
            again = two.get(key)
            if again is None or not torch.equal(value.detach(), again.detach()):
                shown = "missing" if again is None else f"{again.item()!r}"
                return [f"not deterministic: term {key!r} at step {step} was "
                        f"{value.item()!r}, then {shown} from the same seed; draw random "
                        "numbers from torch's global generator (which each run seeds), not "
                        "Python's random, numpy's or a new torch.Generator"]
    return []


def format_report(report: CheckReport) -> str:
    head = f"{report.method}: " + ("passed" if report.passed else "FAILED")
    scope = f" ({', '.join(report.scenarios)})" if report.scenarios else ""
    return head + scope + "".join(f"\n  - {p}" for p in report.problems)


def check_all(classes: list[type[TransferMethod]],
              say: Callable[[str], None] = print) -> bool:
    """Check each class and print its report; True when all passed."""
    reports = [check_method(cls) for cls in classes]
    for report in reports:
        say(format_report(report))
    return all(r.passed for r in reports)

