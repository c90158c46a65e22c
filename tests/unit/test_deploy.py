"""``aitune_triton.deploy`` and ``aitune-triton deploy``: the kubernetes and kserve targets generate
schema-valid manifests for a real exported repository (Python-backend models, as the demo's), sized from
the validation record ``check --load`` writes, and refuse bad input without writing anything."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from deploy_schemas import validate_manifest
from google.protobuf import text_format
from repo_helpers import snapshot, tuned_two_spec_net

from aitune_triton import deploy
from aitune_triton.cli import main
from aitune_triton.deployment import (
    DeploymentTarget,
    KServeOptions,
    KubernetesOptions,
    deployment_target_names,
    repository_facts,
)
from aitune_triton.errors import DeploymentError, InvalidArgumentError
from aitune_triton.triton.config import read_model_config
from aitune_triton.triton.exporter import export
from aitune_triton.triton.validation import VALIDATION_FILE, Validation, repository_fingerprint, write_validation

NAME = "test_deploy_net"

# Most tests deploy a repository without a validation record on purpose; the warning is tested once.
pytestmark = pytest.mark.filterwarnings("ignore:repository.*validation record:UserWarning")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deploy")
    export(tuned_two_spec_net(NAME, root), root / "model_repository", show_progress=False)
    return root / "model_repository"


@pytest.fixture
def repository(exported, tmp_path) -> Path:
    return shutil.copytree(exported, tmp_path / "model_repository")


def documents(directory: Path) -> dict[str, list[dict]]:
    """The YAML documents of each manifest a target wrote (``runtime/``, the runtime environment, aside)."""
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(directory.glob("*.yaml"))}


def validated(repository: Path, load_time_s: float = 40.0, peak: int | None = 3 << 30, version: str = "2.51.0") -> None:
    models = tuple(sorted(p.name for p in repository.iterdir() if p.is_dir()))
    write_validation(repository, Validation(version, load_time_s, peak, models, repository_fingerprint(repository)))


def test_facts_without_validation_say_none_and_warn(repository):
    with pytest.warns(UserWarning, match="check --load"):
        facts = repository_facts(repository)
    assert facts.models == (NAME, f"{NAME}.graph_0", f"{NAME}.graph_1")
    assert facts.uses_python_backend and not facts.gpu
    assert facts.artifact_bytes == sum(p.stat().st_size for p in repository.rglob("*") if p.is_file())
    assert (facts.server_version, facts.image, facts.load_time_s, facts.peak_memory_bytes) == (None, None, None, None)


def test_facts_read_the_validation_record(repository):
    validated(repository, load_time_s=12.5, peak=123 << 20)
    facts = repository_facts(repository)
    assert facts.server_version == "2.51.0" and facts.image == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert (facts.load_time_s, facts.peak_memory_bytes) == (12.5, 123 << 20)


def test_a_stale_or_unknown_validation_is_not_trusted(repository):
    write_validation(repository, Validation("2.51.0", 1.0, None, ("other_model",)))
    with pytest.warns(UserWarning, match="now holds"):
        assert repository_facts(repository).load_time_s is None
    validated(repository)
    config = repository / f"{NAME}.graph_0" / "config.pbtxt"
    config.write_text(config.read_text() + "\n# edited\n")
    with pytest.warns(UserWarning, match="repository changed since"):
        assert repository_facts(repository).load_time_s is None
    validated(repository, version="9.99.0")
    with pytest.warns(UserWarning, match="known NGC release"):
        facts = repository_facts(repository)
    assert facts.server_version == "9.99.0" and facts.image is None


def test_kubernetes_manifests_are_valid_and_sized_from_the_measurements(repository, tmp_path):
    validated(repository, load_time_s=40.0, peak=3 << 30)
    out = deploy(repository, "kubernetes", tmp_path / "k8s", KubernetesOptions(replicas=2, pvc="models", monitor="service"))

    files = documents(out)
    assert sorted(files) == ["autoscaler.yaml", "deployment.yaml", "monitor.yaml", "service.yaml"]
    # Python-backend models: their runtime environment goes with the manifests, pinned as exported
    requirements = (out / "runtime" / "requirements.txt").read_text()
    assert "numpy==" in requirements and (out / "runtime" / "Dockerfile").is_file()
    for docs in files.values():
        for document in docs:
            validate_manifest(document)
    deployment = files["deployment.yaml"][0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert container["args"][:2] == ["tritonserver", "--model-repository=/models"]
    assert "--disable-auto-complete-config" in container["args"]
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 2 * 40.0 + 30
    assert container["resources"]["requests"]["memory"] == f"{int(3 * 1024 * 1.25)}Mi"
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"] is True
    assert {v["name"]: v for v in pod["volumes"]}["model-repository"]["persistentVolumeClaim"]["claimName"] == "models"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    service = files["service.yaml"][0]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    autoscaler = files["autoscaler.yaml"][0]
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (2, 4)
    assert "nv_inference_queue_duration_us" in (out / "autoscaler.yaml").read_text()
    assert files["monitor.yaml"][0]["kind"] == "ServiceMonitor"


def test_the_schemas_refuse_what_a_cluster_would(repository, tmp_path):
    """The validators can fail: a misspelt field or a wrong type is refused."""
    out = deploy(repository, "kubernetes", tmp_path / "k8s")
    deployment = documents(out)["deployment.yaml"][0]
    deployment["spec"]["template"]["spec"]["containers"][0]["startupProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(deployment)
    service = deploy(repository, "kserve", tmp_path / "kserve")
    document = documents(service)["inference_service.yaml"][0]
    document["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(document)


def test_unvalidated_repository_uses_the_documented_defaults_and_says_so(repository, tmp_path):
    with pytest.warns(UserWarning, match="check --load"):
        out = deploy(repository, "kubernetes", tmp_path / "k8s", KubernetesOptions(storage_uri="s3://bucket/models"))
    text = (out / "deployment.yaml").read_text()
    assert "DEFAULT" in text and "120 s" in text
    container = documents(out)["deployment.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    assert "--model-repository=s3://bucket/models" in container["args"]
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/dev/shm"]


def test_gpu_instances_get_gpu_limits_and_the_node_selector(repository, tmp_path):
    for config_path in repository.glob("*/config.pbtxt"):
        config = read_model_config(config_path)
        if config.instance_group:
            for group in config.instance_group:
                group.kind = group.KIND_GPU
            config_path.write_text(text_format.MessageToString(config))
    validated(repository)
    selector = {"nvidia.com/gpu.present": "true"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = deploy(repository, "kubernetes", tmp_path / "k8s", KubernetesOptions(gpus=2, node_selector=selector))
        isvc = deploy(repository, "kserve", tmp_path / "kserve", KServeOptions(node_selector=selector))
    pod = documents(out)["deployment.yaml"][0]["spec"]["template"]["spec"]
    validate_manifest(documents(out)["deployment.yaml"][0])
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2 and pod["nodeSelector"] == selector
    predictor = documents(isvc)["inference_service.yaml"][0]["spec"]["predictor"]
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == 1 and predictor["nodeSelector"] == selector


def test_kserve_inference_service_is_valid(repository, tmp_path):
    validated(repository, load_time_s=40.0)
    out = deploy(repository, "kserve", tmp_path / "kserve", KServeOptions(replicas=2, max_replicas=5, pvc="models"))
    (document,) = documents(out)["inference_service.yaml"]
    validate_manifest(document)
    predictor = document["spec"]["predictor"]
    model = predictor["model"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 5)
    assert (model["modelFormat"], model["runtime"], model["storageUri"]) == (
        {"name": "triton"}, "kserve-tritonserver", "pvc://models/")
    assert model["runtimeVersion"] == "24.10-py3"
    assert model["startupProbe"]["failureThreshold"] * model["startupProbe"]["periodSeconds"] >= 110
    assert model["securityContext"]["runAsUser"] == 1000
    out = deploy(repository, "kserve", tmp_path / "s3", KServeOptions(storage_uri="gs://bucket/repo", image="my/triton:1"))
    model = documents(out)["inference_service.yaml"][0]["spec"]["predictor"]["model"]
    assert (model["storageUri"], model["image"]) == ("gs://bucket/repo", "my/triton:1") and "runtimeVersion" not in model


@pytest.mark.parametrize("options, match", [
    (dict(replicas=0), "replicas: expected an integer >= 1, got 0"),
    (dict(replicas=2, max_replicas=1), "max_replicas: expected an integer >= 2"),
    (dict(namespace="Bad_NS"), "namespace: expected a Kubernetes name"),
    (dict(storage_uri="ftp://x/y"), "storage_uri: expected a URI with scheme s3://"),
    (dict(storage_uri="s3://b/r", pvc="models"), "storage_uri and pvc: give one"),
    (dict(monitor="grafana"), "monitor: expected one of"),
])
def test_bad_options_are_refused_naming_the_option(options, match):
    with pytest.raises(InvalidArgumentError, match=match):
        KubernetesOptions(**options)


def test_bad_targets_and_outputs_write_nothing(repository, tmp_path):
    with pytest.raises(InvalidArgumentError, match="target: unknown deployment target 'nomad'; choose one of kubernetes, kserve"):
        deploy(repository, "nomad", tmp_path / "out")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match=f"output_dir: {existing} exists"):
        deploy(repository, "kubernetes", existing)
    assert snapshot(existing) == {"keep.txt": b"mine"}
    assert not (tmp_path / "out").exists()


def test_a_repository_check_refuses_is_not_deployed(repository, tmp_path):
    artifact = next(repository.glob(f"{NAME}.graph_0/1/*.onnx"))
    artifact.write_bytes(artifact.read_bytes()[:-10])
    with pytest.raises(DeploymentError, match="check refuses .* SHA-256 mismatch"):
        deploy(repository, "kubernetes", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_repository"]


def test_a_failing_target_leaves_no_half_written_directory(repository, tmp_path):
    class Failing(DeploymentTarget):
        name = "failing"

        def write(self, repository: Path, facts, output_dir: Path) -> list[Path]:
            (output_dir / "half.yaml").write_text("kind: Deployment\n")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        deploy(repository, Failing(), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_repository"]


def test_cli_deploys_and_refuses_with_the_option_named(repository, tmp_path):
    runner = CliRunner(env={"COLUMNS": "240"})
    validated(repository)
    result = runner.invoke(main, ["deploy", str(repository), "--target", "kubernetes", "-o", str(tmp_path / "k8s"),
                                  "--replicas", "3", "--pvc", "models", "--node-selector", "pool=cpu"])
    assert result.exit_code == 0, result.output
    assert "deployment.yaml" in result.output
    deployment = documents(tmp_path / "k8s")["deployment.yaml"][0]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "cpu"}
    for args, message in [
        (["--target", "nomad"], "--target: unknown deployment target 'nomad'; choose one of kubernetes, kserve"),
        (["--target", "kubernetes", "--replicas", "0"], "replicas: expected an integer >= 1, got 0"),
        (["--target", "kserve", "--monitor", "pod"], "--monitor: not an option of deployment target 'kserve'"),
        (["--target", "kubernetes", "--node-selector", "pool"], "--node-selector: expected LABEL=VALUE"),
    ]:
        result = runner.invoke(main, ["deploy", str(repository), "-o", str(tmp_path / "new"), *args])
        assert result.exit_code == 1 and message in result.output, result.output
    result = runner.invoke(main, ["deploy", str(repository), "-t", "kserve", "-o", str(tmp_path / "k8s")])
    assert result.exit_code == 1 and "exists" in result.output
    assert not (tmp_path / "new").exists()
    assert set(deployment_target_names()) >= {"kubernetes", "kserve"}


def test_the_validation_record_is_a_file_export_and_check_accept(exported, tmp_path):
    """The hidden record is no model: a later export into the repository and check accept it, and the new
    version makes the record stale."""
    repository = shutil.copytree(exported, tmp_path / "model_repository")
    validated(repository)
    assert (repository / VALIDATION_FILE).is_file()
    from aitune_triton.triton.check import check_repository

    assert check_repository(repository).ok
    export(tuned_two_spec_net(NAME + "_again", tmp_path), repository, show_progress=False)
    assert check_repository(repository).ok
    with pytest.warns(UserWarning, match="now holds"):
        assert repository_facts(repository).server_version is None


def test_every_target_warns_when_the_replicas_user_may_not_read_the_repository(repository, tmp_path):
    next(repository.glob("*/config.pbtxt")).chmod(0o600)

    for target in ("kubernetes", "kserve", "compose"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            deploy(repository, target, tmp_path / target)
        unreadable = [str(w.message) for w in caught if "may not read" in str(w.message)]
        assert len(unreadable) == 1, (target, [str(w.message) for w in caught])  # said once, by every target
        assert "config.pbtxt" in unreadable[0] and "chmod -R a+rX" in unreadable[0]


def test_a_python_backend_repository_deployed_on_the_stock_image_is_warned_about(repository, tmp_path):
    with pytest.warns(UserWarning, match=r"image: .*stock Triton image cannot serve.*--image IMAGE"):
        deploy(repository, "kubernetes", tmp_path / "stock")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deploy(repository, "kubernetes", tmp_path / "given", KubernetesOptions(image="registry/minilm:1"))
    assert not [w for w in caught if "stock Triton image" in str(w.message)]
