"""Build fake Megatron Bridge checkpoint layouts on disk for tests (stdlib only, a few tiny files).

By default an iteration has the names and files Megatron Bridge 0.3.1 / Megatron-Core 0.16.1
write (see tests/data/real-mbridge): common.pt, __0_0.distcp and __0_1.distcp (two files for
rank 0), a .metadata pickle in the shape of torch's Metadata (written without torch), metadata.json
with the four keys, train_state.pt, run_config.yaml and a three-file tokenizer/. Contents only
need to satisfy hpc_eval.checkpoint's checks.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

RUN_CONFIG = """\
_target_: megatron.bridge.training.config.ConfigContainer
checkpoint:
  ckpt_format: {fmt}
  save_tokenizer_assets: true
model:
  _target_: megatron.bridge.models.gpt_provider.GPTModelProvider
  tensor_model_parallel_size: 1
{peft}
tokenizer:
  _target_: megatron.bridge.training.tokenizers.config.TokenizerConfig
  tokenizer_type: HuggingFaceTokenizer
  tokenizer_model: meta-llama/Llama-3.2-1B
"""
PEFT_NONE = "peft: null"
PEFT_LORA = "peft:\n  _target_: megatron.bridge.peft.lora.LoRA\n  dim: 8"
METADATA_JSON = {"sharded_backend": "torch_dist", "sharded_backend_version": 1}
LEGACY_METADATA_JSON = {**METADATA_JSON, "common_backend": "torch", "common_backend_version": 1}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DCP = "torch.distributed.checkpoint.metadata"  # the module of the classes pickled in .metadata


def iter_name(step: int) -> str:
    """The directory name Megatron gives iteration `step`."""
    return f"iter_{step:07d}"


def train_state(step: int) -> bytes:
    """Fake train_state.pt bytes (torch's zip magic, then the step)."""
    return f"PK\x03\x04fake-train-state-{step}".encode()


def make_iter(
    parent: str | Path,
    step: int,
    *,
    common_pt: bool = True,
    tokenizer: bool = True,
    peft: bool = False,
    fmt: str = "torch_dist",
    shards: int = 2,
    missing: Iterable[str] = (),
    zero_byte: Iterable[str] = (),
    extra: Mapping[str, bytes] | Iterable[str] = (),
) -> Path:
    """Write parent/iter_NNNNNNN, a complete checkpoint unless the options break it.

    `missing` drops files (a folder name such as "tokenizer" drops all of it), `zero_byte` empties
    them, `extra` adds or overwrites them (a mapping name -> bytes, or names written with a
    placeholder byte). .metadata records every shard's items, so a shard in `missing` is "named
    in .metadata but missing" and a shorter shard in `extra` is cut short. `common_pt=False` is
    the layout of Megatron-Core >= 0.19 (no common.pt, two keys in metadata.json).
    """
    path = Path(parent) / iter_name(step)
    files = shard_files(shards)
    files[".metadata"] = dcp_metadata(files)
    if fmt == "torch_dist":
        files["metadata.json"] = json.dumps(LEGACY_METADATA_JSON if common_pt else METADATA_JSON).encode()
    if common_pt:
        files["common.pt"] = b"PK\x03\x04fake-common"
    files["train_state.pt"] = train_state(step)
    files["run_config.yaml"] = RUN_CONFIG.format(fmt=fmt, peft=PEFT_LORA if peft else PEFT_NONE).encode()
    if tokenizer:
        files.update({f"tokenizer/{name}": b"{}" for name in TOKENIZER_FILES})
    files.update(extra if isinstance(extra, Mapping) else dict.fromkeys(extra, b"x"))
    files.update(dict.fromkeys(zero_byte, b""))
    for name in missing:
        files = {key: data for key, data in files.items() if key != name and not key.startswith(name + "/")}
    _write(path, files)
    return path


def shard_files(count: int = 2) -> dict[str, bytes]:
    """Shard files as one rank writes them: __0_0.distcp, __0_1.distcp, ... (a few bytes each)."""
    return {f"__0_{index}.distcp": f"shard{index}-weights".encode() for index in range(count)}


def dcp_metadata(shards: Mapping[str, bytes]) -> bytes:
    """A .metadata pickle shaped like torch's: Metadata(storage_data={MetadataIndex: _StorageInfo}).

    Each shard holds two items that together fill it, so the recorded size of a shard is its
    length. Written opcode by opcode, since pickle itself only names classes it can import.
    """
    state_dict_metadata, storage_data = {}, {}
    for name, data in shards.items():
        half = len(data) // 2
        for offset, length in ((0, half), (half, len(data) - half)):
            fqn = f"{name.removesuffix('.distcp')}.item{offset}"
            state_dict_metadata[fqn] = _Object(DCP, "BytesStorageMetadata", {})
            index = _Object(DCP, "MetadataIndex", {"fqn": fqn, "offset": None, "index": None})
            storage_data[index] = _Object(
                "torch.distributed.checkpoint.filesystem",
                "_StorageInfo",
                {"relative_path": name, "offset": offset, "length": length},
            )
    metadata = _Object(
        DCP,
        "Metadata",
        {
            "state_dict_metadata": state_dict_metadata,
            "planner_data": None,
            "storage_data": storage_data,
            "storage_meta": None,
            "version": "1.0.0",
        },
    )
    return b"\x80\x02" + _pickle(metadata) + b"."


class _Object:
    """An instance of a class that pickle cannot import here: module, class name and __dict__."""

    def __init__(self, module: str, name: str, state: dict):
        self.module, self.name, self.state = module, name, state


def _pickle(value) -> bytes:
    """Protocol 2 opcodes for str, int, None, dict and _Object (as a dataclass pickles)."""
    if value is None:
        return b"N"
    if isinstance(value, str):
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)
    if isinstance(value, dict):
        items = b"".join(_pickle(key) + _pickle(item) for key, item in value.items())
        return b"}(" + items + b"u"
    if isinstance(value, _Object):  # copyreg.__newobj__: GLOBAL, (), NEWOBJ, then BUILD __dict__
        cls = f"c{value.module}\n{value.name}\n".encode()
        return cls + b")\x81" + _pickle(value.state) + b"b"
    raise TypeError(f"cannot pickle {value!r}")


