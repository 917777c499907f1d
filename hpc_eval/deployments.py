"""What each launcher deployment type serves, and what `--checkpoint` does to it.

| deployment.type | serves | `--checkpoint iter_N` |
| --- | --- | --- |
| none | an endpoint (target.api_endpoint.url) | labels the run only; nothing is served |
| generic | Export-Deploy in-framework: a Megatron checkpoint at /checkpoint | sets deployment.checkpoint_path |
| vllm, vllm_ray, sglang, trtllm | a Hugging Face model: hf_model_handle, else checkpoint_path (trtllm: checkpoint_path only) | serves iter_N/hf when it is a complete HF export and clears hf_model_handle; refused otherwise |
| nim | the model baked into its image | refused: a NIM never loads a checkpoint |

Without `--checkpoint`, an HF server serves what the config names (a run labelled by the config,
no training step); `generic` needs one. A saved config never serves a model other than the one its
evaluation directory names: that is why `hf_model_handle` is cleared when a checkpoint is given
(the launcher's commands prefer it over /checkpoint).

A complete HF export (what Megatron Bridge writes to iter_N/hf/, what vLLM, SGLang and TRT-LLM
load): config.json; the weights, either one file (model.safetensors, pytorch_model.bin) or an
index (*.index.json) whose every shard is present; a tokenizer (tokenizer.json or
tokenizer.model) with its tokenizer_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpc_eval.errors import ConfigError

HF_SERVERS = {"vllm": "vLLM", "vllm_ray": "vLLM", "sglang": "SGLang", "trtllm": "TensorRT-LLM"}
HANDLE_SERVERS = (
    "vllm",
    "vllm_ray",
    "sglang",
)  # their commands serve hf_model_handle when set; trtllm always /checkpoint
DEPLOYMENTS: dict[str, str] = {
    "none": "an endpoint (target.api_endpoint.url); --checkpoint only labels the run",
    "generic": "Export-Deploy in-framework (Megatron native); --checkpoint sets deployment.checkpoint_path",
    **{
        kind: f"{name} on a Hugging Face model (hf_model_handle or checkpoint_path); --checkpoint iter_N serves iter_N/hf"
        for kind, name in HF_SERVERS.items()
    },
    "nim": "a NIM: the model in its image; never a checkpoint",
}
SINGLE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def deployment_type(cfg: DictConfig | dict[str, Any]) -> str:
    deployment = cfg.get("deployment") or {}
    return str(deployment.get("type", "none"))


def hf_export_problem(hf_dir: Path) -> str:
    """What a complete HF export lacks in `hf_dir` ("" when complete)."""
    if not hf_dir.is_dir():
        return f"{hf_dir} does not exist"
    if not (hf_dir / "config.json").is_file():
        return f"{hf_dir} has no config.json"
    index = next((hf_dir / name for name in WEIGHT_INDEXES if (hf_dir / name).is_file()), None)
    if index is not None:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index} is not a weight index (no weight_map)"
        absent = sorted(shard for shard in shards if not (hf_dir / shard).is_file())
        if absent:
            return f"{hf_dir} lacks {len(absent)} weight shard(s) listed in {index.name}, e.g. {absent[0]}"
    elif not any((hf_dir / name).is_file() for name in SINGLE_WEIGHTS):
        return f"{hf_dir} has no weights ({' or '.join(SINGLE_WEIGHTS + WEIGHT_INDEXES)})"
    if (
        not any((hf_dir / name).is_file() for name in TOKENIZER_FILES)
        or not (hf_dir / "tokenizer_config.json").is_file()
    ):
        return f"{hf_dir} has no tokenizer (tokenizer_config.json with tokenizer.json or tokenizer.model)"
    return ""


def served_path(kind: str, checkpoint: Path, source: Path, *, check: bool = True) -> str:
    """The path `deployment.checkpoint_path` gets for `--checkpoint checkpoint`.

    `check=False`: `checkpoint` stands for every iteration of a run (watch checks each one's export).

    Raises:
        ConfigError: this deployment cannot serve that checkpoint.
    """
    checkpoint = checkpoint.absolute()
    if kind == "nim":
        raise ConfigError(
            f"{source}: deployment.type nim serves the model in its image and never loads a checkpoint; "
            f"drop --checkpoint, or use deployment.type generic to evaluate {checkpoint.name}"
        )
    if kind not in HF_SERVERS:
        return str(checkpoint)
    hf_dir = checkpoint if checkpoint.name == "hf" else checkpoint / "hf"
    problem = hf_export_problem(hf_dir) if check else ""
    if problem:
        raise ConfigError(
            f"{source}: deployment.type {kind}: {HF_SERVERS[kind]} cannot load a Megatron checkpoint and {problem}; "
            f"use deployment.type generic (Export-Deploy serves Megatron checkpoints), or export it to Hugging Face "
            f"format with Megatron Bridge into {hf_dir}"
        )
    return str(hf_dir)


def apply_checkpoint(cfg: DictConfig, checkpoint: Path, source: Path, *, check: bool = True) -> None:
    """Point the unresolved config at `checkpoint` as its deployment type serves it (see the table)."""
    kind = deployment_type(cfg)
    path = served_path(kind, checkpoint, source, check=check)
    OmegaConf.update(cfg, "deployment.checkpoint_path", path, force_add=True)
    if kind in HF_SERVERS and cfg.deployment.get("hf_model_handle", None) is not None:
        cfg.deployment.hf_model_handle = None  # the launcher's commands prefer it over /checkpoint


def serve_configured_model(cfg: DictConfig) -> None:
    """Without --checkpoint an HF server with hf_model_handle serves that: its `???` checkpoint_path is not asked for."""
    deployment = cfg.get("deployment")
    if (
        deployment_type(cfg) in HANDLE_SERVERS
        and deployment.get("hf_model_handle", None)
        and OmegaConf.is_missing(deployment, "checkpoint_path")
    ):
        deployment.checkpoint_path = None


def check_checkpoints(launcher: dict[str, Any], checkpoints: list[Path], source: Path) -> None:
    """Refuse, before anything is claimed, a checkpoint list this deployment cannot serve.

    Raises:
        ConfigError: generic without a checkpoint, nim with one, an HF server on an iteration without a complete HF export.
    """
    kind = deployment_type(launcher)
    deployment = launcher.get("deployment") or {}
    if kind == "generic" and not checkpoints and not deployment.get("checkpoint_path"):
        raise ConfigError(
            f"{source}: deployment.type generic serves /checkpoint: give --checkpoint PATH "
            f"(an iter_* directory, or a run directory with --all/--latest)"
        )
    served = deployment.get("checkpoint_path") or (
        deployment.get("hf_model_handle") if kind in HANDLE_SERVERS else None
    )
    if kind in HF_SERVERS and not checkpoints and not served:
        raise ConfigError(
            f"{source}: deployment.type {kind} has neither deployment.hf_model_handle nor deployment.checkpoint_path; "
            f"set one, or give --checkpoint PATH (an iter_* directory holding an HF export in hf/)"
        )
    for checkpoint in checkpoints:
        served_path(kind, checkpoint, source)
