"""``otbench perf``: what the OT regularizer, each method, the data path and the per-epoch
representation diagnostics cost, measured against a training step.

Timings on a shared machine are noisy, so every number here is a median of repeated samples,
the variants being compared run interleaved in one process (each round visits them in a
rotated order, after warm-up calls), and every ratio is a ratio of two such medians. On CUDA
each sample is bracketed by ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import copy
import itertools
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ot
import scipy
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otbench import methods
from otbench.benchmark import models
from otbench.benchmark.config import RunConfig, TrainConfig
from otbench.benchmark.data import BatchIterator, TaskData, TaskSpec, load_task, make_normalizer
from otbench.benchmark.diagnostics import DiagnosticsRecorder
from otbench.benchmark.runner import resolve_device
from otbench.benchmark.train import Student, make_optimizer, run_epochs, synchronize, train_step
from otbench.errors import ConfigError, OtbenchError
from otbench.methods import LayerPair, StepOutputs, TransferContext, TransferMethod
from otbench.methods.base import flatten_neurons
from otbench.methods.ot import EMD_MAX_ITER, OTSettings, neuron_costs

#: A variant runs once and returns the seconds per step it measured itself.
Variant = Callable[[], float]

SOLVERS = ("exact", "assignment", "sinkhorn", "auto")
#: POT's emd2 on the raw float64 cost: the per-layer cost before issue #6, for reference.
REFERENCE = "pot-emd2"
#: A solver slower than this at one width is not run at the larger ones (the reference is).
SLOW_SOLVER_S = 1.0
FEATURES_ONLY = "features-only"
#: A digits epoch takes tens of milliseconds, so (c) affords this many times the repeats.
DATA_PATH_REPEATS = 5


@dataclass(frozen=True)
class PerfOptions:
    """What to measure; ``quick`` trims widths, model pairs and plan-reuse k for smoke runs."""

    device: torch.device
    repeats: int
    warmup: int
    widths: tuple[int, ...]
    neuron_dim: int
    pairs: tuple[str, ...]
    plan_every: tuple[int, ...]
    data_models: tuple[str, ...]
    data_dir: str = "data"
    #: A method whose first step takes longer is listed as skipped (keeps --quick quick).
    step_budget_s: float | None = None
    quick: bool = False

    @classmethod
    def build(cls, device: str, repeats: int | None, quick: bool,
              data_dir: str = "data") -> PerfOptions:
        if repeats is not None and repeats < 1:
            raise ConfigError(f"--repeats must be at least 1, got {repeats}")
        if quick:
            return cls(resolve_device(device), repeats or 3, 1, (64, 128, 256), 1024,
                       ("cnn",), (1, 4), ("cnn-s",), data_dir, step_budget_s=0.5, quick=True)
        return cls(resolve_device(device), repeats or 7, 2, (64, 128, 256, 512, 1024, 2048),
                   1024, ("resnet18", "cnn"), (1, 2, 4, 8), ("cnn-s", "cnn-l"), data_dir,
                   step_budget_s=5.0)


def measure(variants: Mapping[str, Variant], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Samples of each variant, interleaved: load from other processes hits all alike."""
    for variant in variants.values():
        for _ in range(warmup):
            variant()
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(variants[name]())
    return samples


def timed(fn: Callable[[], object], device: torch.device, steps: int = 1) -> Variant:
    """Wrap ``fn`` (``steps`` steps' work) as a variant returning seconds per step."""

    def variant() -> float:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        return (time.perf_counter() - start) / steps

    return variant


def median_ms(samples: Sequence[float]) -> float:
    return 1e3 * statistics.median(samples)


# --------------------------------------------------------------------- (a) OT per layer


def reference_emd2(teacher: Tensor, student: Tensor) -> float:
    """Ω as computed before issue #6: POT's emd2 on the raw float64 cost."""
    cost = neuron_costs(teacher, student, OTSettings()).to("cpu", torch.float64).numpy()
    n_t, n_s = cost.shape
    return float(ot.emd2(np.full(n_t, 1 / n_t), np.full(n_s, 1 / n_s), cost,
                         numItermax=EMD_MAX_ITER))


