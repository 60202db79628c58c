"""The fits and checks behind the cluster models (issue 18). Each names its data in `dse.data`.

- `fit_failure_rates`: per-component failure rates from Llama 3's Table 5
  (cluster_failures.csv), the defaults of `dse.hardware.Reliability`;
- `failure_checks`: those rates predicting other published runs (Lablup's B200 cluster,
  BLOOM, OPT-175B) and goodput bounds (Llama 3, MegaScale);
- `fit_chip_price`: `Economics.chip_price_base` / `chip_price_multiplier` from two published
  selling prices (economics.csv);
- `busbw_checks`: the network collectives against NCCL all-reduce bus bandwidth
  (nccl_busbw.csv);
- `network_design_checks`: the fat-tree's switch and cable counts against NVIDIA's DGX
  SuperPOD tables (network_designs.csv).

Run `python -m dse.calibration._cluster_data` to print them all.
"""

from __future__ import annotations

import csv
from pathlib import Path

import jax
import jax.numpy as jnp

from dse.data import data_dir as default_data_dir
from dse.hardware import (
    CHIPS,
    NETWORKS,
    SYSTEMS,
    Cluster,
    Economics,
    Network,
    Reliability,
    cost,
    failure_rates,
    fat_tree,
)
from dse.hardware import units as u
from dse.hardware._reliability import DAY
from dse.hardware._tco import advanced_package_cost
from dse.models import DEFAULT, TRANSFORMERS, all_reduce, checkpoint_bytes, goodput

# Table 5 categories -> the `Reliability` field they set, and the unit count per GPU.
_FIELD = {"accelerator": "accelerator_failure_rate", "hbm": "hbm_failure_rate",
          "host": "host_failure_rate", "nic": "nic_failure_rate", "link": "link_failure_rate",
          "software": "software_failure_rate"}


def _rows(name: str, data_dir=None) -> list[dict[str, str]]:
    folder = default_data_dir() if data_dir is None else Path(data_dir)
    with open(folder / name, newline="") as f:
        return list(csv.DictReader(f))


def fit_failure_rates(data_dir: str | Path | None = None) -> dict[str, float]:
    """Failure rates per component per second (Poisson maximum likelihood: count / exposure)
    from the Llama 3 rows of cluster_failures.csv, on the run's own hardware: 16,384 H100 of
    80 GiB in hosts of 8, the links of its network (`NETWORKS["llama3-roce"]`)."""
    rows = [r for r in _rows("cluster_failures.csv", data_dir)
            if r["source_key"] in ("llama3_table5", "llama3_planned")]
    chips = float(rows[0]["accelerators"])
    seconds = float(rows[0]["duration_days"]) * DAY
    net = NETWORKS["llama3-roce"]
    tree = fat_tree(net, chips)
    exposure = {"accelerator": chips, "hbm": chips * 80.0, "host": chips / float(net.host_chips),
                "nic": chips, "link": float(tree.host_links + tree.fabric_links),
                "software": chips}
    counts = dict.fromkeys(_FIELD, 0.0)
    planned = 0.0
    for r in rows:
        if r["category"] == "maintenance":
            planned += float(r["value"])
        else:
            counts[r["category"]] += float(r["value"])
    out = {_FIELD[k]: counts[k] / (exposure[k] * seconds) for k in _FIELD}
    out["switch_failure_rate"] = 0.0  # Table 5 counts switches with cables (per link)
    out["maintenance_rate"] = planned / seconds
    return out


def _gpu_failures_per_second(reliability: Reliability, chips: float, hbm_gib: float) -> float:
    return chips * float(reliability.accelerator_failure_rate
                         + hbm_gib * reliability.hbm_failure_rate)


