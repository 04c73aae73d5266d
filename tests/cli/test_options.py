"""Flags generated from the config models (knowtune.cli.options): every key has one, with the
field's description as help and the model's default; nested keys; YAML < flags; old names."""

from __future__ import annotations

import pytest
import typer
from pydantic import BaseModel

from knowtune.cli.options import _nested_model, _show, flag_name
from knowtune.config import load_config
from knowtune.errors import ConfigError
from knowtune.testing import run_cli


def _command(name: str):
    """The decorated command function of ``knowtune NAME`` and its click command."""
    import importlib

    from knowtune.cli import COMMAND_MODULES, _register, app

    _register([name.split()[0]])
    group = typer.main.get_command(app)
    click_command = group
    for word in name.split():
        click_command = click_command.get_command(None, word)
    module = importlib.import_module(f"knowtune.cli.{COMMAND_MODULES[name.split()[0]]}")
    functions = [f for f in vars(module).values() if getattr(f, "config_flags", None) is not None]
    wanted = {"world slice": "slice_", "world synth": "synth", "world corpus": "corpus", "annotate": "annotate", "curate": "curate"}.get(name, f"{name}_command")
    return next(f for f in functions if f.__name__ == wanted), click_command


COMMANDS = {  # command -> (config model, dotted keys that are not flags: the study wires them)
    "train": ("knowtune.train.config:TrainConfig", set()),
    "annotate": ("knowtune.slick.protocol:AnnotateConfig", set()),
    "curate": ("knowtune.curate:CurateConfig", set()),
    "study": ("knowtune.study.config:StudyConfig", {"annotate.model", "annotate.data", "annotate.out", "curate.annotations", "curate.data", "curate.out"}),
    "keys": ("knowtune.study.keys:KeyOverlapConfig", set()),
    "pretrain": ("knowtune.pretrain:PretrainConfig", set()),
    "world synth": ("knowtune.world.synthetic:SyntheticWorldConfig", set()),
    "world corpus": ("knowtune.world.corpus:CorpusConfig", set()),
    "world slice": ("knowtune.world.entityquestions:SliceSpec", set()),
    "evaluate": ("knowtune.evaluate:EvalConfig", set()),
}


