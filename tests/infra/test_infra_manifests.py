"""``infra/`` validated offline: every YAML parses; KubeRay objects pass the strict v1 CRD schemas of KubeRay v1.7.0;
core objects pass kubernetes-validate; Serve configs pass ``ServeDeploySchema``; the launcher passes Ray's own
validation; entrypoints parse with the ``sgmg`` CLI; paths exist in the image; images are the Dockerfile's. The second
half plants one mistake at a time and checks that the matching check catches it."""

from __future__ import annotations

import copy
import re
import tomllib

import infra_checks as ic
import pytest
import yaml


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: ic.render_kustomization(ic.INFRA / "kuberay" / "overlays" / name) for name in ic.OVERLAYS}


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _configmap_env(docs: list[dict], name: str = "sgmg-config") -> dict[str, str]:
    return dict(_one(docs, "ConfigMap", name)["data"])


def _serve_config(docs: list[dict]) -> dict:
    return yaml.safe_load(_one(docs, "RayService")["spec"]["serveConfigV2"])


# ------------------------------------------------------------------------------------------------ the real files


def test_reference_crds_are_present() -> None:
    """Fails (not skips) when ../shared/reference/kuberay-v1.7.0 is missing."""
    for kind in ic.CRD_FILES:
        assert ic.crd_schema(kind)["properties"]["spec"]["additionalProperties"] is False


def test_every_yaml_parses() -> None:
    files = ic.yaml_files()
    assert len(files) >= 12
    for path in files:
        docs = ic.load_yaml_docs(path)
        assert docs, path
        for doc in docs:
            assert isinstance(doc, dict), path