def failure_checks(data_dir: str | Path | None = None) -> list[dict]:
    """Llama 3's fitted rates predicting the other runs of cluster_failures.csv.

    **Returns:** one dict per check: `run`, `what`, `predicted`, `published` (low, high),
    `error` (relative to the published value, or to the nearest end of a range; 0 when a bound
    is met), `kind` ("exact", "range", "lower_bound").
    """
    rel = Reliability(**fit_failure_rates(data_dir))
    rows = {(r["source_key"], r["metric"]): r for r in _rows("cluster_failures.csv", data_dir)}
    checks = []

    def add(run, what, predicted, row):
        lo = float(row["value"])
        hi = float(row["value_high"]) if row["value_high"] else lo
        kind = row["value_kind"]
        if kind == "exact":
            error = predicted / lo - 1.0
        elif kind == "range":
            error = 0.0 if lo <= predicted <= hi else (predicted / (lo if predicted < lo
                                                                    else hi) - 1.0)
        else:  # lower bound
            error = min(0.0, predicted / lo - 1.0)
        checks.append({"run": run, "what": what, "predicted": predicted,
                       "published": (lo, hi), "error": error, "kind": kind})

    # GPU failures (accelerator and HBM categories) of Lablup's 504 B200 over 55 days.
    r = rows["lablup_b200", "interruptions"]
    n, days = float(r["accelerators"]), float(r["duration_days"])
    add(r["run"], "GPU failures", _gpu_failures_per_second(rel, n, 180.0) * days * DAY, r)
    # BLOOM: GPU failures per week on 384 A100 80GB.
    r = rows["bloom_176b", "interruptions"]
    n, days = float(r["accelerators"]), float(r["duration_days"])
    add(r["run"], "GPU failures per week", _gpu_failures_per_second(rel, n, 80.0) * days * DAY, r)
    # OPT-175B: hardware restarts on 992 A100 80GB over ~60 days (network: a non-blocking
    # two-tier tree; not described in the paper).
    r = rows["opt_175b", "interruptions"]
    n, days = float(r["accelerators"]), float(r["duration_days"])
    opt_net = Network(tiers=2.0, radix=64.0)
    hw = failure_rates(rel, chips=n, hbm_bytes=80.0 * u.GiB, network=opt_net).hardware
    add(r["run"], "hardware restarts", float(hw) * days * DAY, r)
    # Goodput: MegaScale's 175B run on 12,288 GPUs (Sec. 6.2: "more than 10,000") restarting in
    # its stated <10 min detection plus <15 min catch-up; Llama 3 405B on 16,384 (in-sample).
    for key, chips, model, system, net in (
            ("megascale_prod", 12288.0, "gpt3-175b", "DGX-H100", "megascale"),
            ("llama3_goodput", 16384.0, "llama3-405b", "DGX-H100", "llama3-roce")):
        row = rows[key, "goodput"]
        cluster = Cluster(SYSTEMS[system].replace(network=NETWORKS[net]), reliability=rel)
        g = goodput(cluster, chips=chips,
                    state_bytes=float(checkpoint_bytes(TRANSFORMERS[model])))
        add(row["run"], "goodput", float(g.goodput), row)
    return checks


def fit_chip_price(data_dir: str | Path | None = None) -> dict[str, float]:
    """`chip_price_base` and `chip_price_multiplier`: the line through the H100 and B200
    selling prices of economics.csv against their modelled cost (`cost` + 2.5D package)."""
    prices = {r["item"]: float(r["value"]) for r in _rows("economics.csv", data_dir)
              if r["category"] == "chip_price"}
    h100 = prices["NVIDIA H100 SXM selling price (midpoint of $25000-30000)"]
    b200 = prices["NVIDIA B200 selling price"]
    e = Economics()
    modelled = jax.jit(lambda chip: cost(chip).total + advanced_package_cost(chip, e))
    with jax.enable_x64(True):
        x = [float(modelled(jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), CHIPS[n])))
             for n in ("H100-SXM", "B200")]
    slope = (b200 - h100) / (x[1] - x[0])
    return {"chip_price_base": h100 - slope * x[0], "chip_price_multiplier": slope}


_GPU = {"NVIDIA A100": "A100-80GB", "NVIDIA H100": "H100-SXM"}


