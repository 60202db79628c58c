"""A study read from a TOML config: the design, the workload, the space, objectives, budgets.

Configs are read once, at the edge, into typed Modules (`System`, `Transformer`, plans); every
problem is reported as `ConfigError` naming the key and its line. Human units are accepted as
strings ("80 GiB", "3.35 TB/s", "1.83 GHz", "2 us") through the named constants of
`dse.hardware.units`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import jax.numpy as jnp

from . import hardware as hw
from . import models
from ._format import REASON_METRIC
from ._space import Param, Space

UNIT_FACTORS: dict[str, float] = {
    name: float(getattr(hw.units, name))
    for name in ("KB", "MB", "GB", "TB", "PB", "KiB", "MiB", "GiB", "TiB", "Gbit", "Tbit",
                 "GHz", "MHz", "TFLOPS", "PFLOPS", "ns", "us", "ms")
}
UNIT_FACTORS.update({"B": 1.0, "Hz": 1.0, "s": 1.0, "W": 1.0, "mm2": 1.0, "nm": 1.0})

# The metrics a study's objective returns (and [objectives] / [budgets] may name); besides
# them it returns REASON_METRIC, the Reason flags that make a design infeasible.
TRAINING_METRICS = ("step_time", "tokens_per_s", "mfu", "memory_margin", "memory_shortfall",
                    "area", "power", "cost", "reticle_margin", "shoreline_margin",
                    "energy_per_token")
INFERENCE_METRICS = ("ttft", "tpot", "tokens_per_s_per_chip", "tokens_per_s_per_dollar",
                     "memory_margin", "memory_shortfall", "area", "power", "cost",
                     "reticle_margin", "shoreline_margin", "energy_per_token")


class ConfigError(ValueError):
    """A problem in a config file: names the key, its line and what is wrong."""

    def __init__(self, path: str, key: str, line: int | None, message: str):
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {message}")
        self.key, self.line = key, line


class _Reader:
    """Typed access to a parsed TOML document, with line numbers for errors."""

    def __init__(self, path: str, text: str):
        self.path, self.lines = path, text.splitlines()
        try:
            self.doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"line (\d+)", str(e))
            raise ConfigError(path, "<toml>", int(m.group(1)) if m else None, str(e)) from None

    def line_of(self, dotted: str) -> int | None:
        """Line where `dotted` (e.g. "chip.sram_bytes") is set: its table, then its key."""
        own_header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, dotted.split(".")))
                                + r"\s*[\].]")
        for i, line in enumerate(self.lines):
            if own_header.match(line):
                return i + 1
        *tables, key = dotted.split(".")
        start = 0
        if tables:
            header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, tables)) + r"\s*\]")
            for i, line in enumerate(self.lines):
                if header.match(line):
                    start = i
                    break
        pattern = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
        for i in range(start, len(self.lines)):
            if pattern.match(self.lines[i]):
                return i + 1
        return start + 1 if tables else None

    def error(self, dotted: str, message: str) -> ConfigError:
        return ConfigError(self.path, dotted, self.line_of(dotted), message)

    def table(self, dotted: str, allowed: tuple[str, ...] | None = None,
              required: bool = False) -> dict:
        node: Any = self.doc
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                if required:
                    raise ConfigError(self.path, dotted, None, "missing table")
                return {}
            node = node[part]
        if not isinstance(node, dict):
            raise self.error(dotted, f"must be a table, got {type(node).__name__}")
        if allowed is not None:
            for key in node:
                if key not in allowed:
                    raise self.error(f"{dotted}.{key}",
                                     f"unknown key; allowed: {', '.join(allowed)}")
        return node

    def number(self, dotted: str, value: Any) -> float:
        """A float from a number or a '<number> <unit>' string."""
        if isinstance(value, bool):
            raise self.error(dotted, f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*([A-Za-z0-9]*)(/s)?\s*", value)
            if m:
                try:
                    number = float(m.group(1))
                except ValueError:
                    number = None
                unit = m.group(2) or ""
                if number is not None and (unit == "" or unit in UNIT_FACTORS):
                    return number * UNIT_FACTORS.get(unit, 1.0)
            raise self.error(dotted, f"cannot read {value!r} as a number with a unit "
                                     f"(units: {', '.join(UNIT_FACTORS)})")
        raise self.error(dotted, f"expected a number, got {type(value).__name__} {value!r}")

    def string(self, dotted: str, value: Any, choices=None) -> str:
        if not isinstance(value, str):
            raise self.error(dotted, f"expected a string, got {type(value).__name__} {value!r}")
        if choices is not None and value not in choices:
            raise self.error(dotted, f"unknown value {value!r}; known: {', '.join(choices)}")
        return value

    def integer(self, dotted: str, value: Any, lower: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(dotted, f"expected an integer, got {value!r}")
        if lower is not None and value < lower:
            raise self.error(dotted, f"must be an integer >= {lower}; got {value}")
        return value

    def boolean(self, dotted: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.error(dotted, f"expected true or false, got {value!r}")
        return value


def _keys(owner: type, which: Literal["all", "number", "int", "bool", "required"] = "all"
          ) -> tuple[str, ...]:
    """Config keys of a [chip] / [system] table.

    "number": the Module's continuous fields, from the one field table (`dse.hardware.FIELDS`);
    "int": its integer static fields; "required": the fields without a default (numbers and
    statics); "all": "preset", the numbers, then every static field.
    """
    numbers = tuple(name for name, f in hw.FIELDS.items() if f.owner == owner.__name__)
    fields = dataclasses.fields(owner)
    static = tuple(f.name for f in fields if f.metadata.get("static"))
    if which == "number":
        return numbers
    if which in ("int", "bool"):
        kind = {"int": ("int", int), "bool": ("bool", bool)}[which]
        return tuple(f.name for f in fields if f.name in static and f.type in kind)
    if which == "required":
        return tuple(f.name for f in fields if f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING
                     and f.name in numbers + static)
    return ("preset", *numbers, *static)


CHIP_KEYS = _keys(hw.Chip)
SYSTEM_KEYS = _keys(hw.System)
WORKLOAD_KEYS = ("kind", "model", "global_batch", "plan", "batch", "input_len", "output_len",
                 "precision", "weights", "activations", "kv_cache",
                 "tp", "pp")
# Every numeric field of a TrainingPlan but global_batch (read from [workload]).
PLAN_KEYS = tuple(f.name for f in dataclasses.fields(models.TrainingPlan)
                  if not f.metadata.get("static") and f.name != "global_batch")
TOP_KEYS = ("chip", "system", "workload", "space", "objectives", "budgets", "sweep",
            "optimize", "output")


@dataclasses.dataclass(frozen=True)
class Study:
    """Everything a CLI command needs, read from one config (typed; no dicts inside models)."""

    path: str
    system: hw.System
    kind: str  # "training" or "inference"
    model: models.Transformer
    global_batch: int
    plan: Any  # TrainingPlan, InferencePlan, or None (best_plan chooses)
    batch: float
    input_len: float
    output_len: float
    space: Space | None
    objectives: dict[str, str]
    budgets: dict[str, tuple[float | None, float | None]]
    sweep_n: int
    sweep_chunk: int
    seed: int
    sweep_path: Path | None
    optimize_options: dict[str, Any]
    output_dir: Path
    precision: str = "bf16"  # the training recipe best_plan's plans run (plan None)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return TRAINING_METRICS if self.kind == "training" else INFERENCE_METRICS

    def objective(self, *, smooth: bool = False) -> StudyObjective:
        """`system -> {metric: scalar}`: the workload on the design plus area, power, cost."""
        return make_objective(self.kind, self.model, self.plan, self.global_batch, self.batch,
                              self.input_len, self.output_len, smooth=smooth,
                              precision=self.precision)


def hardware_metrics(chip: hw.Chip) -> dict[str, Any]:
    """Area (per die, mm^2), power at full activity (W, a conservative TDP), manufacturing cost
    ($), margins, and the cost model's reason (`Reason.UNMANUFACTURABLE` for a die that cannot
    be made)."""
    a = hw.area(chip)
    c = hw.cost(chip)
    return {"area": a.per_die, "power": hw.power(chip).total, "cost": c.total,
            "reticle_margin": a.reticle_margin, "shoreline_margin": a.shoreline_margin,
            REASON_METRIC: c.reason}


@dataclasses.dataclass(frozen=True, eq=False)
class StudyObjective:
    """`system -> {metric: scalar}`: a workload on a system design, plus area, power and cost.

    The metrics are `TRAINING_METRICS` or `INFERENCE_METRICS`, and `"reason"`: the
    `dse.hardware.Reason` flags of the workload's report and of the cost model (0 = feasible),
    which `dse.sweep` and `dse.optimize` read. A pure JAX function of the system; `calibration`
    is exposed so that a resumed sweep can check it is the same.
    """

    kind: str
    model: models.Transformer
    plan: Any
    global_batch: int
    # Whole numbers, as ints or floats (serve checks them).
    batch: float | int = 1.0
    input_len: float | int = 1.0
    output_len: float | int = 1.0
    smooth: bool = False
    calibration: models.Calibration = models.DEFAULT
    precision: str = "bf16"  # the training recipe of the plans best_plan chooses (plan None)

    def __call__(self, system: hw.System) -> dict:
        out = hardware_metrics(system.chip)
        kw = dict(smooth=self.smooth, calibration=self.calibration)
        if self.kind == "training":
            if self.plan is None:
                report = models.best_plan(self.model, system, self.global_batch,
                                          precision=self.precision, **kw)[1]
            else:
                report = models.train_step(self.model, self.plan, system, **kw)
            tokens_per_step = report.tokens_per_s * report.step_time
            out.update(step_time=report.step_time, tokens_per_s=report.tokens_per_s,
                       mfu=report.mfu, energy_per_token=report.energy / tokens_per_step)
        else:
            report = models.serve(self.model, self.plan, system, self.batch, self.input_len,
                                  self.output_len, **kw)
            out.update(ttft=report.ttft, tpot=report.tpot,
                       tokens_per_s_per_chip=report.tokens_per_s_per_chip,
                       tokens_per_s_per_dollar=report.tokens_per_s_per_chip / out["cost"],
                       energy_per_token=report.energy_per_token)
        out.update(memory_margin=report.memory_capacity - report.memory_per_chip,
                   memory_shortfall=report.memory_shortfall)
        # Flags as a float metric (exact: they are small integers), so that the sweep kernel
        # carries them in its one metrics array.
        out[REASON_METRIC] = (out[REASON_METRIC] | report.reason).astype(jnp.result_type(float))
        return {k: jnp.asarray(v) for k, v in out.items()}


def make_objective(kind, model, plan, global_batch, batch=1.0, input_len=1.0, output_len=1.0, *,
                   smooth: bool = False,
                   calibration: models.Calibration = models.DEFAULT,
                   precision: str = "bf16") -> StudyObjective:
    """The metrics of a workload on a system design (see `StudyObjective`); `precision` is
    the training recipe of the plans `best_plan` chooses from when `plan` is None."""
    return StudyObjective(kind, model, plan, global_batch, batch, input_len, output_len,
                          smooth, calibration, precision)


def _design(r: _Reader, table: str, owner: type, base: Any, changes: dict[str, Any]) -> Any:
    """`base` (or a new `owner`) with the keys of [table]: the table's continuous fields are
    numbers (with units), integer static fields integers, boolean ones true / false, the other
    static fields strings; a
    value the Module rejects is an error naming its key."""
    spec = r.table(table, _keys(owner))
    numbers, integers, flags = _keys(owner, "number"), _keys(owner, "int"), _keys(owner, "bool")
    changes = dict(changes)
    for key, value in spec.items():
        if key != "preset":
            read = (r.number if key in numbers else r.integer if key in integers
                    else r.boolean if key in flags else r.string)
            changes[key] = read(f"{table}.{key}", value)
    try:
        return base.replace(**changes) if base is not None else owner(**changes)
    except ValueError as e:
        field = next((k for k in spec if f".{k} " in str(e) or f".{k}:" in str(e)), None)
        raise r.error(f"{table}.{field}" if field else table, str(e)) from None


def _chip(r: _Reader) -> hw.Chip:
    spec = r.table("chip", CHIP_KEYS)
    if "preset" in spec:
        base = hw.CHIPS[r.string("chip.preset", spec["preset"], tuple(hw.CHIPS))]
    else:
        missing = [f for f in _keys(hw.Chip, "required") if f not in spec]
        if missing:
            raise ConfigError(r.path, "chip", r.line_of("chip.preset") or None,
                              f"give a preset or every field; missing {', '.join(missing)}")
        base = None
    return _design(r, "chip", hw.Chip, base, {})


def _system(r: _Reader, chip: hw.Chip) -> hw.System:
    spec = r.table("system", SYSTEM_KEYS)
    name = r.string("system.preset", spec.get("preset", "DGX-H100"), tuple(hw.SYSTEMS))
    return _design(r, "system", hw.System, hw.SYSTEMS[name], {"chip": chip})


def _space(r: _Reader, system: hw.System) -> Space | None:
    spec = r.table("space")
    if not spec:
        return None
    params = []
    for name, entry in spec.items():
        dotted = f"space.{name}"
        if not isinstance(entry, dict):
            raise r.error(dotted, "must be a table {scale = ..., low = ..., high = ...}")
        for key in entry:
            if key not in ("scale", "low", "high", "field"):
                raise r.error(f"{dotted}.{key}", "unknown key; allowed: scale, low, high, field")
        # A hardware field (by the parameter's name, or the field it names) brings its path and
        # its default scale and bounds from the one field table; the entry may override each.
        known = hw.FIELDS.get(name)
        field = r.string(f"{dotted}.field", entry.get("field", known.path(system) if known
                                                       else f"chip.{name}"))
        known = hw.FIELDS.get(field.rsplit(".", 1)[-1])
        default = {"scale": known.scale, "low": known.low, "high": known.high} if known else {}
        scale = r.string(f"{dotted}.scale", entry.get("scale", default.get("scale", "log")),
                         ("linear", "log", "integer"))
        if not all(k in entry or k in default for k in ("low", "high")):
            raise r.error(dotted, "needs both low and high (fields of dse.hardware.FIELDS have "
                                  "defaults)")
        low, high = (r.number(f"{dotted}.{k}", entry[k]) if k in entry else default[k]
                     for k in ("low", "high"))
        try:
            params.append(Param(name, field, low, high, scale))
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise r.error(dotted, str(e)) from None
    try:
        return Space(system, params)
    except ValueError as e:
        raise r.error("space", str(e)) from None


def load_study(path: str | Path) -> Study:
    """Read a TOML config into a `Study` (raises `ConfigError` naming the key and line)."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(path, "<file>", None, f"cannot read: {e.strerror}") from None
    r = _Reader(path, text)
    for key in r.doc:
        if key not in TOP_KEYS:
            raise r.error(key, f"unknown table; allowed: {', '.join(TOP_KEYS)}")
    chip = _chip(r)
    system = _system(r, chip)

    work = r.table("workload", WORKLOAD_KEYS, required=True)
    kind = r.string("workload.kind", work.get("kind", "training"), ("training", "inference"))
    model_name = r.string("workload.model", work.get("model", "gpt3-175b"),
                          (*models.TRANSFORMERS, *models.TRANSFORMERS.aliases))
    model = models.TRANSFORMERS[model_name]
    global_batch = r.integer("workload.global_batch", work.get("global_batch", 1536), lower=1)
    batch = r.number("workload.batch", work.get("batch", 1))
    input_len = r.number("workload.input_len", work.get("input_len", 2048))
    output_len = r.number("workload.output_len", work.get("output_len", 256))
    plan = None
    precision = r.string("workload.precision", work.get("precision", "bf16"))
    if kind == "training":
        # A bad recipe name is an error naming the key, with the recipes.
        _checked(r, "workload.precision", {"precision": "workload.precision"},
                 lambda: models.TrainingPlan(precision=precision))
    # The plan is checked by the models' own rules (the API refuses the same things): its
    # fields when it is built, its fit to the model and the system here.
    if kind == "training" and "plan" in work:
        spec = r.table("workload.plan", PLAN_KEYS)
        values = {k: r.number(f"workload.plan.{k}", v) for k, v in spec.items()}
        keys = {k: f"workload.plan.{k}" for k in spec} | {"global_batch": "workload.global_batch"}
        plan = _checked(r, "workload.plan", keys, lambda: models.TrainingPlan(
            global_batch=float(global_batch), precision=precision, **values))
        _checked(r, "workload.plan", keys,
                 lambda: models.check_training_plan(model, plan, system))
    elif kind == "inference":
        formats = {k: r.string(f"workload.{k}", work[k])
                   for k in ("weights", "activations", "kv_cache") if k in work}
        keys = {k: f"workload.{k}" for k in ("tp", "pp", "batch", "input_len", "output_len",
                                              "weights", "activations", "kv_cache")}
        plan = _checked(r, "workload", keys, lambda: models.InferencePlan(
            tp=r.number("workload.tp", work.get("tp", 8)),
            pp=r.number("workload.pp", work.get("pp", 1)), batch=batch, **formats))
        _checked(r, "workload", keys, lambda: models.check_inference_plan(model, plan, system))
        _checked(r, "workload", keys,
                 lambda: models.check_serve_workload(batch, input_len, output_len))
    metric_names = TRAINING_METRICS if kind == "training" else INFERENCE_METRICS

    objectives = {}
    for name, direction in r.table("objectives").items():
        if name not in metric_names:
            raise r.error(f"objectives.{name}", f"unknown metric; known: {', '.join(metric_names)}")
        objectives[name] = r.string(f"objectives.{name}", direction, ("min", "max"))
    budgets: dict[str, tuple[float | None, float | None]] = {}
    for name, bound in r.table("budgets").items():
        dotted = f"budgets.{name}"
        if name not in metric_names:
            raise r.error(dotted, f"unknown metric; known: {', '.join(metric_names)}")
        if isinstance(bound, dict):
            for key in bound:
                if key not in ("min", "max"):
                    raise r.error(f"{dotted}.{key}", "unknown key; allowed: min, max")
            low = r.number(f"{dotted}.min", bound["min"]) if "min" in bound else None
            high = r.number(f"{dotted}.max", bound["max"]) if "max" in bound else None
        else:
            low, high = None, r.number(dotted, bound)
        budgets[name] = (low, high)

    sweep = r.table("sweep", ("n", "chunk_size", "seed", "path"))
    opt = r.table("optimize", OPTIMIZE_KEYS["multistart"] + OPTIMIZE_KEYS["trace"]
                  + ("method", "n_pilot", "log_objectives", "seed"))
    output = r.table("output", ("dir",))
    output_dir = Path(r.string("output.dir", output.get("dir", "dse-out")))
    _check_writable(r, output_dir)
    return Study(
        path=path, system=system, kind=kind, model=model, global_batch=global_batch, plan=plan,
        batch=batch, input_len=input_len, output_len=output_len, space=_space(r, system),
        objectives=objectives, budgets=budgets,
        sweep_n=r.integer("sweep.n", sweep.get("n", 100_000), lower=1),
        sweep_chunk=r.integer("sweep.chunk_size", sweep.get("chunk_size", 1 << 14), lower=1),
        seed=r.integer("sweep.seed", sweep.get("seed", 0), lower=0),
        sweep_path=(Path(r.string("sweep.path", sweep["path"])) if "path" in sweep else None),
        optimize_options=_optimize_options(r, opt, objectives),
        output_dir=output_dir,
        precision=precision,
    )


