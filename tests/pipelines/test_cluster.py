"""``pipelines.cluster``: what a command passes to ``ray.init`` when it starts its own local Ray."""

from __future__ import annotations

import pytest

from pipelines import cluster


def test_a_local_cluster_names_its_own_dashboard_for_the_state_api() -> None:
    kwargs = cluster._own_state_api({"include_dashboard": True, "runtime_env": {"env_vars": {"A": "1"}}})
    port = kwargs["dashboard_port"]
    assert isinstance(port, int) and port > 0 and kwargs["dashboard_host"] == "127.0.0.1"
    assert kwargs["runtime_env"]["env_vars"] == {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}", "A": "1"}
    assert cluster._own_state_api({"dashboard_port": 8299})["runtime_env"]["env_vars"] == {
        "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:8299"
    }
    assert cluster._own_state_api({"include_dashboard": False}) == {"include_dashboard": False}  # no state API


@pytest.mark.integration
def test_leftover_requests_are_released_and_ray_data_gets_the_cpus_back(ray_cluster) -> None:
    """Two dead Train runs' requests and a dead Data execution's in Ray Data's AutoscalingCoordinator (what Tune
    trials leave behind) hold the cluster's CPUs, so a new Ray Data execution's leftover share has none; releasing them
    gives it the CPUs back, and a live execution that sends its request again gets its share again."""
    import ray
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    coordinator = get_or_create_autoscaling_coordinator()
    cpus = ray.cluster_resources()["CPU"]
    for run in ("dead1", "dead2"):
        ray.get(coordinator.request_resources.remote(f"train-{run}", [{"CPU": cpus / 2}], expire_after_s=180))

    def data_request(name: str) -> None:
        ray.get(coordinator.request_resources.remote(name, [], expire_after_s=180, request_remaining=["CPU"]))

    def data_cpus(name: str) -> float:
        reserved = ray.get(coordinator.get_reserved_resources.remote(name, recompute=True))
        return sum(r.get("CPU", 0.0) for r in reserved.values())

    data_request("data-dead")
    data_request("data-new")
    assert data_cpus("data-new") == 0.0
    for run in ("dead1", "dead2"):  # with the Train leftovers gone, the dead execution still takes its share
        ray.get(coordinator.cancel_request.remote(f"train-{run}"))
    assert data_cpus("data-new") < cpus
    for run in ("dead1", "dead2"):
        ray.get(coordinator.request_resources.remote(f"train-{run}", [{"CPU": cpus / 2}], expire_after_s=180))
    assert sorted(cluster.release_leftover_reservations()) == ["data-dead", "data-new", "train-dead1", "train-dead2"]
    data_request("data-new")  # a live execution sends its request again
    assert data_cpus("data-new") == cpus
    assert cluster.release_leftover_reservations() == ["data-new"]
    assert cluster.release_leftover_reservations() == []