def busbw_checks(data_dir: str | Path | None = None, calibration=DEFAULT) -> list[dict]:
    """Modelled NCCL all-reduce bus bandwidth for every row of nccl_busbw.csv with a node count
    and NICs, on a one-switch network (a few nodes under one leaf, non-blocking).

    **Returns:** dicts with `source_key`, `nodes`, `measured`, `modelled` (GB/s), `error`.
    """
    out = []
    for r in _rows("nccl_busbw.csv", data_dir):
        if not r["nodes"] or not r["nics_per_node"] or int(r["nodes"]) < 2:
            continue
        chip = CHIPS[next(v for k, v in _GPU.items() if r["gpu"].startswith(k))]
        per_node = int(r["gpus_per_node"])
        nodes = int(r["nodes"])
        nic = float(r["nics_per_node"]) * float(r["nic_gbps"]) * u.Gbit / per_node
        net = Network(tiers=1.0, radix=64.0, host_chips=float(per_node))
        system = SYSTEMS["DGX-H100"].replace(chip=chip, scaleout_bandwidth=nic,
                                             network=net).with_num_chips(nodes * per_node)
        n = float(r["message_bytes"] or 8 * u.GiB)
        g = float(nodes * per_node)
        t = float(all_reduce(system, n, g, calibration=calibration).time)
        modelled = 2.0 * (g - 1.0) / g * n / t / u.GB
        measured = float(r["busbw_gbs"])
        out.append({"source_key": r["source_key"], "gpu": r["gpu"], "nodes": nodes,
                    "measured": measured, "modelled": modelled,
                    "error": modelled / measured - 1.0})
    return out


def network_design_checks(data_dir: str | Path | None = None) -> list[dict]:
    """Switches and cables of the fat-tree model against the DGX SuperPOD tables.

    **Returns:** dicts with `source_key`, `gpus`, published and modelled `switches` and
    `cables` (all tiers).
    """
    out = []
    for r in _rows("network_designs.csv", data_dir):
        if not r["source_key"].startswith("superpod"):
            continue
        gpus = float(r["gpus"]) if r["source_key"] != "superpod_b300_xdr" else float(
            r["node_leaf_cables"])
        net = Network(tiers=float(r["tiers"]), radix=float(r["switch_radix"]))
        tree = fat_tree(net, gpus)
        switches = sum(float(r[k] or 0) for k in ("leaf_switches", "spine_switches",
                                                  "core_switches"))
        cables = sum(float(r[k] or 0) for k in ("node_leaf_cables", "leaf_spine_cables",
                                                "spine_core_cables"))
        out.append({"source_key": r["source_key"], "gpus": gpus, "switches": switches,
                    "modelled_switches": float(tree.switches), "cables": cables,
                    "modelled_cables": float(tree.host_links + tree.fabric_links)})
    return out


def _main() -> None:  # pragma: no cover - a report for people
    print("failure rates (per unit per second):")
    for k, v in fit_failure_rates().items():
        print(f"  {k} = {v:.6g}")
    print("failure checks:")
    for c in failure_checks():
        print(f"  {c['run']}: {c['what']} predicted {c['predicted']:.3g}, published "
              f"{c['published']} ({c['kind']}), error {c['error']:+.1%}")
    print("chip price:", fit_chip_price())
    print("NCCL all-reduce busbw:")
    for c in busbw_checks():
        print(f"  {c['source_key']} {c['gpu']} x{c['nodes']} nodes: measured "
              f"{c['measured']:.0f}, modelled {c['modelled']:.0f} GB/s ({c['error']:+.1%})")
    print("DGX SuperPOD switches / cables:")
    for c in network_design_checks():
        print(f"  {c['source_key']} {c['gpus']:.0f} GPUs: switches {c['switches']:.0f} vs "
              f"{c['modelled_switches']:.0f}, cables {c['cables']:.0f} vs "
              f"{c['modelled_cables']:.0f}")


if __name__ == "__main__":  # pragma: no cover
    _main()