def ot_layer_rows(opts: PerfOptions) -> list[dict[str, Any]]:
    """Time of Ω on one layer of ``n`` neurons sampled in ``d`` dims, by width and solver."""
    rows: list[dict[str, Any]] = []
    generator = torch.Generator().manual_seed(0)
    active = [REFERENCE, *SOLVERS]
    for width in opts.widths:
        teacher, student = (torch.randn(opts.neuron_dim, width, generator=generator)
                            .to(opts.device) for _ in range(2))
        variants = {solver: timed(_ot_call(solver, teacher, student), opts.device)
                    for solver in active}
        samples = measure(variants, opts.repeats, opts.warmup)
        reference = median_ms(samples[REFERENCE])
        for solver in variants:
            ms = median_ms(samples[solver])
            rows.append({"width": width, "dim": opts.neuron_dim, "solver": solver,
                         "median_ms": ms, "ratio_to_reference": ms / reference})
        active = [s for s in active
                  if s == REFERENCE or median_ms(samples[s]) <= 1e3 * SLOW_SOLVER_S]
    return rows


def _ot_call(solver: str, teacher: Tensor, student: Tensor) -> Callable[[], object]:
    if solver == REFERENCE:
        return lambda: reference_emd2(teacher, student)
    return lambda: methods.ot_distance(teacher, student, solver=solver)


# ------------------------------------------------------------ (b, d) training steps


@dataclass(frozen=True)
class PairSpec:
    """A teacher → student pairing on random inputs of one size."""

    teacher: str
    student: str
    scenario: str
    image_size: int
    in_channels: int
    batch: int = 64
    num_classes: int = 10

    @property
    def label(self) -> str:
        return (f"{self.teacher}->{self.student} {self.scenario} "
                f"{self.image_size}x{self.image_size} b{self.batch}")


PAIRS = {
    "resnet18": PairSpec("resnet18", "resnet18", "transfer", 32, 3),
    "cnn": PairSpec("cnn-l", "cnn-s", "distill", 8, 1),
}


@dataclass
class PairSetup:
    """A built pair: every method variant trains its own copy of ``student`` on ``x, y``."""

    spec: PairSpec
    teacher: nn.Module
    student: nn.Module
    pairs: list[LayerPair]
    x: Tensor
    y: Tensor
    head: frozenset[str] = field(default_factory=frozenset)


