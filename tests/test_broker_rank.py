"""The broker's pure core on constructed sites and readings: feasibility, live state, ranking."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from gpuhub.broker.choose import SiteState, choose, fits
from gpuhub.broker.config import BrokerConfig, load_config
from gpuhub.broker.live import partition_live
from gpuhub.errors import ConfigError, RequestError
from gpuhub.exporter.readings import NodeGpus, QueueJob, SiteReading
from gpuhub.plan import plan
from gpuhub.registry import load_file
from gpuhub.request import JobRequest
from gpuhub.site import Site

DATA = Path(__file__).parent / "data"
TESTBED = load_file(DATA / "sites" / "testbed.yaml")
TESTBED2 = load_file(DATA / "broker" / "testbed2.yaml")
CONFIG = BrokerConfig(
    gpu_classes={"a100": ["a100", "a100-80g"], "v100": ["v100", "v100-32g"]},
    normalization={"v100": 1.0, "a100": 2.0, "h100": 4.0},
)


def site(name: str, **parts: dict) -> Site:
    return Site.model_validate(
        {"name": name, "scheduler": "slurm", "connection": {"host": f"{name}.example"}, "partitions": parts}
    )


def gpu_part(model: str, per_node: int = 4, mem: float | None = 40, **extra) -> dict:
    return {"partition": model, "gpu_model": model, "gres_type": model, "gpus_per_node": per_node,
            "gpu_memory_gb": mem, "max_walltime": "1-00:00:00", **extra}


def reading(partition: str, kind: str, total: int, used: int, nodes: int = 1, pending: int = 0,
            available: bool = True) -> SiteReading:
    node_list = [NodeGpus(f"n{i}", available, {kind: total}, {kind: used}, (partition,)) for i in range(nodes)]
    jobs = [QueueJob("pending", {kind: pending}, partition)] if pending else []
    return SiteReading(nodes=node_list, jobs=jobs, default_partition=partition)


def req(**fields) -> JobRequest:
    return JobRequest(command=["python", "train.py"], **{"time": "2h", **fields})


A = site("alpha", a100=gpu_part("a100", 8, 80))
V = site("vega", v100=gpu_part("v100", 4, 32))
H = site("hera", h100=gpu_part("h100", 4, 80))
SITES = [A, V, H]


def test_gpu_type_class_and_memory_decide_feasibility():
    fitted = {f.site.name: f for f in fits(SITES, req(gpus=2, gpu_type="a100"), CONFIG)}
    assert fitted["alpha"].feasible and not fitted["vega"].feasible
    assert fitted["vega"].reason() == "no a100 GPU (has v100)"
    fitted = {f.site.name: f for f in fits(SITES, req(gpus=2, gpu_mem="40G"), CONFIG)}
    assert [n for n, f in fitted.items() if f.feasible] == ["alpha", "hera"]
    assert fitted["vega"].reason() == "32 GB GPUs, under the 40GB asked"


def test_equivalence_classes_come_from_the_settings_not_code():
    b = site("beta", big=gpu_part("a100-80g", 8, 80))
    assert fits([b], req(gpus=1, gpu_type="a100"), CONFIG)[0].feasible
    narrow = CONFIG.model_copy(update={"gpu_classes": {}})
    assert not fits([b], req(gpus=1, gpu_type="a100"), narrow)[0].feasible
    assert fits([b], req(gpus=1, gpu_type="any"), narrow)[0].feasible


def test_count_nodes_walltime_and_account_exclude_with_the_planner_reason():
    fitted = fits([V], req(gpus=8, nodes=1), CONFIG)[0]
    assert not fitted.feasible and "8 GPUs per node asked" in fitted.reason()
    fitted = fits([V], req(gpus=1, time="2-00:00:00"), CONFIG)[0]
    assert "over the 1-00:00:00 limit" in fitted.reason()
    strict = Site.model_validate({**V.model_dump(mode="json"), "name": "strict", "account": {"required": True}})
    assert "needs a project" in fits([strict], req(gpus=1), CONFIG)[0].reason()


def test_partition_live_counts_free_queued_and_shape():
    alloc = plan(V, req(gpus=4))
    live = partition_live(reading("v100", "v100", 4, 1, nodes=2, pending=6), alloc)
    assert (live.total, live.free, live.queued, live.fits_now) == (8, 6, 6, False)
    live = partition_live(reading("v100", "v100", 4, 0, nodes=2), alloc)
    assert live.fits_now and live.free == 8
    # a drained node's idle GPUs are not free
    assert not partition_live(reading("v100", "v100", 4, 0, available=False), alloc).fits_now
    # other GPU types on the same nodes do not count
    mixed = SiteReading([NodeGpus("n0", True, {"v100": 4, "a100": 8}, {"v100": 4}, ("v100",))], [], "v100")
    assert partition_live(mixed, alloc).free == 0


def test_free_now_beats_preference_and_cost():
    config = CONFIG.model_copy(update={"prefer": ["alpha"]})
    states = {"alpha": SiteState(reading("a100", "a100", 8, 8, pending=16)),
              "vega": SiteState(reading("v100", "v100", 4, 0))}
    result = choose(fits([A, V], req(gpus=2), config), config, states)
    assert [r.site for r in result.rows] == ["vega", "alpha"]
    assert result.rows[0].chosen and result.rows[0].reasons[0] == "chosen: it can start now, alpha/a100 cannot"


def test_when_all_are_free_preference_then_cost_decide():
    states = {n: SiteState(reading(p, p, 8, 0)) for n, p in [("alpha", "a100"), ("vega", "v100"), ("hera", "h100")]}
    result = choose(fits(SITES, req(gpus=2), CONFIG), CONFIG, states)
    assert [r.site for r in result.rows] == ["vega", "alpha", "hera"]  # 1x < 2x < 4x GPU-hour weight
    assert result.rows[0].reasons[0].startswith("chosen: it costs fewer normalised GPU hours")
    assert result.rows[0].cost == pytest.approx(4.0) and result.rows[2].cost == pytest.approx(16.0)
    config = CONFIG.model_copy(update={"prefer": ["hera"]})
    assert choose(fits(SITES, req(gpus=2), config), config, states).chosen.site == "hera"


def test_expected_start_orders_queued_sites():
    soon, late = datetime(2026, 1, 1, 10), datetime(2026, 1, 2, 10)
    states = {"alpha": SiteState(reading("a100", "a100", 8, 8), starts={"a100": (late, "sbatch --test-only")}),
              "vega": SiteState(reading("v100", "v100", 4, 4), starts={"v100": (soon, "sbatch --test-only")})}
    config = CONFIG.model_copy(update={"prefer": ["alpha"]})
    result = choose(fits([A, V], req(gpus=2), config), config, states)
    assert result.chosen.site == "vega"
    assert "expected to start earlier" in result.chosen.reasons[0]
    assert "expected start 2026-01-01 10:00 (sbatch --test-only)" in result.chosen.reasons


def test_queued_demand_per_gpu_breaks_ties():
    busy = site("busy", v100=gpu_part("v100"))
    states = {"vega": SiteState(reading("v100", "v100", 4, 4, pending=2)),
              "busy": SiteState(reading("v100", "v100", 4, 4, pending=40))}
    result = choose(fits([busy, V], req(gpus=1), CONFIG), CONFIG, states)
    assert result.chosen.site == "vega" and "less queued demand" in result.chosen.reasons[0]


def test_unreachable_refused_and_over_allocation_are_excluded_with_reasons():
    config = CONFIG.model_copy(update={"allocations": {"hera": 3.0}})
    states = {"alpha": SiteState(error="127.0.0.1:2299: connection refused"),
              "vega": SiteState(reading("v100", "v100", 4, 0), refused={"v100": "sbatch: Invalid account"}),
              "hera": SiteState(reading("h100", "h100", 4, 0))}
    result = choose(fits(SITES, req(gpus=1), config), config, states)
    assert result.rows == []
    assert result.excluded == {
        "alpha": "skipped: 127.0.0.1:2299: connection refused",
        "vega": "sbatch: Invalid account",
        "hera": "needs 8.0 normalised GPU-h, 3 left in the allocation",
    }
    with pytest.raises(RequestError, match="no site can run this:\n  alpha: skipped"):
        result.require()


def test_offline_plans_from_config_alone():
    result = choose(fits(SITES, req(gpus=1, gpu_type="any"), CONFIG), CONFIG, None)
    assert not result.live and result.chosen.site == "vega"
    assert all(r.live is None and "no live state: planned from the site file" in r.reasons for r in result.rows)
    assert result.to_json()["chosen"]["site"] == "vega"


def test_testbed_site_files_are_candidates():
    fitted = fits([TESTBED, TESTBED2], req(gpus=2, gpu_type="v100", time="30m"), CONFIG)
    keys = {f.site.name: [a.partition_key for a in f.allocations] for f in fitted}
    assert keys == {"testbed": ["v100"], "testbed2": ["v100", "debug"]}
    fitted = fits([TESTBED2], req(gpus=2, gpu_type="v100", time="2h"), CONFIG)
    assert fitted[0].rejected == {"debug": "walltime 02:00:00 is over the 01:00:00 limit of partition 'debug' "
                                           "on site 'testbed2'"}
    fitted = fits([TESTBED, TESTBED2], req(gpus=2, gpu_type="a100", time="3h"), CONFIG)
    assert [a.partition_key for a in fitted[0].allocations] == ["a100"]  # short is 30 min at most
    assert fitted[0].rejected["short"].startswith("walltime 03:00:00 is over")


def test_settings_layers_and_bad_values(isolated, monkeypatch):
    shipped = load_config()
    assert "mig" in shipped.gpu_classes and shipped.normalization["a100"] == 2.0
    user = isolated / "config" / "broker.yaml"
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text("prefer: [vega]\nnormalization: {h100: 3}\n")
    merged = load_config()
    assert merged.prefer == ["vega"] and merged.normalization == {"v100": 1.0, "a100": 2.0, "h100": 3}
    assert load_config(["alpha"]).prefer == ["alpha"]
    user.write_text("cache_ttl: -1\n")
    with pytest.raises(ConfigError, match=r"broker settings \(.*broker.yaml\): cache_ttl: .*greater than or equal"):
        load_config()




def test_kept_settings_mirror_the_model(isolated):
    from gpuhub.broker.config import BrokerSettings, plain

    assert BrokerSettings._fields == tuple(BrokerConfig.model_fields)
    assert plain(BrokerConfig()) == BrokerSettings()  # the same defaults
    assert plain(CONFIG) == load_config().model_copy(update={n: getattr(CONFIG, n) for n in BrokerSettings._fields})
    assert BrokerSettings().models_for("any") is None and CONFIG.models_for("any") is None
