"""Offline checks of ``infra/`` (no Kubernetes, Docker or AWS): the helpers of ``tests/infra``.

Each ``check_*`` function returns a list of problems (empty when the object is good), so a test can assert both that
the real manifests pass and that a planted mistake is caught. What is checked:

* KubeRay objects against the ``openAPIV3Schema`` of version ``v1`` of the KubeRay v1.7.0 CRDs in
  ``<repo>/../shared/reference/kuberay-v1.7.0`` made strict (``additionalProperties: false`` on every object schema
  that lists its properties, as kubeconform ``--strict`` does), so a misspelt key fails too;
* core Kubernetes objects with ``kubernetes-validate`` (strict);
* Serve configs with ``ServeDeploySchema`` plus a key check (it ignores unknown keys) and ``AutoscalingConfig``;
* the launcher YAML with Ray's ``prepare_config`` + ``validate_config`` (``ray-schema.json``) plus a key check of the
  EC2 ``node_config``;
* RayJob entrypoints with the project's own CLI parser and config loaders;
* paths against the image layout that ``infra/docker/Dockerfile`` builds, image tags against its tag.

``render_kustomization`` renders the subset of Kustomize the manifests use (``resources``, ``namespace``,
``images``, JSON6902 ``patches`` with a ``kind``/``name`` target) and refuses anything else, so what is validated is
what ``kubectl apply -k`` applies.
"""

from __future__ import annotations

import copy
import functools
import io
import re
import shlex
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
KUBERAY_REF = REPO.parent / "shared" / "reference" / "kuberay-v1.7.0"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
KUBERNETES_VERSION = "1.34"
OVERLAYS = ("small", "large")
#: Keys of the top-level ``metadata`` of an object (ObjectMeta fields a manifest may set).
OBJECT_META_KEYS = {"name", "namespace", "labels", "annotations", "generateName", "finalizers"}
#: EC2 RunInstances parameters a launcher ``node_config`` may use (Ray passes node_config to it unchecked).
EC2_NODE_CONFIG_KEYS = {
    "InstanceType",
    "ImageId",
    "KeyName",
    "SubnetIds",
    "SecurityGroupIds",
    "IamInstanceProfile",
    "BlockDeviceMappings",
    "InstanceMarketOptions",
    "TagSpecifications",
    "Placement",
    "NetworkInterfaces",
    "UserData",
    "CapacityReservationSpecification",
    "MetadataOptions",
    "EbsOptimized",
}


# ------------------------------------------------------------------------------------------------ YAML files


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    """Every document of a YAML file (empty documents dropped)."""
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def yaml_files() -> list[Path]:
    """Every YAML file under ``infra/``."""
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


# ------------------------------------------------------------------------------------------------ kustomize subset

_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
_IMAGE_KEYS = {"name", "newName", "newTag"}
_TARGET_KEYS = {"kind", "name"}


