"""Deployment targets: files that run an exported model repository on an existing engine
(Kubernetes manifests, a KServe InferenceService, a compose file), registered by name.

None is built in yet. To add one: a module here with a :class:`~.registry.DeploymentTarget`
subclass (its name, its typed options and ``generate(repository, output_dir)``) and one
:func:`register_deployment_target` line below.
"""

from aitune_triton.deploy.registry import (
    DeploymentTarget,
    deployment_target,
    deployment_target_names,
    register_deployment_target,
)

__all__ = ["DeploymentTarget", "deployment_target", "deployment_target_names", "register_deployment_target"]
