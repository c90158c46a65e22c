"""Deployment targets: files that run an exported model repository on an existing engine
(Kubernetes manifests, a KServe InferenceService, a compose file), registered by name, and
:func:`deploy`, which checks the repository and writes a target's files atomically.

Built in: ``kubernetes``, ``kserve``, ``compose``. To add a target: a module here with a
:class:`~.registry.DeploymentTarget` subclass (its name, its
typed options, a :class:`~.options.DeployOptions` subclass, and ``write(repository, facts, output_dir)``)
and one :func:`register_deployment_target` line below.
"""

from aitune_triton.deployment.api import deploy
from aitune_triton.deployment.compose import ComposeOptions, ComposeTarget
from aitune_triton.deployment.facts import RepositoryFacts, repository_facts
from aitune_triton.deployment.kserve import KServeOptions, KServeTarget
from aitune_triton.deployment.kubernetes import KubernetesOptions, KubernetesTarget
from aitune_triton.deployment.options import DeployOptions
from aitune_triton.deployment.registry import (
    DeploymentTarget,
    deployment_target,
    deployment_target_names,
    register_deployment_target,
)

register_deployment_target(KubernetesTarget)
register_deployment_target(KServeTarget)
register_deployment_target(ComposeTarget)

__all__ = [
    "ComposeOptions",
    "ComposeTarget",
    "DeployOptions",
    "DeploymentTarget",
    "KServeOptions",
    "KServeTarget",
    "KubernetesOptions",
    "KubernetesTarget",
    "RepositoryFacts",
    "deploy",
    "deployment_target",
    "deployment_target_names",
    "register_deployment_target",
    "repository_facts",
]
