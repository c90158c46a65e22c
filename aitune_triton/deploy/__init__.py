"""Deployment targets: files that run an exported model repository on an existing engine
(Kubernetes manifests, a KServe InferenceService, a compose file), registered by name.

Built in: ``compose`` (:mod:`.compose`). To add one: a module here with a
:class:`~.registry.DeploymentTarget` subclass (its name, its typed options and
``generate(repository, output_dir)``) and one :func:`register_deployment_target` line below.
"""

from aitune_triton.deploy.registry import (
    DeploymentTarget,
    deployment_target,
    deployment_target_names,
    register_deployment_target,
)

from aitune_triton.deploy.compose import ComposeOptions, ComposeTarget

register_deployment_target(ComposeTarget)

__all__ = ["ComposeOptions", "ComposeTarget", "DeploymentTarget", "deployment_target", "deployment_target_names", "register_deployment_target"]