def _checked(r: _Reader, where: str, keys: Mapping[str, str], build: Callable[[], Any]) -> Any:
    """`build()`, with a `ValueError` it raises turned into a `ConfigError` at the config key of
    the field it names (`keys`: field -> dotted key; "TrainingPlan.pp" -> "workload.plan.pp"),
    or at `where` when it names none of them."""
    try:
        return build()
    except ValueError as e:
        text = str(e)
        field = next((k for k in keys if f".{k} must" in text), None)
        raise r.error(keys[field] if field else where, text) from None


def _check_writable(r: _Reader, folder: Path) -> None:
    """Fail before any computation when the output folder cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".dse-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise r.error("output.dir", f"cannot write to {str(folder)!r}: {e.strerror or e}") from None


# Keys of [optimize] that belong to one method of `dse.optimize` (the rest serve both).
OPTIMIZE_KEYS = {"multistart": ("n_preferences", "n_starts", "outer_steps", "inner_steps",
                                "learning_rate"),
                 "trace": ("spacing", "max_steps")}


def _optimize_options(r: _Reader, opt: dict, objectives: dict) -> dict[str, Any]:
    """Keyword arguments of `dse.optimize` from the [optimize] table.

    `method` defaults to "trace" (front tracing: far fewer evaluations, benchmarks/pareto_race.py)
    for exactly two objectives and to "multistart" otherwise; `log_objectives` defaults to true
    for the trace (objectives spanning decades are traced at even spacing in log) and false for
    the multistart. A key of the other method is an error, not silently ignored.
    """
    default = "trace" if len(objectives) == 2 else "multistart"
    method = r.string("optimize.method", opt.get("method", default),
                      choices=tuple(OPTIMIZE_KEYS))
    if method == "trace" and len(objectives) != 2:
        raise r.error("optimize.method", f"'trace' needs exactly two [objectives]; got "
                                         f"{len(objectives)}")
    other = next(m for m in OPTIMIZE_KEYS if m != method)
    for key in OPTIMIZE_KEYS[other]:
        if key in opt:
            raise r.error(f"optimize.{key}", f"belongs to method {other!r}; this study uses "
                                             f"{method!r} (set optimize.method to change it)")
    out: dict[str, Any] = {"method": method}
    for key, value in opt.items():
        if key in ("learning_rate", "spacing"):
            out[key] = r.number(f"optimize.{key}", value)
            if not out[key] > 0:
                raise r.error(f"optimize.{key}", f"must be > 0; got {value!r}")
        elif key == "log_objectives":
            if not isinstance(value, bool):
                raise r.error("optimize.log_objectives", f"expected true or false, got "
                                                         f"{value!r}")
            out[key] = value
        elif key != "method":
            out[key] = r.integer(f"optimize.{key}", value)
    out.setdefault("log_objectives", method == "trace")
    return out


def budgets_as_constraints(budgets: Mapping[str, tuple[float | None, float | None]]) -> dict:
    """`{metric: (low, high)}` -> the `sweep` form `{metric: ("<=" | ">=", bound)}`.

    A two-sided budget keeps its upper bound in the sweep (a sweep takes one bound a metric).
    """
    out = {}
    for name, (low, high) in budgets.items():
        out[name] = ("<=", high) if high is not None else (">=", low)
    return out
