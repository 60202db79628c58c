"""The `dse` command line on the example configs, and one-line errors for bad configs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from helpers import REPO

from dse._study import load_study
from dse.cli import EXIT_BAD_INPUT, main
from dse.hardware import FIELDS

EXAMPLE = REPO / "examples" / "h100_gpt3_training.toml"
INFERENCE = REPO / "examples" / "h100_llama70b_inference.toml"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _small(tmp_path, source=EXAMPLE, **replace):
    """A copy of an example config with some lines replaced (keeps the tests quick)."""
    text = source.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / source.name
    path.write_text(text)
    return path


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "dse.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("demo", "evaluate", "sweep", "optimize", "sensitivity"):
        assert command in out


def test_evaluate_training_prints_metrics_and_breakdowns(workdir, capsys):
    assert main(["evaluate", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "step_time" in out and "area by block" in out and "step time by component" in out
    assert "status: ok" in out and "plan status: ok" in out
    assert "manufacturing cost per chip" in out and "not a price" in out
    # The model has no static power: the power table does not print a 0 W column for it.
    power_table = out.split("power by block")[1].split("\n\n")[0]
    assert "(not shown, 0 here: vector, static)" in power_table
    assert "static" not in power_table.splitlines()[1]
    csv = workdir / "dse-out" / "h100_gpt3" / "evaluate.csv"
    header, values = csv.read_text().splitlines()[:2]
    row = dict(zip(header.split(","), values.split(","), strict=True))
    # Power at peak activity of H100 and a step time of seconds: real numbers.
    assert 500 < float(row["power"]) < 1000 and 1 < float(row["step_time"]) < 30
    assert row["status"] == "ok" and float(row["reason"]) == 0.0


def test_evaluate_inference(workdir, capsys):
    assert main(["evaluate", str(INFERENCE)]) == 0
    assert "tpot" in capsys.readouterr().out


def test_sweep_writes_table_front_and_plot(workdir, capsys):
    assert main(["sweep", str(EXAMPLE), "--n", "4096", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "4096 points" in out
    folder = workdir / "dse-out" / "h100_gpt3"
    assert (folder / "sweep_front.csv").stat().st_size > 0
    assert (folder / "sweep.csv").read_text().count("\n") == 4097
    assert (folder / "pareto.png").stat().st_size > 10_000


def test_sweep_resumes_and_refuses_to_resume_another_study(workdir, capsys):
    assert main(["sweep", str(EXAMPLE), "--n", "256", "--quiet", "--resume"]) == 0
    out = capsys.readouterr().out
    state = workdir / "dse-out" / "h100_gpt3" / "sweep-state"
    assert f"sweep state in {state.relative_to(workdir)}" in out
    assert (state / "manifest.json").exists() and len(list(state.glob("chunk_*.npz"))) == 1
    # The same config with another model: the saved points answer another question.
    config = _small(workdir, **{'model = "gpt3-175b"': 'model = "gpt-1.7b"',
                                "tp = 8\npp = 8": "tp = 8\npp = 4", "dp = 16": "dp = 32"})
    assert main(["sweep", str(config), "--n", "256", "--quiet", "--resume"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "holds a different sweep (differs in ['objective (what is computed" in err


def _front_of(workdir):
    front = (workdir / "dse-out" / "h100_gpt3" / "optimize_front.csv").read_text().splitlines()
    assert len(front) >= 2 and "feasible" in front[0]
    assert all(line.split(",")[front[0].split(",").index("feasible")] == "True"
               for line in front[1:])
    return front


def test_optimize_returns_a_feasible_front(workdir, capsys):
    # The example traces its two-objective front; a coarse spacing keeps the test quick.
    config = _small(workdir, **{"spacing = 0.05": "spacing = 0.2",
                                "max_steps = 200": "max_steps = 12"})
    assert main(["optimize", str(config), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ok: \d+ designs on the feasible front", out) and "trace:" in out
    _front_of(workdir)


def test_optimize_multistart_from_the_config(workdir, capsys):
    config = _small(workdir, **{'method = "trace"\nspacing = 0.05': 'method = "multistart"\n'
                                'n_preferences = 4\nn_starts = 1\nouter_steps = 2\n'
                                'inner_steps = 10', "max_steps = 200\n": ""})
    assert main(["optimize", str(config), "--quiet"]) == 0
    assert re.search(r"ok: \d+ designs on the feasible front", capsys.readouterr().out)
    _front_of(workdir)


@pytest.mark.parametrize(("replace", "key", "message"), [
    ({"spacing = 0.05": "spacing = 0.05\nn_starts = 2"}, "optimize.n_starts",
     "belongs to method 'multistart'"),
    ({'method = "trace"': 'method = "annealing"'}, "optimize.method", "unknown value"),
    ({"spacing = 0.05": "spacing = -1"}, "optimize.spacing", "must be > 0"),
    ({'step_time = "min"': 'step_time = "min"\npower = "min"'}, "optimize.method",
     "needs exactly two"),
])
def test_bad_optimize_table_is_one_line_exit_2(replace, key, message, workdir, capsys):
    config = _small(workdir, **replace)
    assert main(["optimize", str(config), "--quiet"]) == EXIT_BAD_INPUT
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and key in line and message in line, line


def test_sensitivity_ranks_fields(workdir, capsys):
    assert main(["sensitivity", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "binding resource" in out and "chip.mac_units" in out
    assert (workdir / "dse-out" / "h100_gpt3" / "sensitivity_step_time.png").exists()
    # Ranked by the size of the effect, |elasticity|, whatever each field costs in area; every
    # chip field of the table is there.
    import pandas as pd

    ranked = pd.read_csv(workdir / "dse-out" / "h100_gpt3" / "sensitivity_step_time.csv")
    gain = ranked["gain"].fillna(-1.0).to_numpy()
    assert (gain[:-1] >= gain[1:]).all() and "price" in ranked.columns
    assert set(ranked["field"]) == {f"chip.{n}" for n, f in FIELDS.items() if f.owner == "Chip"}


BAD_CONFIGS = {
    "unknown key": ({"[chip]\n": "[chip]\nsram_size = 5\n"}, "chip.sram_size", "unknown key"),
    "wrong type": ({"global_batch = 1536": 'global_batch = "many"'}, "workload.global_batch",
                   "expected an integer"),
    "negative bandwidth": ({'preset = "H100-SXM"': 'preset = "H100-SXM"\nhbm_bandwidth = -3'},
                           "chip.hbm_bandwidth", "must be finite"),
    "unknown preset": ({'preset = "H100-SXM"': 'preset = "H300"'}, "chip.preset",
                       "unknown value 'H300'"),
    "unknown table": ({"[sweep]": "[sweeep]"}, "sweeep", "unknown table"),
    "bad unit": ({'low = "16 MiB"': 'low = "16 furlongs"'}, "space.sram_bytes.low",
                 "cannot read"),
    "unknown metric": ({'step_time = "min"': 'latency = "min"'}, "objectives.latency",
                       "unknown metric"),
    "toml syntax": ({"[workload]": "[workload"}, "<toml>", ""),
    "plan uses part of the system": ({"dp = 16": "dp = 8"}, "workload.plan",
                                     "tp * cp * pp * dp must be the system's 1024 chips "
                                     "(System.num_chips); got 512"),
    "batch does not split": ({"global_batch = 1536": "global_batch = 1000"},
                             "workload.global_batch", "TrainingPlan.global_batch must be a "
                             "multiple of dp * microbatch_size = 16 (whole micro-batches per "
                             "replica); got 1000"),
    "pipeline does not divide the layers": ({"pp = 8\ndp = 16": "pp = 64\ndp = 2"},
                                            "workload.plan.pp", "TrainingPlan.pp must be a "
                                            "divisor of the model's 96 layers; got 64"),
    "fractional plan": ({"tp = 8\n": "tp = 8.5\n"}, "workload.plan.tp",
                        "TrainingPlan.tp must be a whole number in [1, 16777216]; got 8.5"),
    "half a switch": ({"dp_overlap = 1": "dp_overlap = 1\nep_hierarchical = 0.5"},
                      "workload.plan.ep_hierarchical",
                      "TrainingPlan.ep_hierarchical must be a whole number in [0, 1]; got 0.5"),
    "negative seed": ({"seed = 0": "seed = -1"}, "sweep.seed",
                      "must be an integer >= 0; got -1"),
    "unwritable output": ({'dir = "dse-out/h100_gpt3"': 'dir = "/proc/dse-out"'}, "output.dir",
                          "cannot write to '/proc/dse-out'"),
    "chip with HBM but no bandwidth": (
        {'preset = "H100-SXM"': 'preset = "H100-SXM"\nhbm_bandwidth = 0'}, "chip.hbm_bandwidth",
        "Chip.hbm_bandwidth and Chip.hbm_bytes must both be > 0 (a chip with HBM) or both 0"),
    "SRAM beyond a wafer": ({'preset = "H100-SXM"': 'preset = "H100-SXM"\nsram_bytes = 1e30'},
                            "chip.sram_bytes", "Chip.sram_bytes must be finite and in [1024, "
                            "1.09951e+12]; got 1e+30"),
}


def test_every_numeric_plan_field_can_be_set_from_a_config(workdir):
    from dataclasses import fields

    from dse._study import PLAN_KEYS, load_study
    from dse.models import TrainingPlan

    numeric = {f.name for f in fields(TrainingPlan) if not f.metadata.get("static")}
    assert set(PLAN_KEYS) == numeric - {"global_batch"}
    config = _small(workdir, **{"dp_overlap = 1": "dp_overlap = 1\ntp_overlap = 1\n"
                                                 "ep_hierarchical = 1\nactivation_offload = 0.25"})
    plan = load_study(config).plan
    assert (float(plan.tp_overlap), float(plan.ep_hierarchical),
            float(plan.activation_offload)) == (1.0, 1.0, 0.25)


@pytest.mark.parametrize("case", BAD_CONFIGS)
@pytest.mark.parametrize("command", ["evaluate", "sweep"])
def test_bad_config_is_one_line_naming_key_exit_2(case, command, workdir, capsys):
    replace, key, message = BAD_CONFIGS[case]
    config = _small(workdir, **replace)
    assert main([command, str(config)]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert key in lines[0] and message in lines[0]
    assert re.search(rf"{re.escape(config.name)}:\d+: ", lines[0]), lines[0]
    assert captured.out == ""


def test_bad_config_from_the_shell_has_no_traceback(workdir):
    config = _small(workdir, **BAD_CONFIGS["negative bandwidth"][0])
    run = subprocess.run([sys.executable, "-m", "dse.cli", "optimize", str(config)],
                         capture_output=True, text=True, cwd=workdir)
    assert run.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "chip.hbm_bandwidth" in run.stderr


def test_missing_file_is_exit_2(workdir, capsys):
    assert main(["evaluate", "no-such.toml"]) == EXIT_BAD_INPUT
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_and_writes_its_plots(workdir, capsys):
    assert main(["demo", "--quiet", "--points", "65536", "--out", str(workdir / "demo")]) == 0
    out = capsys.readouterr().out
    for heading in ("best parallel plan", "Sweep of 65,536", "Gradient search",
                    "What to improve next"):
        assert heading in out
    for name in ("pareto.png", "sensitivity.png", "step_breakdown.png", "area_breakdown.png"):
        assert (workdir / "demo" / name).stat().st_size > 10_000
    assert shutil.which("dse") is not None


def test_space_entry_takes_its_defaults_from_the_field_table(workdir):
    # A knob of dse.hardware.FIELDS needs no bounds: scale, low and high come from the table,
    # and an entry may override any of them.
    config = _small(workdir, **{
        'hbm_bandwidth = { scale = "log", low = "1 TB/s", high = "12 TB/s" }':
            "hbm_bandwidth = {}\nscaleout_latency = {}",
        'link_count = { scale = "integer", low = 4, high = 36 }':
            'link_count = { high = 48 }'})
    space = load_study(config).space
    params = {p.name: p for p in space.params}
    f = FIELDS["hbm_bandwidth"]
    assert (params["hbm_bandwidth"].field, params["hbm_bandwidth"].low,
            params["hbm_bandwidth"].high, params["hbm_bandwidth"].scale) == (
        "chip.hbm_bandwidth", f.low, f.high, f.scale)
    assert params["scaleout_latency"].field == "scaleout_latency"
    assert (params["link_count"].low, params["link_count"].high,
            params["link_count"].scale) == (4, 48, "integer")
