"""dse.plot: every figure has labelled axes with units, the right scales, and writes PNG / SVG."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

import dse
from dse import plot
from dse.hardware import CHIPS, area, power
from dse.models import attention, elementwise, gemm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _has_unit(text: str) -> bool:
    return "[" in text and text.rstrip().endswith("]") and len(text.split("[")[-1]) > 1


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def _workload(chip):
    return {"time": gemm(chip, 4096.0, 12288.0, 12288.0).time
            + 20.0 * gemm(chip, 16.0, 12288.0, 12288.0).time,
            "area": area(chip).total, "power": power(chip).total}


@pytest.fixture(scope="module")
def sweep_result():
    space = dse.Space(CHIPS["H100-SXM"], {"mac_units": ("log", 2e4, 1e6),
                                          "hbm_bandwidth": ("log", 5e11, 1e13)})
    return dse.sweep(_workload, space, 1024, constraints={"area": ("<=", 826.0)},
                     progress=False)


def test_pareto_front(sweep_result, tmp_path):
    h100 = {k: float(v) for k, v in _workload(CHIPS["H100-SXM"]).items()}
    a100 = {k: float(v) for k, v in _workload(CHIPS["A100-80GB"]).items()}
    fig = plot.pareto_front(sweep_result, "area", "time",
                            presets={"H100-SXM": h100, "A100": (a100["area"], a100["time"])},
                            budgets="area <= 826 mm²", path=tmp_path / "front.png")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "area [mm²]" and ax.get_ylabel() == "time [s]"
    # Time spans more than a decade over this space: log axis; area spans less: linear.
    t = sweep_result["time"]
    assert (t.max() / t.min() > 10) == (ax.get_yscale() == "log")
    a = np.concatenate([sweep_result["area"], [h100["area"], a100["area"]]])
    assert (a.max() / a.min() > 10) == (ax.get_xscale() == "log")
    # The front drawn is the feasible non-dominated set.
    mask = dse.pareto_mask(np.stack([sweep_result["area"], t], 1), "min",
                           sweep_result.feasible)
    front_line = [ln for ln in ax.get_lines() if ln.get_label().startswith("Pareto front")][0]
    assert len(front_line.get_xdata()) == int(mask.sum())
    assert {tx.get_text() for tx in ax.texts} == {"H100-SXM", "A100"}
    _check_png(tmp_path / "front.png")
    plot.save(fig, tmp_path / "front.svg")
    assert (tmp_path / "front.svg").read_text().lstrip().startswith("<?xml")


def test_pareto_front_from_dict_and_bad_column():
    data = {"cost": np.array([1.0, 2.0, 3.0]), "speed": np.array([1.0, 3.0, 2.0])}
    fig = plot.pareto_front(data, "cost", "speed", directions=("min", "max"),
                            units={"speed": "tokens/s"})
    ax = fig.axes[0]
    assert ax.get_ylabel() == "speed [tokens/s]" and ax.get_xlabel() == "manufacturing cost [$]"
    front_line = [ln for ln in ax.get_lines() if ln.get_label().startswith("Pareto front")][0]
    np.testing.assert_array_equal(front_line.get_xdata(), [1.0, 2.0])
    with pytest.raises(ValueError, match="no column 'power'"):
        plot.pareto_front(data, "cost", "power")


def test_sensitivity_bars(tmp_path):
    res = dse.sensitivity(_workload, CHIPS["H100-SXM"].replace(hbm_bandwidth=5e11))
    fig = plot.sensitivity_bars(res, "time", top=5, path=tmp_path / "sens.png")
    ax = fig.axes[0]
    assert _has_unit(ax.get_xlabel()) and "elasticity" in ax.get_xlabel()
    assert "_" not in ax.get_xlabel() + ax.get_title()  # words, not internal names
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "HBM bandwidth"  # the top bar is the largest effect, by its label
    assert "binding resource = HBM bandwidth" in ax.get_title()
    # Only fields that move the metric are drawn.
    assert len(labels) == int(np.sum(np.abs(res.elasticity["time"]) > 1e-4).clip(max=5))
    _check_png(tmp_path / "sens.png")


def test_roofline_places_ops(tmp_path):
    chip = CHIPS["H100-SXM"]
    ops = {"GEMM 4096³": gemm(chip, 4096.0, 4096.0, 4096.0),
           "decode GEMM": gemm(chip, 16.0, 12288.0, 12288.0),
           "layernorm": elementwise(chip, 4096 * 12288.0, flops_per_element=7.0),
           "attention": attention(chip, 8.0, 96.0, 96.0, 2048.0, 2048.0, 128.0)}
    fig = plot.roofline(chip, ops, path=tmp_path / "roof.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "arithmetic intensity [FLOP/byte of HBM traffic]"
    assert ax.get_ylabel() == "attained throughput [TFLOP/s]"
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    ridge = [ln for ln in ax.get_lines() if ln.get_label().startswith("ridge")][0]
    np.testing.assert_allclose(ridge.get_xdata()[0],
                               float(chip.peak_flops) / float(chip.hbm_bandwidth), rtol=1e-6)
    points = ax.collections
    assert len(points) == len(ops)
    for coll, op in zip(points, ops.values(), strict=True):
        x, y = coll.get_offsets()[0]
        np.testing.assert_allclose(x, float(op.flops) / float(op.hbm_bytes), rtol=1e-5)
        np.testing.assert_allclose(y, float(op.flops) / float(op.time) / 1e12, rtol=1e-5)
        # Nothing sits above the roof.
        assert y * 1e12 <= min(float(chip.peak_flops), float(chip.hbm_bandwidth) * x) * 1.0001
    _check_png(tmp_path / "roof.png")


def test_breakdown_stacks_sum_to_the_total(tmp_path):
    chips = {n: CHIPS[n] for n in ("A100-80GB", "H100-SXM", "B200")}
    reports = {n: area(c) for n, c in chips.items()}
    fig = plot.breakdown(reports, path=tmp_path / "area.png")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "area [mm²]"
    # The top of each stack is the report's total (blocks sum to the total).
    tops = np.zeros(len(chips))
    for rect in ax.patches:
        i = int(round(rect.get_x() + rect.get_width() / 2))
        tops[i] = max(tops[i], rect.get_y() + rect.get_height())
    np.testing.assert_allclose(tops, [float(r.total) for r in reports.values()], rtol=1e-5)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(chips)
    # The legend names the blocks in words, never internal names.
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "HBM PHY" in legend and "SRAM" in legend
    assert not any("_" in t or "." in t for t in legend)
    fig_p = plot.breakdown({n: power(c) for n, c in chips.items()})
    assert fig_p.axes[0].get_ylabel() == "power [W]"
    fig_d = plot.breakdown({"a": {"x": 1.0, "y": 2.0}}, quantity="step_time")
    assert fig_d.axes[0].get_ylabel() == "step time [s]"
    _check_png(tmp_path / "area.png")
    with pytest.raises(ValueError, match="cannot break down"):
        plot.breakdown({"a": 3.0})


def test_roadmap_lines(tmp_path):
    res = dse.roadmap(_workload, CHIPS["A100-80GB"], metric="time",
                      steps=[(5.0, "HBM3"), (2.0, "HBM4")])
    fig = plot.roadmap(res, ["time", "area"], path=tmp_path / "roadmap.png")
    ax_t, ax_a = fig.axes
    assert ax_t.get_ylabel() == "time [s]" and ax_a.get_ylabel() == "area [mm²]"
    assert _has_unit(ax_a.get_xlabel())
    assert [t.get_text() for t in ax_a.get_xticklabels()] == ["N5\nHBM3", "N2\nHBM4"]
    # The extrapolated step (N2) is shaded, the others not.
    shaded = [p for p in ax_t.patches]
    assert len(shaded) == 1
    _check_png(tmp_path / "roadmap.png")


def test_no_pyplot_state_and_bad_suffix(tmp_path):
    backend = matplotlib.get_backend()
    fig = plot.pareto_front({"cost": [1.0, 2.0], "time": [2.0, 1.0]}, "cost", "time")
    assert matplotlib.get_backend() == backend
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        plot.save(fig, tmp_path / "front.jpg")


def test_pareto_front_of_a_front_only_sweep_with_a_region(sweep_result):
    space = dse.Space(CHIPS["H100-SXM"], {"mac_units": ("log", 2e4, 1e6),
                                          "hbm_bandwidth": ("log", 5e11, 1e13)})
    front_only = dse.sweep(_workload, space, 4096, constraints={"area": ("<=", 826.0)},
                           directions={"area": "min", "time": "min"}, keep="pareto",
                           progress=False)
    fig = plot.pareto_front(front_only, "area", "time", region=sweep_result)
    ax = fig.axes[0]
    labels = [c.get_label() for c in ax.collections]
    # The region (1,024 rows) is drawn as the cloud; the front comes from the 4,096-point sweep.
    n_feasible = int(sweep_result.feasible.sum())
    assert f"feasible ({n_feasible:,})" in labels
    front_line = [ln for ln in ax.get_lines() if ln.get_label().startswith("Pareto front")][0]
    assert len(front_line.get_xdata()) == int(front_only.feasible.sum())
    with pytest.raises(ValueError, match="region has no column 'time'"):
        plot.pareto_front(front_only, "area", "time", region={"area": [1.0]})


def test_front_of_infeasible_designs_is_labelled_so():
    data = {"cost": np.array([1.0, 2.0, 3.0]), "time": np.array([3.0, 1.0, 2.0]),
            "feasible": np.zeros(3, bool)}
    ax = plot.pareto_front(data, "cost", "time").axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert "front (none feasible) (2)" in labels