def render_kustomization(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize folder`` produces, for the subset of Kustomize described in the module doc.

    Raises:
        ValueError: a kustomization uses a field this renderer does not implement, or a patch matches nothing.
    """
    kfile = folder / "kustomization.yaml"
    (spec,) = load_yaml_docs(kfile)
    unknown = set(spec) - _KUSTOMIZATION_KEYS
    if unknown:
        raise ValueError(f"{kfile}: fields {sorted(unknown)} are not supported by the offline renderer")
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            docs.extend(render_kustomization(path))
        elif path.is_file():
            docs.extend(load_yaml_docs(path))
        else:
            raise ValueError(f"{kfile}: resource {entry!r} does not exist")
    for image in spec.get("images", []):
        if set(image) - _IMAGE_KEYS or "name" not in image:
            raise ValueError(f"{kfile}: image entry {image} (supported keys {sorted(_IMAGE_KEYS)})")
        for doc in docs:
            for container in iter_containers(doc):
                container["image"] = _retag(container["image"], image)
    for patch in spec.get("patches", []):
        target = patch.get("target", {})
        if set(patch) - {"target", "patch"} or set(target) - _TARGET_KEYS or "patch" not in patch:
            raise ValueError(f"{kfile}: patch {patch} (supported: target {{kind, name}} + inline JSON6902 patch)")
        ops = yaml.safe_load(patch["patch"])
        matched = [
            d
            for d in docs
            if d.get("kind") == target.get("kind", d.get("kind"))
            and d["metadata"]["name"] == target.get("name", d["metadata"]["name"])
        ]
        if not matched:
            raise ValueError(f"{kfile}: patch target {target} matches no resource")
        import jsonpatch

        for i, doc in enumerate(docs):
            if any(doc is m for m in matched):
                docs[i] = jsonpatch.JsonPatch(ops).apply(doc)
    if "namespace" in spec:
        for doc in docs:
            doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def _retag(ref: str, image: dict[str, str]) -> str:
    name, tag = split_image(ref)
    if name != image["name"]:
        return ref
    name = image.get("newName", name)
    tag = image.get("newTag", tag)
    return f"{name}:{tag}" if tag else name


def split_image(ref: str) -> tuple[str, str | None]:
    """``registry/name:tag`` -> (``registry/name``, ``tag``); the tag is None when absent."""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        return ref[: ref.rindex(":")], ref[ref.rindex(":") + 1 :]
    return ref, None


def iter_containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every container (``containers`` / ``initContainers`` items) anywhere in ``node``, as Kustomize finds them."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            yield from iter_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_containers(item)


# ------------------------------------------------------------------------------------------------ KubeRay CRDs


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The strict ``openAPIV3Schema`` of version ``v1`` of KubeRay v1.7.0's CRD for ``kind``.

    Raises:
        FileNotFoundError: the reference CRDs are missing (the tests must fail then, not skip).
    """
    path = KUBERAY_REF / CRD_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the KubeRay v1.7.0 CRDs are expected in <repo>/../shared/reference/kuberay-v1.7.0"
        )
    with open(path, encoding="utf-8") as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strict_schema(version["schema"]["openAPIV3Schema"])


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of an OpenAPI v3 schema that rejects unknown keys: ``additionalProperties: false`` on every object
    schema that lists its properties (unless it preserves unknown fields), and ObjectMeta's keys on ``metadata``."""
    schema = copy.deepcopy(schema)

    def walk(node: Any, key: str | None) -> None:
        if isinstance(node, dict):
            if key == "metadata" and node.get("type") == "object" and "properties" not in node:
                node["properties"] = {k: {} for k in OBJECT_META_KEYS}
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for k, v in node.items():
                if k == "properties" and isinstance(v, dict):
                    for name, sub in v.items():
                        walk(sub, name)
                else:
                    walk(v, None)
        elif isinstance(node, list):
            for item in node:
                walk(item, None)

    walk(schema, None)
    return schema


def _errors(validator: Any, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


@functools.cache
def _crd_validator(kind: str) -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(crd_schema(kind))


def check_kuberay(doc: dict[str, Any]) -> list[str]:
    """Problems of a RayCluster / RayJob / RayService against its strict v1 CRD schema."""
    if doc.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion {doc.get('apiVersion')!r}: expected ray.io/v1"]
    return _errors(_crd_validator(doc["kind"]), doc)


def check_core(doc: dict[str, Any]) -> list[str]:
    """Problems of a core Kubernetes object (Deployment, Service, ConfigMap, ...) per kubernetes-validate, strict."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = "/".join(str(p) for p in err.absolute_path) or "<root>"
        return [f"{doc['kind']}/{doc['metadata'].get('name')}: {path}: {err.message[:300]}"]
    return []


def check_object(doc: dict[str, Any]) -> list[str]:
    """Dispatch: KubeRay kinds to their CRD schema, everything else to kubernetes-validate."""
    return check_kuberay(doc) if doc.get("kind") in CRD_FILES else check_core(doc)


def cluster_specs(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The RayCluster spec inside a RayCluster, RayJob or RayService."""
    spec = doc.get("spec", {})
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}.get(
        doc.get("kind")
    )


# ------------------------------------------------------------------------------------------------ the image layout


@functools.cache
def dockerfile_text(name: str = "Dockerfile") -> str:
    return (INFRA / "docker" / name).read_text(encoding="utf-8")


def image_layout() -> dict[str, Path]:
    """``{absolute path in the image: path in the repo}`` for every ``COPY`` of the Dockerfile's last stage."""
    lines = _instructions(dockerfile_text())
    last_from = max(i for i, (op, _) in enumerate(lines) if op == "FROM")
    workdir = "/"
    layout: dict[str, Path] = {}
    for op, arg in lines[last_from:]:
        if op == "WORKDIR":
            workdir = arg if arg.startswith("/") else f"{workdir.rstrip('/')}/{arg}"
        elif op == "COPY":
            parts = [p for p in shlex.split(arg) if not p.startswith("--")]
            *sources, dest = parts
            base = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest.removeprefix('./')}"
            for src in sources:
                target = base.rstrip("/") + "/" + Path(src).name if dest.endswith("/") or len(sources) > 1 else base
                layout[target.rstrip("/")] = REPO / src
    return layout


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, arg = line.partition(" ")
            out.append((op.upper(), arg.strip()))
    return out