class FeaturesOnly(TransferMethod):
    """Reads the features a feature method reads and adds no loss: the floor of ot/at/fitnets
    (teacher forward plus taps), so a method's own cost is its step ÷ this step."""

    reads = frozenset({"student_features", "teacher_features"})
    needs_layer_pairs = True

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        return {}


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: Tensor, batches: int = 4) -> None:
    """Set BN running statistics from random batches, like a trained teacher's.

    With fresh running statistics (mean 0, variance 1) an eval-mode network's activations
    grow with depth, which gives the OT solvers costs no trained teacher produces.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    model.train()
    for _ in range(batches):
        model(torch.randn_like(x))
    model.eval()


def build_pair(spec: PairSpec, device: torch.device) -> PairSetup:
    """Teacher, student and stage-by-stage layer pairs, as the runner builds them."""
    torch.manual_seed(0)
    x = torch.randn(spec.batch, spec.in_channels, spec.image_size, spec.image_size,
                    device=device)
    y = torch.randint(0, spec.num_classes, (spec.batch,), device=device)
    teacher = models.build_model(spec.teacher, spec.num_classes, spec.in_channels).to(device)
    calibrate_batchnorm(teacher, x)
    teacher.requires_grad_(False)
    student_spec = models.get_model_spec(spec.student)
    if spec.scenario == "transfer":
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        student = models.replace_head(student, student_spec, spec.num_classes)
    else:
        student = models.build_model(spec.student, spec.num_classes, spec.in_channels).to(device)
    names = models.default_layer_pairs(models.get_model_spec(spec.teacher), student_spec)
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    t_shapes = models.feature_shapes(teacher, [t for t, _ in names], shape)
    s_shapes = models.feature_shapes(student, [s for _, s in names], shape)
    pairs = [LayerPair(t, s, t_shapes[t], s_shapes[s]) for t, s in names]
    return PairSetup(spec, teacher, student, pairs, x, y,
                     models.head_parameter_names(student, student_spec))


def method_run(setup: PairSetup, cls: type[TransferMethod],
               params: Mapping[str, Any]) -> tuple[Student, torch.optim.Optimizer]:
    """A fresh student copy under ``cls`` and its optimizer; raises if it does not apply."""
    student = copy.deepcopy(setup.student)
    transfer = setup.spec.scenario == "transfer"
    context = TransferContext(
        teacher=setup.teacher, student=student, pairs=setup.pairs,
        scenario=setup.spec.scenario, same_architecture=transfer, same_labels=not transfer,
        start_weights={n: p.detach().clone() for n, p in student.named_parameters()},
        head=setup.head)
    method = cls(context, **params).to(setup.x.device)
    reads = cls.reads
    run = Student(student, method,
                  teacher=setup.teacher if reads & {"teacher_features", "teacher_logits"}
                  else None,
                  student_taps=[p.student for p in setup.pairs] if "student_features" in reads
                  else [],
                  teacher_taps=[p.teacher for p in setup.pairs] if "teacher_features" in reads
                  else [])
    params_list = [p for p in student.parameters() if p.requires_grad]
    params_list += [p for p in method.parameters() if p.requires_grad]
    return run, make_optimizer(params_list, TrainConfig())


def step_variant(setup: PairSetup, cls: type[TransferMethod], params: Mapping[str, Any],
                 steps: int = 1) -> Variant:
    """``steps`` full training steps (forward, method, backward, optimizer) per sample."""
    run, optimizer = method_run(setup, cls, params)

    def work() -> None:
        for _ in range(steps):
            loss, _terms, _seconds = train_step(run, setup.x, setup.y, amp=False)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return timed(work, setup.x.device, steps)


def method_rows(opts: PerfOptions, setup: PairSetup) -> list[dict[str, Any]]:
    """Each registered method's step ÷ finetune's, at default settings and taps."""
    variants: dict[str, Variant] = {FEATURES_ONLY: step_variant(setup, FeaturesOnly, {})}
    skipped: dict[str, str] = {}
    budget = opts.step_budget_s
    for name in methods.method_names():
        try:
            variant = step_variant(setup, methods.get_method(name), {})
        except OtbenchError as err:
            skipped[name] = str(err)
            continue
        if budget is not None and name != "finetune" and (seconds := variant()) > budget:
            skipped[name] = f"one step took {seconds:.2f} s, over the {budget:g} s budget"
            continue
        variants[name] = variant
    samples = measure(variants, opts.repeats, opts.warmup)
    rows = _ratio_rows(setup, samples, [{"method": name} for name in samples])
    return rows + [{"pair": setup.spec.label, "method": name, "skipped": reason}
                   for name, reason in skipped.items()]


def plan_reuse_rows(opts: PerfOptions, setup: PairSetup) -> list[dict[str, Any]]:
    """OT's step with the plan solved every k steps; a sample spans a multiple of every k."""
    steps = int(np.lcm.reduce(opts.plan_every))
    ot_cls = methods.get_method("ot")
    variants = {"finetune": step_variant(setup, methods.get_method("finetune"), {}, steps),
                FEATURES_ONLY: step_variant(setup, FeaturesOnly, {}, steps)}
    for k in opts.plan_every:
        variants[f"ot k={k}"] = step_variant(setup, ot_cls, {"plan_every": k}, steps)
    samples = measure(variants, opts.repeats, opts.warmup)
    labels = {name: {"method": name, "plan_every": None} for name in variants}
    labels.update({f"ot k={k}": {"method": "ot", "plan_every": k} for k in opts.plan_every})
    return _ratio_rows(setup, samples, (labels[name] for name in samples))


