"""Tiny real models and worlds for tests and examples (seconds to build on one CPU core)."""

from __future__ import annotations


def tiny_pretrain_config(**overrides):
    """A :class:`~knowtune.pretrain.PretrainConfig` small enough to train in seconds."""
    from knowtune.pretrain import PretrainConfig

    values = dict(vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seq_len=32, batch_size=8, epochs=1.0, warmup_steps=2, save_every_steps=5)
    values.update(overrides)
    return PretrainConfig.model_validate(values)


def tiny_world(num_entities: int = 30, relations: int = 2, seed: int = 0):
    """A small synthetic world (name-like keys, entity-disjoint splits)."""
    from knowtune.world.synthetic import SyntheticWorldConfig, generate_synthetic_world

    return generate_synthetic_world(SyntheticWorldConfig(num_entities=num_entities, relations=relations, seed=seed))


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``knowtune *args`` run in-process (``capsys``: pytest's fixture)."""
    from knowtune.cli import main

    try:
        main([*map(str, args)])
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def table_row(out: str, name: str) -> list[str]:
    """The cells of the rich table row (in ``out``) whose first cell is ``name``."""
    import re

    for line in out.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == name:
            return cells[1:]
    raise AssertionError(f"no row {name!r} in:\n{out}")


class SimulatedCrash(Exception):
    """Raised by :class:`CrashAfterSave`: training stops the way a kill after a checkpoint would."""


def crash_after_save(epoch: int):
    """A ``TrainerCallback`` that raises :class:`SimulatedCrash` once the checkpoint of ``epoch`` is saved
    and complete (its manifest written, the older checkpoints not yet deleted; resume tests)."""
    from pathlib import Path

    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from knowtune.train.checkpoints import write_manifest

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if round(state.epoch) == epoch:
                write_manifest(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
                raise SimulatedCrash(f"stopped after the checkpoint of epoch {epoch}")

    return CrashAfterSave()


def cut_checkpoint(checkpoint, position: int) -> list[str]:
    """Leave ``checkpoint`` as a kill while the Trainer wrote its file number ``position`` would:
    the files before it (in write order: modification time, then name) whole, that one cut to
    half its size, the later ones absent, and no manifest. ``position`` = the number of files:
    every file written, the manifest not yet. Returns the names in write order."""
    from pathlib import Path

    from knowtune.train.checkpoints import MANIFEST

    (Path(checkpoint) / MANIFEST).unlink(missing_ok=True)
    files = sorted((p for p in Path(checkpoint).rglob("*") if p.is_file()), key=lambda p: (p.stat().st_mtime_ns, p.name))
    if position < len(files):
        with open(files[position], "r+b") as handle:
            handle.truncate(files[position].stat().st_size // 2)
        for later in files[position + 1:]:
            later.unlink()
    return [p.relative_to(checkpoint).as_posix() for p in files]


def crash_in_checkpoint(epoch: int, position: int, *, kill: bool = False):
    """A ``TrainerCallback`` that, once the checkpoint of ``epoch`` is saved and before its manifest, cuts
    it at ``position`` (:func:`cut_checkpoint`) and raises :class:`SimulatedCrash` (``kill``: SIGKILLs the process)."""
    import os
    import signal
    from pathlib import Path

    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class CrashInCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if round(state.epoch) == epoch:
                cut_checkpoint(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", position)
                if kill:
                    os.kill(os.getpid(), signal.SIGKILL)
                raise SimulatedCrash(f"stopped while writing file {position} of the checkpoint of epoch {epoch}")

    return CrashInCheckpoint()


def kill_in_checkpoint_from_env():
    """:func:`crash_in_checkpoint` with ``kill``, at ``$KNOWTUNE_TEST_KILL_IN_CHECKPOINT`` = ``EPOCH:POSITION``."""
    import os

    from knowtune.train.checkpoints import KILL_ENV

    epoch, position = (int(part) for part in os.environ[KILL_ENV].split(":"))
    return crash_in_checkpoint(epoch, position, kill=True)


def kill_train_in_checkpoint(args, epoch: int, position: int, *, env=None, timeout_s: float = 300.0) -> None:
    """Run ``knowtune *args`` (a ``train``) in a subprocess that SIGKILLs itself while writing file
    ``position`` of the checkpoint of ``epoch`` (:func:`crash_in_checkpoint`); asserts it was killed so."""
    import os
    import signal
    import subprocess
    import sys

    from knowtune.train.checkpoints import KILL_ENV

    env = {**(os.environ if env is None else env), KILL_ENV: f"{epoch}:{position}"}
    process = subprocess.run([sys.executable, "-c", "from knowtune.cli import main; main()", *map(str, args)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s)
    assert process.returncode == -signal.SIGKILL, f"status {process.returncode}, not a kill:\n{process.stderr.decode()[-2000:]}"



def free_port() -> int:
    """A TCP port of this machine that nothing listens on now (for a process group's rendezvous)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_knowtune(args, *, launcher=("--multi_gpu",), processes: int = 2, timeout_s: float = 300.0):
    """``accelerate launch`` of ``knowtune *args`` on ``processes`` CPU processes (gloo), DDP or ``launcher``'s
    setting; returns the ``CompletedProcess`` (text). The whole process group is killed and the test failed
    if it outlives ``timeout_s`` (a rank left waiting at a collective hangs)."""
    import os
    import signal
    import subprocess
    import sys

    import pytest

    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "knowtune", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the {processes}-process knowtune {args[0]} hung for {timeout_s:.0f} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

# Tiny random-initialised models of many architecture families (the architecture matrix).
# Each family: (config class name, config keyword arguments). Sizes are tiny (hidden 32,
# 2 layers); ``initializer_range`` is large so that greedy answers depend on the prompt
# (a small init answers the same whatever it is shown, which would test nothing).
_TINY = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=512)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(_TINY, intermediate_size=64, num_key_value_heads=2)),
    "mistral": ("MistralConfig", dict(_TINY, intermediate_size=64, num_key_value_heads=2, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(_TINY, intermediate_size=64, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(_TINY, intermediate_size=64, num_key_value_heads=2, head_dim=8)),
    "gemma2": ("Gemma2Config", dict(_TINY, intermediate_size=64, num_key_value_heads=2, head_dim=8, sliding_window=16)),
    "phi3": ("Phi3Config", dict(_TINY, intermediate_size=64, num_key_value_heads=2)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_head=4, n_layer=2, n_positions=512)),
    "gpt_neox": ("GPTNeoXConfig", dict(_TINY, intermediate_size=64)),
    "opt": ("OPTConfig", dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=512)),
    "bloom": ("BloomConfig", dict(hidden_size=32, n_head=4, n_layer=2)),
    "falcon": ("FalconConfig", dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, new_decoder_architecture=False, multi_query=True, alibi=False)),
}


# Default ``initializer_range`` where 0.5 saturates: Gemma-2 scales embeddings by sqrt(hidden)
# and soft-caps logits, so a large init gives one answer token whatever the prompt.
_INIT = {"gemma2": 0.03}


def tiny_family_model(family: str, out_dir, *, seed: int = 0, initializer_range: float | None = None, tokenizer_dir=None, **overrides):
    """Save a random-initialised causal LM of ``family`` (a key of :data:`FAMILIES`) with the
    default model's tokenizer to ``out_dir``; returns the directory. ``initializer_range``
    defaults to 0.5 (``_INIT`` per family); ``overrides`` are config keys that make a variant
    of the family (``alibi=True`` for Falcon, another ``sliding_window``)."""
    from pathlib import Path

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from knowtune.models import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or default_model_dir())
    config_class, kwargs = FAMILIES[family]
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=_INIT.get(family, 0.5) if initializer_range is None else initializer_range,
        **{**kwargs, **overrides})
    if hasattr(config, "init_std"):  # OPT's init reads init_std, not initializer_range, before transformers 5
        config.init_std = config.initializer_range
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def kill_annotate_after_rows(args, database, rows: int, *, env=None, poll_s: float = 0.02, timeout_s: float = 120.0) -> None:
    """Run ``knowtune *args`` in a subprocess and ``kill -9`` it once the audit store
    ``database`` holds at least ``rows`` results (or it ends, or ``timeout_s`` passes)."""
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-c", "from knowtune.cli import main; main()", *map(str, args)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stored, deadline = 0, time.time() + timeout_s
    while stored < rows and time.time() < deadline and process.poll() is None:
        time.sleep(poll_s)
        if database.exists():
            try:
                with sqlite3.connect(database) as db:
                    stored = db.execute("SELECT COUNT(*) FROM annotations").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the audit ended before it could be killed"
