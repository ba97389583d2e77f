"""What a user reads: ``--help`` of every entry point, the suggestions for a mistyped name, and a run's banner, summary
and ``train.log`` (also across a resume)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest

from bgmask import cli, strategies
from bgmask.errors import ConfigError
from bgmask.infra.argparsing import BoolFlag, plain
from bgmask.run.console import ConsoleLog, summary

REPO = Path(__file__).resolve().parents[1]

# Entry points a user runs. The trainers: argv[0] shown -> the strategies they train; the tools are run in this
# process (runpy) until they parse, and their parser is checked.
TRAINERS = {"early_masking_and_baseline/train.py": ("none", "early"), "late_masking/train.py": ("late",),
            "python -m bgmask": None}
TOOLS = ["bgmask.export", "bgmask.predict", "bgmask.data.check", "scripts/collect_results.py",
         "scripts/make_synthetic_cub.py", "scripts/pretrain_synthetic.py",
         "scripts/visualize_masks.py", "mmsegmentation/tools/generate_masks.py",
         "mmsegmentation/tools/prepare_cub_binary_seg.py"]
USAGE_LINES = 2  # the trainers' usage block: the essentials, not 60 lines of every flag
MARKUP = re.compile(r"``|:(mod|class|func|meth|attr):`")


def trainer_parser(entry: str):
    names = TRAINERS[entry] or strategies.names()
    module = REPO / entry if entry.endswith(".py") else REPO / "bgmask/__main__.py"
    doc = module.read_text().split('"""')[1]
    return cli.build_parser(names, doc, prog=entry)