def _model(spec: str) -> type[BaseModel]:
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _keys(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """Every dotted key of ``model`` -> its field (an optional block is a key itself, plus its keys)."""
    keys = {}
    for name, field in model.model_fields.items():
        block, optional = _nested_model(field.annotation)
        if block is None or optional:
            keys[prefix + name] = field
        if block is not None:
            keys.update(_keys(block, f"{prefix}{name}."))
    return keys


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_config_key_has_a_flag_with_its_description_and_default(name):
    model_spec, wired = COMMANDS[name]
    model = _model(model_spec)
    function, click_command = _command(name)
    flags = {flag.key: flag for flag in function.config_flags}
    expected = {key for key in _keys(model) if not any(key == w or key.startswith(w + ".") for w in wired)}
    assert set(flags) == expected, f"keys without a flag: {sorted(expected - set(flags))}"
    options = {opt for param in click_command.params for opt in (*param.opts, *param.secondary_opts)}
    for key, field in _keys(model).items():
        if key not in flags:
            continue
        flag = flags[key]
        assert flag.name == flag_name(key.split(".")) and flag.name in options
        assert field.description and field.description.strip() in flag.help, f"{model.__name__}.{key} has no description (its flag's help)"
    if name == "train":  # defaults shown are the model's
        assert flags["learning_rate"].shown_default == "0.0003" and flags["lora.r"].shown_default == "8"
        assert flags["selfdistill.teacher"].shown_default == "format_stage" and flags["lora"].shown_default == "off"
    if name == "keys":  # a nested block's defaults are its parent's (not the block class's)
        assert flags["pretrain.hidden_size"].shown_default == "64" and flags["finetune.epochs"].shown_default == "20"
    if name == "world slice":
        assert flags["relations"].shown_default.startswith("P19, P26")


def _parse(name: str, *args, config=None):
    """The config that ``knowtune NAME ARGS`` would run with: parsed by click, not run."""
    from knowtune.cli.options import overrides_from

    function, click_command = _command(name)
    required = {"train": ["--data", "d", "--out", "o"], "world slice": ["--source", "s", "--out", "o"], "world synth": ["--out", "o"],
                "world corpus": ["--out", "o"]}.get(name, [])
    context = click_command.make_context(name, [*required, *map(str, args)])
    values = {flag.param: context.params.get(flag.param) for flag in function.config_flags}
    model = _model(COMMANDS[name][0])
    from knowtune.world.entityquestions import EMBEDDED_SLICE

    base = EMBEDDED_SLICE if name == "world slice" else None  # as the command does
    return load_config(model, config, overrides_from(function.config_flags, values), {f.key: f.name for f in function.config_flags}, base=base)


def test_train_flags_old_names_and_nested_keys(tmp_path):
    config = _parse("train", "--lr", "5e-3", "--batch-size", 4, "--train-only", "attention", "--train-only", "mlp", "--lora-r", 4,
                    "--drift-layer", 1, "--selfdistill-teacher", "base", "--selfdistill-lambda-kl", 2, "--answer-prefix", " ",
                    "--prompt-template", "Q: {question}\n", "--method", "selfdistill", "--no-save-best", "--report-to", "none")
    assert config.learning_rate == 5e-3 and config.batch_size == 4 and config.train_only == ["attention", "mlp"]
    assert config.lora.r == 4 and config.lora.alpha == 16.0 and config.drift.layer == 1
    assert config.selfdistill.teacher == "base" and config.selfdistill.lambda_kl == 2.0 and config.method == "selfdistill"
    assert config.answer_prefix == " " and config.prompt_template == "Q: {question}\n" and config.save_best is False and config.report_to == []
    assert _parse("train", "--lora-target-modules", "all-linear").lora.target_modules == "all-linear"
    assert _parse("train", "--lora-target-modules", "q_proj", "--lora-target-modules", "v_proj").lora.target_modules == ["q_proj", "v_proj"]
    assert _parse("train", "--learning-rate", "0.1").learning_rate == 0.1


def test_yaml_below_flags_nested_blocks_merge_key_by_key(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 3\nlora: {r: 16, alpha: 32}\nselfdistill: {lambda_kl: 2.0}\ndrift: {layer: 2, split: dev}\n")
    config = _parse("train", "--lora-r", 4, "--selfdistill-teacher", "base", "--epochs", 5, config=path)
    assert (config.epochs, config.lora.r, config.lora.alpha) == (5, 4, 32.0)
    assert (config.selfdistill.teacher, config.selfdistill.lambda_kl) == ("base", 2.0) and config.drift.split == "dev"
    assert _parse("train", "--lora", config=path).lora.r == 16  # on: the YAML block as it is
    assert _parse("train", "--lora").lora.r == 8  # on: the defaults
    assert _parse("train", "--no-lora", "--no-drift", config=path).lora is None
    assert _parse("train", config=path).drift.layer == 2
    with pytest.raises(ConfigError, match="--no-lora and --lora-r contradict"):
        _parse("train", "--no-lora", "--lora-r", 4, config=path)
    with pytest.raises(ConfigError, match=r"lora\.r: .*set by --lora-r"):
        _parse("train", "--lora-r", 0)
    with pytest.raises(ConfigError, match=r"prompt_template: .*set by --prompt-template"):
        _parse("train", "--prompt-template", "no slot")


def test_lists_choices_and_bools_of_other_stages():
    curate = _parse("curate", "--unknown-ratios", "0,50", "--unknown-ratios", "100", "--variants", "ratio,idk", "--size", 8)
    assert curate.unknown_ratios == [0, 50, 100] and curate.variants == ["ratio", "idk"] and curate.size == 8
    annotate = _parse("annotate", "--split", "train", "--splits", "test", "--relations", "P1, P2", "--no-prune-samples",
                      "--match-lowercase", "--no-match-strip-articles", "--n-ex", 3)
    assert annotate.splits == ["train", "test"] and annotate.relations == ["P1", "P2"] and annotate.prune_samples is False
    assert annotate.match.strip_articles is False and annotate.n_ex == 3
    study = _parse("study", "--train-selfdistill-teacher", "base", "--annotate-n-ex", 3, "--train-variants", "D_0",
                   "--compare-methods-overrides", "{lora: {epochs: 2}}", "--sample-train", 5, "--key-overlap-sizes", "50,60")
    assert study.train.selfdistill.teacher == "base" and study.annotate.n_ex == 3 and study.train_variants == ["D_0"]
    assert study.compare_methods.overrides == {"lora": {"epochs": 2}} and study.sample.train == 5 and study.key_overlap.sizes == [50, 60]
    corpus = _parse("world corpus", "--conflict-gold-share", "0.4,0.8", "--distribution", "zipf")
    assert corpus.conflict_gold_share == (0.4, 0.8) and corpus.distribution == "zipf"
    assert _parse("world synth", "--entities", 40, "--key-type", "random").num_entities == 40
    evaluate = _parse("evaluate", "--format", "fewshot", "--shots", 2, "--prompt-seed", 1, "--template", "{question}?", "--task", "t.yaml")
    assert (evaluate.prompt.kind, evaluate.prompt.shots, evaluate.prompt.seed, evaluate.prompt.template) == ("fewshot", 2, 1, "{question}?")
    assert evaluate.task == "t.yaml"
    spec = _parse("world slice", "--seed", 3)
    assert spec.seed == 3 and spec.relations[0] == "P19"  # the embedded slice's, not SliceSpec's


def test_unknown_flags_and_bad_choices_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--data", "embedded", "--out", tmp_path / "out", "--learning-rat", "0.1")
    assert code == 2 and "No such option" in err and "--learning-rat" in err
    code, _, err = run_cli(capsys, "train", "--data", "embedded", "--out", tmp_path / "out", "--method", "sdf")
    assert code == 2 and "Invalid value" in err and "--method" in err
    code, _, err = run_cli(capsys, "train", "--data", "embedded", "--out", tmp_path / "out", "--compare-methods-mixture", "5")
    assert code == 2 and "No such option" in err
    assert not (tmp_path / "out").exists()


def test_help_shows_descriptions_and_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0
    for text in ("--selfdistill-teacher", "The teacher: format_stage", "--answer-prefix", "--lr", "0.0003", "--no-lora"):
        assert text in out, text


def test_shown_defaults():
    assert [_show(v) for v in (True, 3e-4, [0, 25], "I don't know", "a\n", None, "")] == \
        ["true", "0.0003", "0, 25", "I don't know", '"a\\n"', None, '""']


def test_every_command_is_mapped_to_its_module():
    """`knowtune CMD` imports only CMD's module (COMMAND_MODULES): each registered command must be in the map."""
    from knowtune.cli import COMMAND_MODULES, app
    from knowtune.cli import commands  # noqa: F401 - registers every command

    for info in app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        assert COMMAND_MODULES.get(name) == info.callback.__module__.rsplit(".", 1)[-1], f"knowtune {name}: fix knowtune.cli.COMMAND_MODULES"
    for info in app.registered_groups:
        callback = info.typer_instance.registered_callback
        commands_ = info.typer_instance.registered_commands
        module = (callback.callback if callback and callback.callback else commands_[0].callback).__module__
        assert COMMAND_MODULES.get(info.name) == module.rsplit(".", 1)[-1], f"knowtune {info.name}: fix knowtune.cli.COMMAND_MODULES"
