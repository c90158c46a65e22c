"""The compose deployment target on a real exported repository: the compose file is valid against the
Compose specification's JSON schema (shipped by check-jsonschema), the nginx configuration passes
``nginx -t`` where nginx is installed, and bad options are refused by name."""

from __future__ import annotations

import json
import shutil
from importlib import resources

import pytest
import torch
import yaml
from repo_helpers import fast_onnxruntime

import aitune_triton
from aitune_triton.deployment import ComposeOptions, ComposeTarget, deployment_target, deployment_target_names
from aitune_triton.deployment.compose import (
    UNMEASURED_START_PERIOD_S,
    healthcheck_start_period_s,
    server_command,
    unreadable_by_others,
)
from aitune_triton.deployment.nginx import nginx_binary, nginx_check, nginx_config
from aitune_triton.errors import ArgumentTypeError, InvalidArgumentError
from nets import TwoInputNet

NO_NGINX = "nginx is not installed here (Debian: apt-get install nginx-light); the nginx -t checks need its binary"


def compose_schema() -> dict:
    """The Compose specification's JSON schema as vendored by check-jsonschema."""
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("compose")
    torch.manual_seed(0)
    module = aitune_triton.Module(TwoInputNet().eval(), name="compose_net", strategy=fast_onnxruntime(), cache_dir=root / "cache")
    for batch in (1, 3):
        module(torch.randn(batch, 8))
    module.tune()
    aitune_triton.export(module, root / "model_repository", show_progress=False)
    return root / "model_repository"


def test_the_compose_target_is_registered():
    assert "compose" in deployment_target_names()
    assert deployment_target("compose") is ComposeTarget
    with pytest.raises(ArgumentTypeError, match="options: expected ComposeOptions"):
        ComposeTarget({"replicas": 2})


