"""``pipelines.cluster``: what a command passes to ``ray.init`` when it starts its own local Ray."""

from __future__ import annotations

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
