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
    """A ``TrainerCallback`` that raises :class:`SimulatedCrash` once the checkpoint of ``epoch`` is saved (resume tests)."""
    from transformers import TrainerCallback

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if round(state.epoch) == epoch:
                raise SimulatedCrash(f"stopped after the checkpoint of epoch {epoch}")

    return CrashAfterSave()