@pytest.mark.parametrize("overlay", ic.OVERLAYS)
def test_overlay_objects_validate(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("RayJob") == 3 and "RayCluster" in kinds and "RayService" in kinds
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap"} <= set(kinds)
    for doc in docs:
        assert ic.check_object(doc) == [], (doc["kind"], doc["metadata"]["name"])
        assert ic.check_no_inline_secrets(doc) == []
        assert doc["metadata"]["namespace"] == "sgmg"


@pytest.mark.parametrize("overlay", ic.OVERLAYS)
def test_jobs_and_service_run_the_raycluster_spec(rendered: dict, overlay: str) -> None:
    """One cluster shape: the RayJobs embed exactly the RayCluster's spec; the RayService its head and GPU group."""
    docs = rendered[overlay]
    cluster = _one(docs, "RayCluster")["spec"]
    for job in (d for d in docs if d["kind"] == "RayJob"):
        assert job["spec"]["rayClusterSpec"] == cluster, job["metadata"]["name"]
        assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
        assert ic.check_runtime_env(job["spec"]["runtimeEnvYAML"]) == []
    service = _one(docs, "RayService")["spec"]["rayClusterConfig"]
    assert (
        service["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
        == (cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"])
    )
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"gpu-workers", "cpu-decode"}
    assert all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in groups.values())
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


@pytest.mark.parametrize("overlay", ic.OVERLAYS)
def test_entrypoints_parse_with_the_cli(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    env = _configmap_env(docs)
    commands = set()
    for job in (d for d in docs if d["kind"] == "RayJob"):
        submitter_env = {
            r for c in ic.iter_containers(job["spec"]["submitterPodTemplate"]) for r in ic.configmap_refs(c)
        }
        assert submitter_env == {"sgmg-config"}, "the submitter's shell expands the entrypoint's variables"
        assert ic.check_entrypoint(job["spec"]["entrypoint"], env) == [], job["metadata"]["name"]
        commands.add(job["spec"]["entrypoint"].split()[1])
    assert commands == {"ingest", "train", "sweep"}


def test_overlay_sizes_follow_the_capacity_plan(rendered: dict) -> None:
    """Small: 8 GPUs, large: 64; decode CPUs >= 1 per GPU (README capacity plan); train uses every GPU."""
    for overlay, gpus in (("small", 8), ("large", 64)):
        docs = rendered[overlay]
        groups = {g["groupName"]: g for g in _one(docs, "RayCluster")["spec"]["workerGroupSpecs"]}
        limits = groups["gpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert groups["gpu-workers"]["maxReplicas"] * int(limits["nvidia.com/gpu"]) == gpus
        decode = groups["cpu-decode"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert groups["cpu-decode"]["maxReplicas"] * int(decode["cpu"]) >= gpus
        train = _one(docs, "RayJob", "sgmg-train")["spec"]["entrypoint"]
        assert f"num_workers={gpus}" in train
        sweep = _one(docs, "RayJob", "sgmg-sweep")["spec"]["entrypoint"]
        trials = int(re.search(r"max_concurrent_trials=(\d+)", sweep).group(1))
        assert trials * int(re.search(r"job.num_workers=(\d+)", sweep).group(1)) == gpus


@pytest.mark.parametrize("overlay", ic.OVERLAYS)
def test_secrets_and_configmaps_referenced_exist(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    created = ic.readme_secrets()
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    refs = list(ic.secret_refs(docs))
    assert refs
    for name, key, _optional in refs:
        assert name in created, f"Secret {name} is not created in infra/README.md"
        assert key is None or key in created[name], f"Secret {name} key {key} not created in infra/README.md"
    assert set(ic.configmap_refs(docs)) <= configmaps
    assert _configmap_env(docs)["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert _one(docs, "Service", "mlflow")["spec"]["ports"][0]["port"] == 5000


def test_mlflow_server_uses_postgres_s3_and_serves_artifacts(rendered: dict) -> None:
    deploy = _one(rendered["small"], "Deployment", "mlflow")
    args = " ".join(deploy["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--backend-store-uri=postgresql://" in args and "--serve-artifacts" in args
    assert _configmap_env(rendered["small"], "mlflow-config")["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")


@pytest.mark.parametrize("overlay", ic.OVERLAYS)
def test_images_are_the_dockerfiles(rendered: dict, overlay: str) -> None:
    version = tomllib.loads((ic.REPO / "pyproject.toml").read_text())["project"]["version"]
    assert ic.dockerfile_version() == version
    mlflow_pin = re.search(r"^mlflow==(\S+)$", (ic.REPO / "requirements.lock").read_text(), re.M).group(1)
    assert ic.built_image_tags() == {f"sgmg:{version}", f"sgmg:{version}-cpu", f"sgmg-mlflow:{mlflow_pin}"}
    assert f"mlflow=={mlflow_pin}" in ic.dockerfile_text("mlflow.Dockerfile")
    for doc in rendered[overlay]:
        for container in ic.iter_containers(doc):
            assert ic.check_image(container["image"], {"postgres:17.6-bookworm"}) == [], container["image"]
            assert container["image"].startswith("registry.example.com/") or container["image"].startswith("postgres")
    cluster = _one(rendered[overlay], "RayCluster")["spec"]
    groups = {g["groupName"]: g["template"]["spec"]["containers"][0]["image"] for g in cluster["workerGroupSpecs"]}
    assert groups["cpu-decode"].endswith(f":{version}-cpu") and groups["gpu-workers"].endswith(f":{version}")


def test_image_layout_holds_the_project() -> None:
    layout = ic.image_layout()
    assert layout["/opt/sgmg/pipelines"] == ic.REPO / "pipelines"
    assert ic.repo_path_in_image("/opt/sgmg/pipelines/configs/train.yaml") == ic.REPO / "pipelines/configs/train.yaml"
    assert ic.repo_path_in_image("/opt/sgmg/pipelines/configs/nope.yaml") is None
    text = ic.dockerfile_text()
    assert re.search(r"^USER ray$", text, re.M), "a non-root user"
    assert not re.search(r"(AWS_SECRET|AWS_ACCESS_KEY|PASSWORD)", text), "no credentials in the image"
    assert "-c requirements.lock" in text


@pytest.mark.parametrize("overlay", ic.OVERLAYS)
def test_serve_config_v2(rendered: dict, overlay: str) -> None:
    config = _serve_config(rendered[overlay])
    assert ic.check_serve_config(config) == []
    (app,) = config["applications"]
    module = app["import_path"].split(":")[0].replace(".", "/")
    assert ic.repo_path_in_image("/opt/sgmg/" + module.split("/")[0]) is not None, "the app's package is in the image"
    model = {d["name"]: d for d in app["deployments"]}["SgMgModel"]
    assert model["ray_actor_options"]["num_gpus"] == 1 and model["user_config"]["precision"] == "bf16"
    gpu_group = _one(rendered[overlay], "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    gpus = gpu_group["maxReplicas"] * int(
        gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert model["autoscaling_config"]["max_replicas"] * model["ray_actor_options"]["num_gpus"] <= gpus


def test_serve_config_matches_pipelines_serve_yaml(rendered: dict) -> None:
    path = ic.REPO / "pipelines" / "configs" / "serve.yaml"
    if not path.exists():
        pytest.skip("pipelines/configs/serve.yaml is not in this tree yet (the Serve issue adds it)")
    serve = yaml.safe_load(path.read_text())
    assert ic.check_serve_config(serve) == []
    ours = _serve_config(rendered["small"])
    assert [a["name"] for a in ours["applications"]] == [a["name"] for a in serve["applications"]]
    for mine, theirs in zip(ours["applications"], serve["applications"], strict=True):
        assert mine["import_path"] == theirs["import_path"]
        assert mine["args"] == theirs["args"]
        assert [d["name"] for d in mine["deployments"]] == [d["name"] for d in theirs["deployments"]]


def test_launcher_passes_rays_validation() -> None:
    (config,) = ic.load_yaml_docs(ic.INFRA / "launcher" / "aws.yaml")
    assert ic.check_launcher(config) == []
    version = ic.dockerfile_version()
    assert ic.check_image(config["docker"]["image"], set()) == []
    assert config["docker"]["image"].endswith(f":{version}")
    worker_image = config["available_node_types"]["cpu_worker"]["docker"]["worker_image"]
    assert worker_image.endswith(f":{version}-cpu")
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_readme_commands_exist() -> None:
    """Every `sgmg ...` line of the runbook parses with the CLI (other commands are kubectl, ray, docker, aws)."""
    from sgmg.cli import COMMANDS

    text = (ic.INFRA / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert blocks
    seen = set()
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            tool = line.split()[0]
            assert tool in {"docker", "kubectl", "helm", "ray", "sgmg", "export", "mkdir", "printf", "curl"}, line
            if tool == "ray" and " -- sgmg " in line:
                line = line[line.index(" -- sgmg ") + 4 :]
                tool = "sgmg"
            if tool == "sgmg" and line.split()[1] in COMMANDS and line.split()[1] in {"ingest", "train", "sweep"}:
                env = {"SGMG_RAW_URI": "s3://b/raw", "SGMG_DATA_URI": "s3://b/sgmg", "MLFLOW_TRACKING_URI": "http://m"}
                assert ic.check_entrypoint(line, env) == [], line
                seen.add(line.split()[1])
    assert seen == {"ingest", "train", "sweep"}


# ------------------------------------------------------------------------------------------------ planted mistakes


def _cluster(rendered: dict) -> dict:
    return copy.deepcopy(_one(rendered["small"], "RayCluster"))


def test_catches_misspelt_crd_keys(rendered: dict) -> None:
    doc = _cluster(rendered)
    group = doc["spec"]["workerGroupSpecs"][0]
    group["minReplica"] = group.pop("minReplicas")
    assert any("minReplica" in p for p in ic.check_kuberay(doc))
    doc = _cluster(rendered)
    doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFroms"] = []
    assert any("envFroms" in p for p in ic.check_kuberay(doc))
    doc = _cluster(rendered)
    doc["metadata"]["lables"] = {}
    assert any("lables" in p for p in ic.check_kuberay(doc))
    job = copy.deepcopy(_one(rendered["small"], "RayJob", "sgmg-train"))
    job["spec"]["shutdownAfterJobFinish"] = True
    assert any("shutdownAfterJobFinish" in p for p in ic.check_kuberay(job))


def test_catches_wrong_types(rendered: dict) -> None:
    doc = _cluster(rendered)
    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    assert any("maxReplicas" in p for p in ic.check_kuberay(doc))
    doc = _cluster(rendered)
    doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "8 cores"
    assert ic.check_kuberay(doc)
    service = copy.deepcopy(_one(rendered["small"], "RayService"))
    service["spec"]["serveConfigV2"] = {"applications": []}
    assert any("serveConfigV2" in p for p in ic.check_kuberay(service))


def test_catches_core_object_mistakes(rendered: dict) -> None:
    deploy = copy.deepcopy(_one(rendered["small"], "Deployment", "mlflow"))
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert any("imagePullPolicyy" in p for p in ic.check_core(deploy))
    service = copy.deepcopy(_one(rendered["small"], "Service", "mlflow"))
    service["spec"]["ports"][0]["port"] = "five thousand"
    assert ic.check_core(service)


def test_catches_inline_credentials(rendered: dict) -> None:
    deploy = copy.deepcopy(_one(rendered["small"], "Deployment", "mlflow"))
    deploy["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"})
    assert ic.check_no_inline_secrets(deploy)
    job = copy.deepcopy(_one(rendered["small"], "RayJob", "sgmg-train"))
    job["spec"]["runtimeEnvYAML"] = "env_vars: {MLFLOW_TRACKING_URI: 'http://mlflow:5000'}\n"
    assert ic.check_no_inline_secrets(job)
    config = copy.deepcopy(_one(rendered["small"], "ConfigMap", "sgmg-config"))
    config["data"]["AWS_SECRET_ACCESS_KEY"] = "x"
    assert ic.check_no_inline_secrets(config)


def test_catches_bad_entrypoints(rendered: dict) -> None:
    env = _configmap_env(rendered["small"])
    train = _one(rendered["small"], "RayJob", "sgmg-train")["spec"]["entrypoint"]
    ingest = _one(rendered["small"], "RayJob", "sgmg-ingest")["spec"]["entrypoint"]
    assert any("rejects" in p for p in ic.check_entrypoint(ingest + " --shards 8", env)), "unknown flag"
    assert any("rejects" in p for p in ic.check_entrypoint(ingest.replace("ref-youtube-vos ", "ytvos ", 1), env))
    assert any("rejects" in p for p in ic.check_entrypoint(train.replace("sgmg train", "sgmg train --gpus 8"), env))
    assert any("load" in p for p in ic.check_entrypoint(train + " num_workerz=8", env)), "unknown override key"
    assert any("load" in p for p in ic.check_entrypoint(train + " num_workers=eight", env)), "wrong override type"
    assert any(
        "not a file of the image" in p for p in ic.check_entrypoint(train.replace("train.yaml", "tran.yaml"), env)
    )
    relative = train.replace("/opt/sgmg/pipelines", "pipelines")
    assert any("not a file of the image" in p for p in ic.check_entrypoint(relative, env))
    assert any("not set" in p for p in ic.check_entrypoint(train.replace("SGMG_DATA_URI", "SGMG_DATA"), env))
    assert any("expected `sgmg" in p for p in ic.check_entrypoint("python -m pipelines.train", env))
    assert any("sgmg" in p for p in ic.check_entrypoint(train + " && rm -rf /", env))


def test_catches_bad_runtime_env() -> None:
    assert ic.check_runtime_env("env_varz: {A: '1'}\n")
    assert ic.check_runtime_env("env_vars: [A]\n")


def test_catches_bad_serve_config(rendered: dict) -> None:
    good = _serve_config(rendered["small"])
    config = copy.deepcopy(good)
    config["applications"][0]["deployments"][0]["num_replica"] = 2
    assert any("num_replica" in p for p in ic.check_serve_config(config))
    config = copy.deepcopy(good)
    config["applications"][0]["deployments"][1]["autoscaling_config"]["max_replicas"] = "four"
    assert ic.check_serve_config(config)
    config = copy.deepcopy(good)
    config["applications"][0]["route_prefix"] = 5
    assert ic.check_serve_config(config)
    config = copy.deepcopy(good)
    config["http_options"]["prot"] = 8000
    assert any("prot" in p for p in ic.check_serve_config(config))


def test_catches_bad_launcher() -> None:
    (good,) = ic.load_yaml_docs(ic.INFRA / "launcher" / "aws.yaml")
    config = copy.deepcopy(good)
    config["available_node_types"]["gpu_worker"]["min_wrkers"] = 0
    assert ic.check_launcher(config)
    config = copy.deepcopy(good)
    config["available_node_types"]["gpu_worker"]["max_workers"] = "eight"
    assert ic.check_launcher(config)
    config = copy.deepcopy(good)
    config["head_node_type"] = "ray.head.default"
    assert ic.check_launcher(config)
    config = copy.deepcopy(good)
    config["available_node_types"]["gpu_worker"]["node_config"]["InstanceTyp"] = "g6e.2xlarge"
    assert any("InstanceTyp" in p for p in ic.check_launcher(config))


def test_catches_wrong_image_tags() -> None:
    assert ic.check_image("registry.example.com/sgmg/sgmg:0.0.9", set())
    assert ic.check_image("registry.example.com/sgmg/sgmg:latest", set())
    assert ic.check_image("rayproject/ray:2.60.0-py311-gpu", set())
    assert ic.check_image("registry.example.com/sgmg/sgmg:0.1.0", set()) == []


def test_renderer_refuses_what_it_does_not_implement(tmp_path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(ValueError, match="configMapGenerator"):
        ic.render_kustomization(tmp_path)
    base = ic.INFRA / "kuberay" / "base"
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{base}]\npatches:\n  - target: {{kind: RayCluster, name: nope}}\n    patch: '[]'\n"
    )
    with pytest.raises(ValueError, match="matches no resource"):
        ic.render_kustomization(tmp_path)


def test_missing_reference_crds_fail(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(ic, "KUBERAY_REF", tmp_path / "kuberay-v1.7.0")
    ic.crd_schema.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="kuberay-v1.7.0"):
            ic.crd_schema("RayCluster")
    finally:
        ic.crd_schema.cache_clear()