def make_run(root: str | Path, steps: Iterable[int], *, tracker: bool = True, **iter_options) -> Path:
    """Write a training run's checkpoint directory with one complete iter dir per step.

    With `tracker`, both trackers name the highest step; `iter_options` go to make_iter.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    steps = sorted(steps)
    for step in steps:
        make_iter(root, step, **iter_options)
    if tracker and steps:
        write_tracker(root, steps[-1])
    return root


def write_tracker(run_dir: str | Path, step: int) -> None:
    """Point both trackers of a run at `step` (the text one has no newline, as Bridge writes it)."""
    run_dir = Path(run_dir)
    (run_dir / "latest_checkpointed_iteration.txt").write_text(str(step))
    (run_dir / "latest_train_state.pt").write_bytes(train_state(step))


def make_hf(path: str | Path) -> Path:
    """A Hugging Face model folder with sharded safetensors."""
    return _write(
        Path(path),
        {
            "config.json": b"{}",
            "generation_config.json": b"{}",
            "model-00001-of-00002.safetensors": b"w1",
            "model-00002-of-00002.safetensors": b"w2",
            "model.safetensors.index.json": b"{}",
            "tokenizer.json": b"{}",
            "tokenizer_config.json": b"{}",
        },
    )


def make_hf_peft(path: str | Path) -> Path:
    """A Hugging Face PEFT adapter folder."""
    return _write(Path(path), {"adapter_config.json": b"{}", "adapter_model.safetensors": b"a"})


def make_nemo2(path: str | Path) -> Path:
    """A NeMo 2 checkpoint: context/ plus weights/ holding a dist checkpoint."""
    return _write(
        Path(path),
        {
            "context/io.json": b"{}",
            "weights/metadata.json": json.dumps(METADATA_JSON).encode(),
            "weights/.metadata": dcp_metadata(shard_files(1)),
            "weights/__0_0.distcp": shard_files(1)["__0_0.distcp"],
        },
    )


def make_megatron_lm(root: str | Path, step: int) -> Path:
    """A Megatron-LM torch_dist run (text tracker only); returns its iter dir."""
    root = Path(root)
    path = make_iter(root, step, common_pt=True, missing=("train_state.pt", "run_config.yaml"))
    (root / "latest_checkpointed_iteration.txt").write_text(str(step))
    return path


def make_energon(run_dir: str | Path, step: int) -> Path:
    """The Megatron-Energon dataloader state a run keeps in energon/iter_NNNNNNN."""
    path = Path(run_dir) / "energon" / iter_name(step)
    return _write(path, {"train_dataloader_dprank000.pt": b"d0", "train_dataloader_dprank001.pt": b"d1"})


def _write(path: Path, files: Mapping[str, bytes]) -> Path:
    """Create `path` and write `files` (relative names, subfolders allowed) into it."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if "/" in name:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path