def repo_path_in_image(image_path: str) -> Path | None:
    """The repo file that lands at ``image_path`` in the image, or None when the image has no such file."""
    for dest, src in sorted(image_layout().items(), key=lambda kv: -len(kv[0])):
        if image_path == dest or image_path.startswith(dest + "/"):
            candidate = src / image_path[len(dest) :].lstrip("/") if image_path != dest else src
            return candidate if candidate.exists() else None
    return None


def dockerfile_version() -> str:
    """The version the Dockerfile tags its images with (``ARG SGMG_VERSION``)."""
    match = re.search(r"^ARG SGMG_VERSION=(\S+)$", dockerfile_text(), re.M)
    if not match:
        raise ValueError("infra/docker/Dockerfile: no `ARG SGMG_VERSION=...`")
    return match.group(1)


def built_image_tags() -> set[str]:
    """The ``name:tag`` of every image the Dockerfiles say they build (their ``-t $REGISTRY/...`` lines)."""
    tags = set()
    for name in ("Dockerfile", "mlflow.Dockerfile"):
        tags |= {m.split("/")[-1] for m in re.findall(r"-t \$REGISTRY/(\S+)", dockerfile_text(name))}
    return tags


def check_image(ref: str, allowed: set[str]) -> list[str]:
    """Problems of an image reference: it must be one the Dockerfiles build (any registry), or a pinned third-party
    image from ``allowed``."""
    name, tag = split_image(ref)
    short = f"{name.rsplit('/', 1)[-1]}:{tag}"
    if short in built_image_tags() or ref in allowed:
        return []
    return [f"image {ref!r}: not one the Dockerfiles build ({sorted(built_image_tags())}) nor in {sorted(allowed)}"]


# ------------------------------------------------------------------------------------------------ entrypoints

_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand(text: str, env: dict[str, str]) -> tuple[str, list[str]]:
    """``${VAR}``/``$VAR`` replaced from ``env``; also returns the names ``env`` lacks."""
    missing: list[str] = []

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            missing.append(name)
            return ""
        return env[name]

    return _VAR.sub(sub, text), missing


def check_entrypoint(entrypoint: str, env: dict[str, str]) -> list[str]:
    """Problems of a RayJob entrypoint: it must be one ``sgmg`` command that the project's CLI parser accepts, whose
    variables ``env`` defines, whose ``--config`` file exists in the image, and whose config + overrides load."""
    from sgmg.cli import COMMANDS, build_parser

    text, missing = expand(entrypoint, env)
    if missing:
        return [f"{entrypoint!r}: variables {missing} are not set in the submitter's environment"]
    if any(c in text for c in ";|&><`"):
        return [f"{entrypoint!r}: one plain `sgmg` command expected, no shell operators"]
    argv = shlex.split(text)
    if len(argv) < 2 or argv[0] != "sgmg" or argv[1] not in COMMANDS:
        return [f"{entrypoint!r}: expected `sgmg <command> ...` with a command of {sorted(COMMANDS)}"]
    parser = build_parser(argv[1])
    stderr = io.StringIO()
    try:
        with redirect_stderr(stderr):
            args = parser.parse_args(argv[1:])
    except SystemExit:
        return [f"{entrypoint!r}: the sgmg CLI rejects it: {stderr.getvalue().strip().splitlines()[-1]}"]
    config = getattr(args, "config", None)
    if config is not None:
        repo_config = repo_path_in_image(config) if config.startswith("/") else None
        if repo_config is None:
            return [f"{entrypoint!r}: --config {config} is not a file of the image (absolute path expected)"]
        args.config = str(repo_config)
    return _load_command_config(argv[1], args, entrypoint)


def _load_command_config(command: str, args: Any, entrypoint: str) -> list[str]:
    try:
        if command == "train":
            from pipelines.train_job import load_job

            load_job(args.config, args.overrides)
        elif command == "sweep":
            from pipelines.sweep_config import load_sweep

            load_sweep(args.config, args.overrides)
        elif command == "ingest":
            from pipelines.ingest_cli import load_job as load_ingest_job

            load_ingest_job(args)
    except (FileNotFoundError, ValueError, TypeError) as err:
        return [f"{entrypoint!r}: its config does not load: {err}"]
    return []