def parser_of(target: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a tool module or script builds, caught when it parses (run in this process, nothing executed)."""
    caught = []

    def catch(self, *args, **kwargs):
        caught.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    monkeypatch.setattr(sys, "argv", [target])
    if target.endswith(".py"):
        monkeypatch.syspath_prepend(str((REPO / target).parent))
    with pytest.raises(SystemExit):
        if target.endswith(".py"):
            runpy.run_path(str(REPO / target), run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=False)
    return caught[0]


@pytest.mark.parametrize("entry", list(TRAINERS))
def test_trainer_help_gives_every_flag_a_help_line_and_its_default(entry):
    parser = trainer_parser(entry)
    text = parser.format_help()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 80
    assert [a.option_strings[0] for a in flags if not (a.help or "").strip()] == []
    for flag in ("--epochs", "--lr", "--num_workers", "--model_arch"):
        action = next(a for a in flags if a.option_strings[0] == flag)
        entry_text = text[text.index(f"  {flag} "):].split("\n  --")[0]
        assert f"(default: {action.default})" in " ".join(entry_text.split()), flag
    assert not MARKUP.search(text), MARKUP.search(text)
    usage = text.split("\n\n")[0].splitlines()
    assert len(usage) <= USAGE_LINES, usage
    # On/off flags read --flag / --no_flag with the default in words, and both spellings parse.
    freeze = next(a for a in flags if a.dest == "freeze_backbone")
    assert isinstance(freeze, BoolFlag) and freeze.option_strings == ["--freeze_backbone", "--no_freeze_backbone"]
    assert "--freeze_backbone, --no_freeze_backbone" in text and "(default: off)" in text
    required = ["--data_path", "d", "--snapshot_dir", "s"]
    assert parser.parse_args([*required, "--freeze_backbone"]).freeze_backbone is True
    parser.set_defaults(freeze_backbone=True)  # as a --config file does
    assert parser.parse_args([*required, "--no_freeze_backbone"]).freeze_backbone is False


def test_trainer_help_keeps_the_examples_line_breaks():
    text = trainer_parser("late_masking/train.py").format_help()
    examples = text[text.index("examples:"):].splitlines()
    assert any(line.rstrip().endswith("\\") for line in examples)  # a continued command stays on two lines
    assert any(line.lstrip().startswith("--config configs/classifier/frozen.yaml") for line in examples)


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_help_has_no_markup_and_a_help_line_per_flag(tool, monkeypatch):
    parser = parser_of(tool, monkeypatch)
    assert not MARKUP.search(parser.format_help()), MARKUP.search(parser.format_help())
    assert [a.option_strings or a.dest for a in parser._actions if not (a.help or "").strip()] == []


def test_plain_strips_docstring_markup():
    assert plain("see :mod:`bgmask.export` and ``python -m x``; :class:`~a.B`") == "see bgmask.export and " \
                                                                                   "python -m x; a.B"


@pytest.mark.parametrize("argv, hint", [
    (["--masking", "lat"], "Did you mean 'late'?"),
    (["--epochz", "3"], "Did you mean '--epochs'"),
    (["--mask_source", "gtt"], "Did you mean 'gt'?"),
])
def test_a_mistyped_flag_or_choice_names_the_closest(argv, hint, capsys):
    parser = trainer_parser("python -m bgmask")
    with pytest.raises(SystemExit):
        parser.parse_args(["--data_path", "d", "--snapshot_dir", "s", *argv])
    assert hint in capsys.readouterr().err


def test_a_mistyped_model_strategy_or_benchmark_names_the_closest(tiny_cub_root, tmp_path):
    from bgmask import benchmarks

    with pytest.raises(ConfigError, match="Did you mean 'waterbirds'"):
        benchmarks.get("waterbird")
    with pytest.raises(ConfigError, match="Did you mean 'groupdro'"):
        strategies.get("group_dro")
    cfg, strategy = cli.parse_config(["none"], ["--data_path", str(tiny_cub_root), "--snapshot_dir",
                                                str(tmp_path / "r"), "--model_arch", "convnext_tinny"])
    with pytest.raises(ConfigError, match="Did you mean 'convnext_tiny'"):
        cfg.check(False)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------ a run's console and log
def early_main(argv):
    spec = importlib.util.spec_from_file_location("early_train", REPO / "early_masking_and_baseline/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def run_argv(root, run_dir, *extra):
    return ["--data_path", str(root), "--snapshot_dir", str(run_dir), "--model_arch", "convnext_atto",
            "--image_size", "32", "--batch_size", "4", "--num_workers", "0", "--epochs", "2", "--lr", "1e-3",
            "--seed", "0", "--aa", "", "--reprob", "0", "--checkpoint_every", "1", "--save_every_n_epochs", "1",
            *extra]


def test_a_run_states_its_recipe_ends_with_its_summary_and_keeps_train_log_across_a_resume(tiny_cub_root, tmp_path,
                                                                                            capsys):
    run_dir = tmp_path / "run"
    assert early_main(run_argv(tiny_cub_root, run_dir)) == 0
    out = capsys.readouterr().out
    results = json.loads((run_dir / "results.json").read_text())
    banner = next(line for line in out.splitlines() if line.startswith("run: "))
    for part in ("none", "convnext_atto @ 32 px", "weights: random init", "fine-tuning", "2 epochs", "lr 0.001",
                 "batch 4 x 1 = 4", str(run_dir)):
        assert part in banner, part
    assert "warning: no pretrained weights" in out and "without --config" in out
    block = out[out.index("==> done"):]
    assert block == summary(results, run_dir) + "\n"
    cub = results["cub_test"]
    assert f"cub_test     top-1 {cub['top1']:.1f} % [" in block
    assert f"({cub['num_images']} images; chance {100 / results['num_classes']:.1f} %)" in block
    worst = min(g["top1"] for g in results["waterbirds"]["groups"].values())
    assert "worst group" in block and f"{worst:.1f} % [" in block.split("worst group")[1]
    assert f"best epoch {results['best']['epoch']} of 2" in block
    assert f"results: {run_dir / 'results.json'}" in block
    log = (run_dir / "train.log").read_text()
    assert log.count("---- ") == 1 and " started: " in log and banner in log and block in log

    # Stopped after epoch 1 and started again: the log is appended to, not replaced, and says it resumed.
    (run_dir / "results.json").unlink()
    shutil.copy(run_dir / "epoch_1.pt", run_dir / "last.pt")
    assert early_main(run_argv(tiny_cub_root, run_dir)) == 0
    resumed = (run_dir / "train.log").read_text()
    assert resumed.startswith(log) and resumed[len(log):].startswith("---- ") and " resumed: " in resumed[len(log):]
    assert resumed.count("==> done") == 2


def test_a_run_with_a_config_file_and_weights_gets_no_warning():
    from bgmask.config import TrainConfig
    from bgmask.run.console import recipe_warning

    cfg = TrainConfig.from_flat({"data_path": "d", "snapshot_dir": "s", "masking": "none"}, None)
    none = {"source": "none", "location": None, "resampled": None}
    assert recipe_warning(cfg, none, []) is not None and "without --config" in recipe_warning(cfg, none, [])
    assert "without --config" not in recipe_warning(cfg, none, ["configs/classifier/frozen.yaml"])
    assert "without --config" not in recipe_warning(cfg, none, None)  # called from Python: no command line
    weighted = TrainConfig.from_flat({"data_path": "d", "snapshot_dir": "s", "masking": "none",
                                      "pretrained_path": "w.safetensors"}, None)
    assert recipe_warning(weighted, {"source": "file", "location": "w.safetensors", "resampled": None}, []) is None


def test_train_log_keeps_whole_lines_and_a_progress_bar_s_last_state(tmp_path, capsys):
    with ConsoleLog(tmp_path):
        print("epoch 1", flush=True)
        sys.stderr.write("bar 10%\rbar 50%\rbar 100%\n")
        sys.stderr.write("no newline at the end")
    with ConsoleLog(tmp_path, enabled=False):
        print("not kept")
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert lines[1:] == ["epoch 1", "bar 100%", "no newline at the end"]
    assert "bar 10%\rbar 50%" in capsys.readouterr().err  # the console itself is untouched


def test_the_summary_of_a_probe_run_says_whose_figures_lead_and_lists_every_head(tmp_path):
    sets = {"cub_test": {"top1": 50.0, "correct": 6, "num_images": 12}}
    results = {"masking": "late", "model_arch": "vit", "epoch": 2, "num_classes": 4, **sets,
               "best": {"epoch": 2, "selected_on": "cub_test", "probes": {"mean": {"epoch": 1}, "late:mean": {}}},
               "probes": {"mean": sets, "late:mean": {"cub_test": {**sets["cub_test"], "top1": 75.0}}}}
    block = summary(results, tmp_path)
    assert block.splitlines()[0].endswith("the sets below are probe head mean's")
    assert "probe mean       cub_test 50.0 (best epoch 1)" in block and "probe late:mean  cub_test 75.0" in block
