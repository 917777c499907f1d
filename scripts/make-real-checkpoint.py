"""Write tests/data/real-mbridge: a tiny training run saved by the real Megatron Bridge, on CPU.

Run on demand, not in CI: it needs a ~2.7 GB virtual environment with Megatron Bridge 0.3.1 and
Megatron-Core 0.16.1 (the two are installed without their dependencies, which pull GPU-only
packages; scripts/real-checkpoint-requirements.txt lists what they import instead):

    python3 -m venv /path/to/mbridge-venv          # outside the repository
    /path/to/mbridge-venv/bin/pip install torch==2.13.0   # the CPU build (or any torch 2.x CPU)
    /path/to/mbridge-venv/bin/pip install -r scripts/real-checkpoint-requirements.txt
    /path/to/mbridge-venv/bin/pip install --no-deps megatron-bridge==0.3.1 megatron-core==0.16.1
    /path/to/mbridge-venv/bin/python scripts/make-real-checkpoint.py tests/data/real-mbridge

It replaces OUT with (two minutes on two busy cores, no network, no GPU):
  train_run/                 iter_0000010 and iter_0000020 (sync saves), iter_0000030 (an async save,
                             finalized), both trackers: save_checkpoint as training calls it
  train_run_async_midway/    a copy of train_run taken after the async save of step 30 wrote its
                             shards but before its finalize ran (tracker still at 20)
  hf_export/                 iter_0000030 exported back to Hugging Face by AutoBridge.export_ckpt
                             (Bridge 0.3.1 has no also_save_hf_checkpoint, so no iter_N/hf/)
  VERSIONS                   the packages that wrote all this
The model is a random Llama (hidden 16, one layer, vocabulary 300) with a BPE tokenizer trained
here, so nothing comes from a hub.

What makes Bridge run on CPU (see cpu_setup): megatron-core's local layer spec instead of
Transformer Engine's, fusions off, a one-process gloo group with TP=PP=1, CPU initialization;
bridge/peft/lora*.py import Transformer Engine unconditionally, so they are imported once against
a stand-in module that is removed right after; three CUDA calls on the save path get CPU versions;
the async save uses the fork worker (use_persistent_ckpt_worker=False).
"""

import importlib
import os
import shutil
import socket
import subprocess
import sys
import time
import types
from importlib.metadata import version
from pathlib import Path

import torch

HIDDEN, LAYERS, VOCAB = 16, 1, 300
ASYNC_STEP = 30


# ---- CPU-only Megatron Bridge ----


class _StubMeta(type):
    """transformer_engine.pytorch stand-in: any attribute is a class that cannot be built."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubMeta(name, (object,), {"__init__": _no_te})


def _no_te(self, *args, **kwargs):
    raise RuntimeError("transformer_engine is not installed (CPU stand-in)")


class _TE(metaclass=_StubMeta):
    pass


# What megatron.bridge.peft.lora{,_layers} pull from megatron.core: imported before the stand-in
# is visible, so that megatron.core records HAVE_TE=False.
_CORE_FIRST = [
    "megatron.core",
    "megatron.core.parallel_state",
    "megatron.core.utils",
    "megatron.core.transformer.moe.moe_utils",
    "megatron.core.transformer.moe.router",
    "megatron.core.tensor_parallel",
    "megatron.core.transformer.module",
    "megatron.core.dist_checkpointing",
    "megatron.core.dist_checkpointing.mapping",
    "megatron.core.transformer.transformer_config",
    "megatron.core.models.gpt",
]


def cpu_setup():
    """Call before importing megatron.bridge; changes nothing in site-packages."""
    if not torch.cuda.is_available():
        torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
        torch.cuda.synchronize = lambda device=None: None
        torch.cuda.current_device = lambda: "cpu"
    try:
        import transformer_engine  # noqa: F401  (the real one: nothing to do)

        return
    except ImportError:
        pass
    for name in _CORE_FIRST:
        importlib.import_module(name)
    for name in (
        "megatron.bridge.peft.adapter_wrapper",
        "megatron.bridge.peft.base",
        "megatron.bridge.peft.module_matcher",
        "megatron.bridge.utils.import_utils",
    ):
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # needs lora* itself: imported in the window below
    before = set(sys.modules)
    te_pkg = types.ModuleType("transformer_engine")
    te_pkg.__path__ = []
    te_pkg.pytorch = _TE
    sys.modules["transformer_engine"] = te_pkg
    sys.modules["transformer_engine.pytorch"] = _TE
    try:
        importlib.import_module("megatron.bridge.peft.lora")
    finally:
        del sys.modules["transformer_engine"], sys.modules["transformer_engine.pytorch"]
    leaked = sorted(m for m in set(sys.modules) - before if m.startswith("megatron.core"))
    assert not leaked, f"megatron.core modules imported while the TE stand-in was visible: {leaked}"


def _init_gloo():
    """A one-process gloo group on a free local port, with TP=PP=1."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    return dist


# ---- the three phases, each in its own process ----