def _ratio_rows(setup: PairSetup, samples: Mapping[str, list[float]],
                labels: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    finetune = median_ms(samples["finetune"])
    floor = median_ms(samples[FEATURES_ONLY])
    return [{"pair": setup.spec.label, **label, "median_ms": median_ms(times),
             "ratio_to_finetune": median_ms(times) / finetune,
             "ratio_to_features_only": median_ms(times) / floor}
            for label, times in zip(labels, samples.values(), strict=True)]


# ------------------------------------------------------------------- (c) the data path


def data_path_rows(opts: PerfOptions) -> list[dict[str, Any]]:
    """The real in-memory training loop's step vs a bare step on the same pre-made batches."""
    task = load_task(TaskSpec.parse("digits"), data_dir=opts.data_dir, device=opts.device)
    cfg = TrainConfig(epochs=1)
    batches = list(BatchIterator(task.train, cfg.batch_size, shuffle=False,
                                 normalize=make_normalizer(task)))
    finetune = methods.get_method("finetune")
    rows = []
    for model_name in opts.data_models:
        torch.manual_seed(0)
        model = models.build_model(model_name, task.num_classes, task.in_channels).to(opts.device)
        run = Student(model, finetune(TransferContext(model, model, [])))
        samples = measure({"loop": _loop_epoch(run, task, cfg, len(batches)),
                           "bare": _bare_epoch(model, batches, cfg)},
                          DATA_PATH_REPEATS * opts.repeats, opts.warmup)
        loop_ms, bare_ms = median_ms(samples["loop"]), median_ms(samples["bare"])
        rows.append({"task": "digits", "model": model_name, "batch": cfg.batch_size,
                     "steps": len(batches), "loop_ms": loop_ms, "bare_ms": bare_ms,
                     "ratio": loop_ms / bare_ms})
    return rows


def _loop_epoch(run: Student, task: TaskData, cfg: TrainConfig, steps: int) -> Variant:
    """One epoch of the real loop; its own timer covers the steps, not the validation."""
    generator = torch.Generator(device=task.train.x.device).manual_seed(0)

    def variant() -> float:
        log = run_epochs(run, task, cfg, generator=generator, progress=False)[0]
        return log.epoch_time / steps

    return variant


def _bare_epoch(model: nn.Module, batches: list[tuple[Tensor, Tensor]],
                cfg: TrainConfig) -> Variant:
    """Forward, cross-entropy, backward and optimizer step on tensors made in advance."""

    def work() -> None:
        model.train()
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return timed(work, batches[0][0].device, len(batches))


# ------------------------------------------------------- (e) representation diagnostics


def diagnostics_rows(opts: PerfOptions, setup: PairSetup) -> list[dict[str, Any]]:
    """One epoch's diagnostics (every layer pair, on a probe of the runs' default size) in
    fine-tuning steps: with diagnostics on, an epoch of N steps costs about ratio / N more."""
    probe_size = RunConfig.model_fields["probe_size"].default
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(probe_size, *setup.x.shape[1:], generator=generator).to(setup.x.device)
    # Recording reads the student in eval mode and restores its mode: no copy needed.
    recorder = DiagnosticsRecorder(setup.teacher, setup.student, setup.pairs, probe)
    epochs = itertools.count()
    samples = measure({"finetune": step_variant(setup, methods.get_method("finetune"), {}),
                       "diagnostics": timed(lambda: recorder.record(next(epochs)),
                                            setup.x.device)},
                      opts.repeats, opts.warmup)
    step_ms, record_ms = median_ms(samples["finetune"]), median_ms(samples["diagnostics"])
    return [{"pair": setup.spec.label, "probe": probe_size, "layers": len(setup.pairs),
             "step_ms": step_ms, "diagnostics_ms": record_ms,
             "ratio_to_step": record_ms / step_ms}]


# ------------------------------------------------------------- (f) wide layers (ResNet-50)

#: ResNet-50's stages at 224 × 224: (neurons, feature-map side) of layer1 .. layer4.
RESNET50_STAGES = ((256, 56), (512, 28), (1024, 14), (2048, 7))
#: The anchor: Ω written as a POT user writes it, gradient through POT.
POT_USER = "pot-user emd2"
#: The device's own share of a step, during which the CPU is free: an assumed GPU step
#: (ResNet-50 at batch 64 with AMP trains at a few thousand images a second on a current
#: data-centre GPU), played by a sleep between steps. It is not measured here.
DEVICE_STEP_S = 0.03
#: OT settings compared, as method parameters (plan_every 4: the largest k measured not
#: to cost accuracy on the quick suite).
WIDE_SETTINGS: dict[str, dict[str, int]] = {
    "exact": {},
    "plan_every=4": {"plan_every": 4},
    "plan_lag=1": {"plan_lag": 1},
    "plan_every=4 plan_lag=1": {"plan_every": 4, "plan_lag": 1},
}


def wide_layer_rows(opts: PerfOptions, batch: int | None = None) -> list[dict[str, Any]]:
    """Per ResNet-50 stage (n neurons in d = batch·H·W dims), the OT time a step blocks its
    caller for: the forward and backward of the loss, a step's device work being a
    :data:`DEVICE_STEP_S` sleep between calls, for each of :data:`WIDE_SETTINGS` and for
    the POT user's ``emd2`` on the torch backend. ``--quick``: batch 1, the first stage."""
    batch = batch or (1 if opts.quick else 64)
    stages = RESNET50_STAGES[:1] if opts.quick else RESNET50_STAGES
    steps = int(np.lcm.reduce([s.get("plan_every", 1) for s in WIDE_SETTINGS.values()]))
    rows: list[dict[str, Any]] = []
    for width, side in stages:
        generator = torch.Generator().manual_seed(width)
        batches = [tuple(torch.randn(batch, width, side, side, generator=generator)
                         .relu_().to(opts.device) for _ in range(2)) for _ in range(2)]
        pair = LayerPair("teacher", "student", (width, side, side), (width, side, side))
        variants = {POT_USER: _blocking_steps(_pot_user_step, batches, steps, opts.device)}
        for name, params in WIDE_SETTINGS.items():
            method = methods.get_method("ot")(TransferContext(nn.Identity(), nn.Identity(), [pair]),
                                      **params)
            variants[name] = _blocking_steps(_method_step(method), batches, steps,
                                             opts.device)
        samples = measure(variants, opts.repeats, opts.warmup)
        anchor = median_ms(samples[POT_USER])
        rows += [{"width": width, "dim": batch * side * side, "setting": name,
                  "blocking_ms": median_ms(times), "ratio_to_pot_user":
                  median_ms(times) / anchor} for name, times in samples.items()]
    return rows


def _pot_user_step(teacher: Tensor, student: Tensor) -> Tensor:
    """``ot.emd2`` on ``ot.dist`` of the flattened neurons (torch backend), as in POT's
    examples, with the solver's iteration cap raised to reach the optimum as otbench does."""
    t, s = flatten_neurons(teacher), flatten_neurons(student)
    uniform_t = torch.full((len(t),), 1 / len(t), device=t.device)
    uniform_s = torch.full((len(s),), 1 / len(s), device=s.device)
    return ot.emd2(uniform_t, uniform_s, ot.dist(t, s) / t.shape[1], numItermax=EMD_MAX_ITER)


def _method_step(method: TransferMethod) -> Callable[[Tensor, Tensor], Tensor]:
    def step(teacher: Tensor, student: Tensor) -> Tensor:
        outputs = StepOutputs(torch.zeros(0), torch.zeros(0),
                              student_features={"student": student},
                              teacher_features={"teacher": teacher})
        return sum(method(outputs).values())

    return step


def _blocking_steps(loss: Callable[[Tensor, Tensor], Tensor],
                    batches: Sequence[tuple[Tensor, ...]], steps: int,
                    device: torch.device) -> Variant:
    """Seconds per step spent in ``loss``'s forward and backward, over ``steps`` steps that
    alternate between ``batches``; the device's share of each step (a sleep) is not
    counted, and a pipelined solve runs during it."""

    def variant() -> float:
        blocked = 0.0
        for index in range(steps):
            teacher, student = batches[index % len(batches)]
            student = student.detach().requires_grad_()
            synchronize(device)
            start = time.perf_counter()
            loss(teacher, student).backward()
            synchronize(device)
            blocked += time.perf_counter() - start
            time.sleep(DEVICE_STEP_S)
        return blocked / steps

    return variant


# ------------------------------------------------------------------------- reporting


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "pot": ot.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor(),
            "device": str(device)}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def run_perf(opts: PerfOptions) -> dict[str, Any]:
    """All six sections; the result is what ``--json`` writes."""
    setups = [build_pair(PAIRS[name], opts.device) for name in opts.pairs]
    return {
        "machine": machine_info(opts.device),
        "settings": {"repeats": opts.repeats, "warmup": opts.warmup, "widths": opts.widths,
                     "neuron_dim": opts.neuron_dim, "plan_every": opts.plan_every,
                     "pairs": [PAIRS[name].label for name in opts.pairs]},
        "ot_layers": ot_layer_rows(opts),
        "methods": [row for setup in setups for row in method_rows(opts, setup)],
        "plan_reuse": [row for setup in setups for row in plan_reuse_rows(opts, setup)],
        "data_path": data_path_rows(opts),
        "diagnostics": [row for setup in setups for row in diagnostics_rows(opts, setup)],
        "wide_layers": wide_layer_rows(opts),
    }


