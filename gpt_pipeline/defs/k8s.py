"""The training pod of the ``k8s`` launcher: its settings (``K8sLaunchConfig``, the ``k8s`` field
of ``trained_model``'s config), its pod spec and its command. Plain dictionaries in the shape of
the Kubernetes API (camelCase, as ``PipesK8sClient(base_pod_spec=...)`` takes them): nothing here
needs dagster-k8s, which only ``gpt_pipeline.defs.launchers.train_in_pod`` imports.

The pod: one container (the first, which Pipes talks to) running ``pod_command`` (the Pipes
worker, torchrun inside for several processes), ``gpus`` NVIDIA GPUs with a node selector and
the GPU taint tolerated, the persistent volume claim ``volume_claim`` mounted at ``mount_path``
(the data directory: the dataset file and the checkpoints, so that a retried pod resumes),
a memory-backed ``/dev/shm`` (NCCL and the data loader use it), and the environment of the
Secret ``env_secret`` (``MLFLOW_TRACKING_URI``, ``AWS_*``, ...) plus ``GPT_PIPELINE_DATA_DIR``.

Example:
    >>> spec = pod_spec(K8sLaunchConfig(image="gpt:1", gpus=2, env_secret="gpt-env"))
    >>> spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], spec["restartPolicy"]
    (2, 'Never')
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.training.config import TrainConfig
from gpt_pipeline.training.torchrun import worker_command

GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER = "training"


class K8sLaunchConfig(dg.Config):
    image: str = Field(default="", description="Image of the training pod (this project, a CUDA build of "
                       "torch); required with launcher k8s.")
    namespace: str = Field(default="", description="Namespace of the pod; empty: the run pod's own, else default.")
    gpus: int = Field(default=1, description="NVIDIA GPUs of the pod (one torchrun process each; 0: CPU only).")
    cpu: str = Field(default="", description="CPU request and limit, e.g. '8'; empty: none.")
    memory: str = Field(default="", description="Memory request and limit, e.g. '64Gi'; empty: none.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pod needs, e.g. "
                                          "{'nvidia.com/gpu.present': 'true'}.")
    volume_claim: str = Field(default="gpt-pipeline-data", description="PersistentVolumeClaim with the data "
                              "directory (dataset, checkpoints), mounted at mount_path here and in the run pod.")
    mount_path: str = Field(default="/data", description="Where the claim is mounted: GPT_PIPELINE_DATA_DIR.")
    env_secret: str = Field(default="", description="Secret whose keys become the pod's environment "
                            "(MLFLOW_TRACKING_URI, AWS_*); empty: none.")


def check_pod_settings(settings: K8sLaunchConfig, config: TrainConfig) -> None:
    """``ValueError`` naming the field for a pod that cannot run this training."""
    if not settings.image:
        raise ValueError("TrainedModelConfig.k8s.image is empty: launcher 'k8s' needs the training image")
    if settings.gpus < 0:
        raise ValueError(f"TrainedModelConfig.k8s.gpus must be an integer >= 0, got {settings.gpus}")
    if settings.gpus and config.num_processes > settings.gpus:
        raise ValueError(f"TrainedModelConfig.k8s.gpus={settings.gpus} is fewer than num_processes="
                         f"{config.num_processes} (one GPU per process)")
    if not settings.mount_path.startswith("/"):
        raise ValueError(f"TrainedModelConfig.k8s.mount_path must be absolute, got {settings.mount_path!r}")


def pod_spec(settings: K8sLaunchConfig) -> dict:
    """The pod spec (``base_pod_spec``) of the training pod; image and command are set by
    ``PipesK8sClient.run`` on the first container."""
    limits: dict = {}
    if settings.gpus:
        limits[GPU_RESOURCE] = settings.gpus
    if settings.cpu:
        limits["cpu"] = settings.cpu
    if settings.memory:
        limits["memory"] = settings.memory
    resources = {"limits": limits, "requests": {k: v for k, v in limits.items() if k != GPU_RESOURCE}} if limits else {}
    container: dict = {
        "name": CONTAINER,
        "env": [{"name": "GPT_PIPELINE_DATA_DIR", "value": settings.mount_path}],
        "volumeMounts": [{"name": "data", "mountPath": settings.mount_path},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if resources:
        container["resources"] = resources
    if settings.env_secret:
        container["envFrom"] = [{"secretRef": {"name": settings.env_secret}}]
    spec: dict = {
        "restartPolicy": "Never",  # Dagster retries the step, which starts a fresh pod
        "containers": [container],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": settings.volume_claim}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    }
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.gpus:
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def pod_command(model_config: GPTConfig, config: TrainConfig, dataset: str | Path, checkpoint_dir: str | Path,
                initial_checkpoint: str | None = None) -> list[str]:
    """The container's command: the Pipes worker (torchrun around it for several processes),
    with the image's ``python``; errors recorded under the checkpoint folder."""
    command = worker_command(model_config, config, dataset, checkpoint_dir, Path(checkpoint_dir) / "errors",
                             initial_checkpoint, "gpt_pipeline.defs.pipes_worker")
    return ["python", *command[1:]]