def make_hf(hf_dir: Path):
    """A tiny random Llama and a BPE tokenizer trained on a few lines (no hub access)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = [f"The quick brown fox jumps over the lazy dog. line {i} megatron bridge checkpoint" for i in range(200)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        text,
        trainers.BpeTrainer(
            vocab_size=VOCAB,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(hf_dir)
    fast.save_pretrained(hf_dir)


def train(hf_dir: Path, run_dir: Path, midway_dir: Path):
    """save_checkpoint at steps 10 and 20, then an async save at 30 copied before its finalize."""
    cpu_setup()
    dist = _init_gloo()
    from megatron.bridge import AutoBridge
    from megatron.bridge.models.gpt_provider import local_layer_spec
    from megatron.bridge.training import checkpointing
    from megatron.bridge.training.config import (
        CheckpointConfig,
        ConfigContainer,
        LoggerConfig,
        MockGPTDatasetConfig,
        OptimizerConfig,
        TrainingConfig,
    )
    from megatron.bridge.training.state import GlobalState
    from megatron.bridge.training.tokenizers.config import TokenizerConfig
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer

    bridge = AutoBridge.from_hf_pretrained(str(hf_dir), dtype=torch.float32)
    provider = bridge.to_megatron_provider(load_weights=True)
    provider.transformer_layer_spec = local_layer_spec
    for flag in (
        "apply_rope_fusion",
        "gradient_accumulation_fusion",
        "masked_softmax_fusion",
        "bias_activation_fusion",
        "bias_dropout_fusion",
        "persist_layer_norm",
        "cross_entropy_loss_fusion",
    ):
        if hasattr(provider, flag):
            setattr(provider, flag, False)
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False, use_cpu_initialization=True)

    tokenizer = TokenizerConfig(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(hf_dir))
    dataset = MockGPTDatasetConfig(
        seq_length=64, random_seed=1234, reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False
    )
    dataset.tokenizer = build_tokenizer(tokenizer)  # as training/setup.py does: saves tokenizer/
    state = GlobalState()

    def configure(async_save):
        state.cfg = ConfigContainer(
            model=provider,
            train=TrainingConfig(train_iters=ASYNC_STEP, global_batch_size=1, micro_batch_size=1),
            optimizer=OptimizerConfig(use_distributed_optimizer=False),
            ddp=None,
            scheduler=None,
            dataset=dataset,
            logger=LoggerConfig(),
            tokenizer=tokenizer,
            checkpoint=CheckpointConfig(
                save=str(run_dir),
                save_interval=10,
                save_optim=False,
                save_rng=True,
                ckpt_format="torch_dist",
                async_save=async_save,
                use_persistent_ckpt_worker=False,
            ),
            dist=None,
        )

    configure(async_save=False)
    for step in (10, 20):
        state.train_state.step = step
        checkpointing.save_checkpoint(state, model, None, None, num_floating_point_operations_so_far=1.0e9 * step)
    configure(async_save=True)
    state.initialize_async_checkpoint_worker()
    state.train_state.step = ASYNC_STEP
    checkpointing.save_checkpoint(state, model, None, None, num_floating_point_operations_so_far=1.0e9 * ASYNC_STEP)
    iter_dir = run_dir / f"iter_{ASYNC_STEP:07d}"
    _wait_for_shards(iter_dir)
    shutil.copytree(run_dir, midway_dir, symlinks=True)  # what a job killed now leaves behind
    checkpointing.maybe_finalize_async_save(state, ckpt_cfg=state.cfg.checkpoint, blocking=True, terminate=True)
    print("async save before finalize:", sorted(os.listdir(midway_dir / iter_dir.name)))
    print("after finalize:", sorted(os.listdir(iter_dir)))
    dist.destroy_process_group()


def _wait_for_shards(iter_dir: Path, timeout: float = 120.0):
    """Wait until the background writer's shards stop growing (its finalize waits for us)."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        sizes = sorted((p.name, p.stat().st_size) for p in iter_dir.glob("*.distcp"))
        if sizes and sizes == last:
            return
        last = sizes
        time.sleep(2)
    raise SystemExit(f"the async save wrote no stable shards in {iter_dir} in {timeout:.0f}s")


def export(hf_dir: Path, iter_dir: Path, out_dir: Path):
    """AutoBridge.export_ckpt: load the Megatron iteration back and write Hugging Face weights."""
    cpu_setup()
    from megatron.bridge import AutoBridge

    AutoBridge.from_hf_pretrained(str(hf_dir)).export_ckpt(str(iter_dir), str(out_dir), show_progress=False)


def write_versions(out: Path):
    """Name what wrote the data, so a test failure can be traced to a writer version."""
    lines = [
        f"{name}=={version(name)}"
        for name in ("megatron-bridge", "megatron-core", "torch", "transformers", "tokenizers")
    ]
    lines += [f"python=={sys.version.split()[0]}", "written by scripts/make-real-checkpoint.py"]
    (out / "VERSIONS").write_text("\n".join(lines) + "\n")


def main():
    if len(sys.argv) == 5 and sys.argv[1] in ("train", "export"):  # a phase, in a child process
        phase, args = sys.argv[1], [Path(arg) for arg in sys.argv[2:]]
        (train if phase == "train" else export)(*args)
        return
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} OUT_DIR   (see the docstring)")
    out = Path(sys.argv[1]).absolute()
    work = out.parent / f".{out.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    hf_dir, run_dir = work / "hf_source", work / "train_run"
    make_hf(hf_dir)
    # Separate processes: each needs a fresh process group, and the async worker forks.
    me = [sys.executable, os.path.abspath(__file__)]
    subprocess.run([*me, "train", hf_dir, run_dir, work / "train_run_async_midway"], check=True)
    iter_dir = run_dir / f"iter_{ASYNC_STEP:07d}"
    subprocess.run([*me, "export", hf_dir, iter_dir, work / "hf_export"], check=True)
    shutil.rmtree(hf_dir)  # the random source model: hf_export holds the same weights
    write_versions(work)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    print(f"wrote {out}")


if __name__ == "__main__":  # dist_checkpointing spawns processes that import this file
    main()