def format_table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table; absent cells (skipped rows) stay blank."""
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_report(result: Mapping[str, Any]) -> str:
    machine = result["machine"]
    skipped = "\n".join(["methods not measured:"] + [
        f"  {r['pair']}: {r['method']} ({r['skipped']})"
        for r in result["methods"] if "skipped" in r])
    parts = [
        f"machine: {machine['cpu_count']} CPUs, torch {machine['torch']}, intra-op threads: "
        f"{machine['torch_threads']}, device {machine['device']}",
        format_table("(a) OT on one layer, n x n neurons (ratio to POT emd2 on the raw cost)",
                     result["ot_layers"],
                     ("width", "dim", "solver", "median_ms", "ratio_to_reference")),
        format_table("(b) training step by method (ratio to finetune / to features-only: "
                     "teacher forward and taps, no loss)",
                     [r for r in result["methods"] if "skipped" not in r],
                     ("pair", "method", "median_ms", "ratio_to_finetune",
                      "ratio_to_features_only")),
        *([skipped] if "\n" in skipped else []),
        format_table("(c) in-memory training loop vs bare model step", result["data_path"],
                     ("task", "model", "batch", "steps", "loop_ms", "bare_ms", "ratio")),
        format_table("(d) OT plan reuse: plans solved every k steps", result["plan_reuse"],
                     ("pair", "method", "plan_every", "median_ms", "ratio_to_finetune",
                      "ratio_to_features_only")),
        format_table("(e) representation diagnostics of one epoch (ratio: in fine-tuning "
                     "steps)", result["diagnostics"],
                     ("pair", "probe", "layers", "step_ms", "diagnostics_ms", "ratio_to_step")),
        format_table(f"(f) OT at ResNet-50's widths: ms a step blocks for (forward + backward "
                     f"of the loss; the device's {1e3 * DEVICE_STEP_S:g} ms of a step is a "
                     "sleep), ratio to the POT user's emd2", result["wide_layers"],
                     ("width", "dim", "setting", "blocking_ms", "ratio_to_pot_user")),
    ]
    return "\n\n".join(parts)
