"""The one table of hardware fields (dse.hardware.FIELDS) and of metrics: complete, consistent
with the Modules' validity ranges, and what tables, plots, sensitivity, configs and the demo read.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import dse
from dse import plot
from dse._demo import KNOBS, chip_space
from dse._format import METRICS, quantity, table, unit_of
from dse._sensitivity import RESOURCES
from dse._study import CHIP_KEYS, SYSTEM_KEYS
from dse.hardware import CHIPS, FIELDS, NETWORKS, SYSTEMS, Chip, Cluster, System
from dse.hardware._chip import CHIP_BOUNDS
from dse.hardware._network import NETWORK_BOUNDS
from dse.hardware._reliability import RELIABILITY_BOUNDS
from dse.hardware._system import SYSTEM_BOUNDS
from dse.hardware._tco import ECONOMICS_BOUNDS

H100 = SYSTEMS["DGX-H100"]
CLUSTER = Cluster(H100.replace(network=NETWORKS["dgx-superpod"]))
BOUNDS = {"Chip": CHIP_BOUNDS, "System": SYSTEM_BOUNDS, "Network": NETWORK_BOUNDS,
          "Reliability": RELIABILITY_BOUNDS, "Economics": ECONOMICS_BOUNDS}


def test_every_continuous_field_is_in_the_table_once():
    # A new field of Chip or System fails here until it has its row (unit, label, bounds...).
    assert {n for n, f in FIELDS.items() if f.owner == "Chip"} == set(CHIP_BOUNDS)
    assert {n for n, f in FIELDS.items() if f.owner == "System"} == set(SYSTEM_BOUNDS)
    for owner in ("Network", "Reliability", "Economics"):
        assert {n for n, f in FIELDS.items() if f.owner == owner} == set(BOUNDS[owner])
    assert all(name == f.name for name, f in FIELDS.items())
    labels = [f.label for f in FIELDS.values()]
    assert len(set(labels)) == len(labels)


@pytest.mark.parametrize("name", list(FIELDS))
def test_default_bounds_are_valid_values_and_sweepable(name):
    f = FIELDS[name]
    # Chip and System: (low, high, zero allowed, low itself allowed); the others: (low, high,
    # low itself allowed).
    lo, hi, *rest = BOUNDS[f.owner][name]
    lo_inclusive = rest[-1]
    assert f.low < f.high <= hi < float("inf")
    assert f.low > lo or (lo_inclusive and f.low == lo)
    assert f.kind in ("compute", "memory", "network", "process", "reliability",
                      "economics") and f.display_scale > 0
    if f.scale == "integer":
        assert f.low == round(f.low) and f.high == round(f.high)
    # A Space over the default range, on a chip and on a system, validates both bounds against
    # the Module (Space does) and samples inside them.
    designs = {"Chip": [CHIPS["H100-SXM"], H100, CLUSTER], "System": [H100, CLUSTER],
               "Network": [CLUSTER.system, CLUSTER]}.get(f.owner, [CLUSTER])
    for design in designs:
        space = dse.Space(design, [dse.Param.from_field(design, name)])
        x = space.sample(64, seed=1)
        assert np.all((x >= f.low) & (x <= f.high))
    with pytest.raises(ValueError, match="field of System"):
        FIELDS["scaleup_size"].path(CHIPS["H100-SXM"])


def test_param_from_field_takes_overrides_and_names_unknown_fields():
    p = dse.Param.from_field(H100, "hbm_bandwidth", high=20e12)
    assert (p.name, p.field, p.low, p.high, p.scale) == (
        "hbm_bandwidth", "chip.hbm_bandwidth", 1e12, 20e12, "log")
    with pytest.raises(ValueError, match="'hbm_speed' is not in dse.hardware.FIELDS"):
        dse.Param.from_field(H100, "hbm_speed")


def test_demo_space_is_the_table_and_the_reference_problem():
    space = chip_space(H100)
    assert space.names == KNOBS
    assert space.fields == tuple(f"chip.{k}" for k in KNOBS)
    # The README's reference problem (examples/h100_gpt3_training.toml) did not move.
    np.testing.assert_array_equal(space.lower, [16 * 2**20, 1e12, 40 * 2**30, 4, 10e9, 65536,
                                                1.0e9])
    np.testing.assert_array_equal(space.upper, [512 * 2**20, 12e12, 288 * 2**30, 36, 100e9,
                                                1048576, 2.2e9])
    assert [p.scale for p in space.params] == ["log"] * 3 + ["integer"] + ["log"] * 2 + [
        "linear"]


def test_config_keys_and_sensitivity_resources_come_from_the_table():
    numbers = [n for n, f in FIELDS.items() if f.owner == "Chip"]
    assert CHIP_KEYS[1:1 + len(numbers)] == tuple(numbers)
    assert set(SYSTEM_KEYS) == {"preset", *SYSTEM_BOUNDS, *(
        f.name for f in dataclasses.fields(System) if f.metadata.get("static"))}
    assert set(CHIP_KEYS) >= {f.name for f in dataclasses.fields(Chip)}
    assert RESOURCES == {n: f.resource for n, f in FIELDS.items() if f.resource}
    assert RESOURCES["hbm_bandwidth"] == "HBM bandwidth" and "node_nm" not in RESOURCES


def test_labels_and_units_for_tables_and_plots():
    assert quantity("chip.mac_units").label == "MAC units"
    assert plot.label("chip.mac_units") == "MAC units"
    assert plot.label("hbm_bandwidth") == "HBM bandwidth [TB/s]"
    assert plot.label("scaleup_latency") == "scale-up latency [µs]"
    assert plot.label("step_time") == "step time [s]" and plot.label("area") == "area [mm²]"
    assert plot.label("cost") == "manufacturing cost [$]"
    assert "not a price" in METRICS["cost"].description
    assert plot.label("tokens_per_s") == "throughput [tokens/s]"
    assert plot.label("my_metric") == "my metric"
    assert plot.label("hbm_bandwidth", {"hbm_bandwidth": "B/s"}) == "HBM bandwidth [B/s]"
    assert unit_of("chip.hbm_bandwidth") == "B/s" and unit_of("power") == "W"
    assert unit_of("unknown") == "" and quantity("unknown") is None
    text = table([{"chip.hbm_bandwidth": 3.35e12, "area": 814.0, "tokens_per_s": 1.5e6}])
    assert "3.35 TB/s" in text and "814 mm²" in text and "1.5 Mtokens/s" in text


def test_plot_shows_a_field_in_its_display_unit():
    data = {"hbm_bandwidth": np.array([1e12, 2e12, 4e12]), "step_time": np.array([3.0, 2.0, 1.5])}
    ax = plot.pareto_front(data, "hbm_bandwidth", "step_time").axes[0]
    assert ax.get_xlabel() == "HBM bandwidth [TB/s]"
    front = [ln for ln in ax.get_lines() if ln.get_label().startswith("Pareto front")][0]
    np.testing.assert_allclose(front.get_xdata(), [1.0, 2.0, 4.0])