def check_runtime_env(text: str) -> list[str]:
    """Problems of a RayJob ``runtimeEnvYAML``: known runtime-env fields only, and ``RuntimeEnv`` accepts it."""
    from ray.runtime_env import RuntimeEnv

    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        return [f"runtimeEnvYAML: a mapping expected, got {type(data).__name__}"]
    unknown = sorted(set(data) - set(RuntimeEnv.known_fields))
    if unknown:
        return [f"runtimeEnvYAML: unknown fields {unknown}"]
    try:
        RuntimeEnv(**data)
    except (TypeError, ValueError) as err:
        return [f"runtimeEnvYAML: {err}"]
    return []


# ------------------------------------------------------------------------------------------------ Serve


def check_serve_config(data: dict[str, Any]) -> list[str]:
    """Problems of a Serve config: the project's own check (``ServeDeploySchema``, its keys, ``AutoscalingConfig``,
    the application's arguments)."""
    from pipelines.serve.settings import serve_config_problems

    return serve_config_problems(data)


# ------------------------------------------------------------------------------------------------ launcher


def check_launcher(config: dict[str, Any]) -> list[str]:
    """Problems of a cluster launcher config: Ray's own validation (``ray-schema.json``) + EC2 node_config keys."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    problems = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        unknown = sorted(set(node_type.get("node_config") or {}) - EC2_NODE_CONFIG_KEYS)
        if unknown:
            problems.append(f"available_node_types.{name}.node_config: unknown EC2 parameters {unknown}")
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except (jsonschema.ValidationError, ValueError, KeyError) as err:
        problems.append(f"Ray's validation: {str(err).splitlines()[0]}")
    return problems


# ------------------------------------------------------------------------------------------------ secrets


def readme_secrets() -> dict[str, set[str]]:
    """``{secret name: keys}`` of every ``kubectl create secret generic NAME --from-literal=KEY=...`` in
    infra/README.md (the runbook creates every Secret the manifests reference)."""
    text = re.sub(r"\\\n", " ", (INFRA / "README.md").read_text(encoding="utf-8"))
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.search(r"kubectl (?:-n \S+ )?create secret generic (\S+)(.*)", line)
        if m:
            out.setdefault(m.group(1), set()).update(re.findall(r"--from-literal=(\w+)=", m.group(2)))
    return out


_SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)", re.I)
_FROM_CONFIG = {"MLFLOW_TRACKING_URI"}


def check_no_inline_secrets(doc: dict[str, Any]) -> list[str]:
    """Credentials and the MLflow URI must come from Secrets/ConfigMaps: no inline ``value`` for such names, and no
    credential-like key in a ConfigMap or a runtime env."""
    problems = []
    for container in iter_containers(doc):
        for env in container.get("env") or []:
            name = env.get("name", "")
            if "value" in env and (_SECRET_NAME.search(name) or name in _FROM_CONFIG):
                problems.append(f"{doc['kind']}/{doc['metadata']['name']}: env {name} is inline; use valueFrom")
    if doc.get("kind") == "ConfigMap":
        bad = sorted(k for k in (doc.get("data") or {}) if _SECRET_NAME.search(k))
        if bad:
            problems.append(f"ConfigMap/{doc['metadata']['name']}: credential-like keys {bad} belong in a Secret")
    if doc.get("kind") == "Secret":
        problems.append(f"Secret/{doc['metadata']['name']}: secrets are created by the runbook, not committed")
    runtime_env = (doc.get("spec") or {}).get("runtimeEnvYAML")
    if runtime_env:
        env_vars = (yaml.safe_load(runtime_env) or {}).get("env_vars") or {}
        bad = sorted(k for k in env_vars if _SECRET_NAME.search(k) or k in _FROM_CONFIG)
        if bad:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: runtimeEnvYAML sets {bad} inline")
    return problems


def secret_refs(node: Any) -> Iterator[tuple[str, str | None, bool]]:
    """Every ``(secret name, key or None, optional)`` referenced by ``secretRef`` / ``secretKeyRef`` in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "secretKeyRef":
                yield value["name"], value["key"], bool(value.get("optional"))
            elif key == "secretRef":
                yield value["name"], None, bool(value.get("optional"))
            else:
                yield from secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from secret_refs(item)


def configmap_refs(node: Any) -> Iterator[str]:
    """Every ConfigMap name referenced by ``configMapRef`` / ``configMapKeyRef``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("configMapRef", "configMapKeyRef"):
                yield value["name"]
            else:
                yield from configmap_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from configmap_refs(item)