def test_the_compose_file_is_valid_against_the_compose_specification(repository, tmp_path):
    import jsonschema

    written = ComposeTarget(ComposeOptions(replicas=3, http_port=9000, grpc_port=9001)).generate(repository, tmp_path / "out")
    assert written == [tmp_path / "out" / "compose.yaml", tmp_path / "out" / "nginx.conf"]
    document = yaml.safe_load(written[0].read_text())
    jsonschema.Draft202012Validator(compose_schema()).validate(document)

    services = document["services"]
    replicas = ["triton-1", "triton-2", "triton-3"]
    assert list(services) == [*replicas, "nginx"]
    for name in replicas:
        replica = services[name]
        assert replica["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"  # server 2.51, the embedded one
        assert replica["command"] == server_command()
        assert "--disable-auto-complete-config" in replica["command"] and "--model-repository=/models" in replica["command"]
        assert replica["user"] == "1000:1000"
        assert replica["volumes"] == [
            {"type": "bind", "source": str(repository.resolve()), "target": "/models", "read_only": True}
        ]
        check = replica["healthcheck"]
        assert "/v2/health/ready" in check["test"][-1] and check["test"][:2] == ["CMD", "python3"]
        assert check["start_period"] == f"{UNMEASURED_START_PERIOD_S}s"  # no load time measured for this repository
        assert "deploy" not in replica  # CPU models, no measured peak: nothing reserved
        assert "ports" not in replica  # only nginx publishes
    nginx = services["nginx"]
    assert nginx["ports"] == ["9000:8000", "9001:8001"]
    assert nginx["depends_on"] == {name: {"condition": "service_healthy"} for name in replicas}
    assert nginx["volumes"][0]["source"] == "./nginx.conf" and nginx["volumes"][0]["read_only"] is True
    assert document["x-aitune-triton"]["models"] == ["compose_net"]

    text = written[1].read_text()
    for name in replicas:
        assert f"server {name}:8000 " in text and f"server {name}:8001 " in text
    assert "grpc_pass grpc://triton_grpc;" in text and "listen 8001 http2;" in text


def test_the_schema_catches_what_compose_would_refuse(repository, tmp_path):
    import jsonschema

    (path, _) = ComposeTarget().generate(repository, tmp_path)
    document = yaml.safe_load(path.read_text())
    document["services"]["triton-1"]["healthcheck"]["start_perod"] = "10s"  # a misspelt key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(compose_schema()).validate(document)


def test_the_exported_repository_is_readable_by_the_replicas_user(repository, tmp_path):
    assert unreadable_by_others(repository) == []  # config.pbtxt too (it was written 0600 before)
    copy = tmp_path / "copy"
    shutil.copytree(repository, copy)
    (copy / "compose_net" / "config.pbtxt").chmod(0o600)
    with pytest.warns(UserWarning, match=r"replicas run as user 1000 and may not read .*config.pbtxt .*chmod -R a\+rX"):
        ComposeTarget().generate(copy, tmp_path / "out")


def test_gpu_reservation_and_image_options(repository, tmp_path):
    options = ComposeOptions(replicas=1, image="registry.local/triton-runtime:1", gpus_per_replica=2,
                             repository_source="/srv/models", extra_server_args=("--log-verbose=1",))
    (path, _) = ComposeTarget(options).generate(repository, tmp_path)
    replica = yaml.safe_load(path.read_text())["services"]["triton-1"]
    assert replica["image"] == "registry.local/triton-runtime:1"
    assert replica["volumes"][0]["source"] == "/srv/models"
    assert replica["command"][-1] == "--log-verbose=1"
    assert replica["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 2, "capabilities": ["gpu"]}
    ]
    assert "the stock image lacks" not in path.read_text()  # an image was given


def test_the_start_period_follows_the_measured_load_time():
    assert healthcheck_start_period_s(None) == UNMEASURED_START_PERIOD_S
    assert healthcheck_start_period_s(2.0) == 30
    assert healthcheck_start_period_s(40.2) == 121


@pytest.mark.skipif(nginx_binary() is None, reason=NO_NGINX)
def test_nginx_accepts_the_written_configuration(repository, tmp_path):
    (_, conf) = ComposeTarget(ComposeOptions(replicas=2)).generate(repository, tmp_path)
    text = conf.read_text()
    # nginx resolves upstream names while checking; compose's service names resolve only on its network.
    local = text.replace("server triton-1:", "server 127.0.0.1:").replace("server triton-2:", "server localhost:")
    assert local.count("127.0.0.1:") == 2 and "triton-" not in local.replace("triton_", "")
    checked = nginx_check(local)
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr
    broken = nginx_check(local.replace("grpc_next_upstream error", "grpc_next_upstream mistake"))
    assert broken.returncode != 0 and "mistake" in broken.stderr


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(replicas=0), "replicas: expected an integer >= 1, got 0"),
        (dict(replicas=True), "replicas: expected an integer >= 1"),
        (dict(http_port=70000), "http_port: expected a port 1-65535, got 70000"),
        (dict(http_port=8001, grpc_port=8001), "grpc_port: must differ from http_port"),
        (dict(image="bad image"), "image: expected a non-empty string without spaces"),
        (dict(gpus_per_replica=-1), "gpus_per_replica: expected an integer >= 0"),
        (dict(extra_server_args="--log-verbose=1"), "extra_server_args: expected a tuple of strings"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        ComposeOptions(**options)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(http_upstreams=[]), "http_upstreams: expected a non-empty list"),
        (dict(http_upstreams="a:1"), "http_upstreams: expected a non-empty list"),
        (dict(http_upstreams=["a:1; include /etc/passwd"]), "http_upstreams: expected 'host:port'"),
        (dict(grpc_upstreams=["a:99999"]), "grpc_upstreams: expected 'host:port'"),
        (dict(grpc_port=8000), "grpc_port: must differ from http_port"),
        (dict(runtime_dir="tmp"), "runtime_dir: expected an absolute path"),
        (dict(error_log="/tmp/x; y"), "error_log: expected 'stderr' or an absolute path"),
        (dict(read_timeout_s=0), "read_timeout_s: expected an integer"),
    ],
)
def test_bad_nginx_arguments_are_refused_by_name(kwargs, message):
    arguments = dict(http_upstreams=["a:8000"], grpc_upstreams=["a:8001"]) | kwargs
    with pytest.raises(InvalidArgumentError, match=message):
        nginx_config(**arguments)


def test_a_repository_path_that_is_not_a_repository_is_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="repository"):
        ComposeTarget().generate(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgumentError, match="output_dir: .* is a file"):
        ComposeTarget().generate(tmp_path, tmp_path / "file")


def test_deploy_writes_the_runtime_environment_and_the_replicas_build_their_image_from_it(repository, tmp_path):
    import jsonschema

    out = aitune_triton.deploy(repository, "compose", tmp_path / "deployment", ComposeOptions(replicas=2))

    assert sorted(p.name for p in out.iterdir()) == ["compose.yaml", "nginx.conf", "runtime"]
    assert "onnxruntime==" in (out / "runtime" / "requirements.txt").read_text()  # the tuned graph's runtime
    text = (out / "compose.yaml").read_text()
    document = yaml.safe_load(text)
    jsonschema.Draft202012Validator(compose_schema()).validate(document)
    for name in ("triton-1", "triton-2"):
        assert document["services"][name]["build"] == {"context": "./runtime"}
        assert document["services"][name]["image"] == "model_repository-triton-runtime"
    assert "built from runtime/" in text
    # Given an image, the replicas run it and nothing is built.
    given = aitune_triton.deploy(repository, "compose", tmp_path / "given", ComposeOptions(image="registry/minilm:1"))
    assert "build" not in yaml.safe_load((given / "compose.yaml").read_text())["services"]["triton-1"]
