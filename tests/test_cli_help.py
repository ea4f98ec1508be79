"""The first hour with the command line: a help that answers without torch, flags that explain themselves, toy files
to try every command on, and errors that name the fix."""

import json
import os
import subprocess
import sys

import pytest

from xbt.cli import COMMANDS, build_parser, main


def _subparsers(parser):
    """(path, parser) for every subcommand at every depth."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                for deeper, subsub in _subparsers(sub):
                    yield f"{name} {deeper}", subsub


def _run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_help_and_the_package_root_load_no_torch():
    """``xbt --help`` lists every command from the table alone; ``import xbt`` defers each name to its first use."""
    out = _run_python(
        "import sys\n"
        "from xbt.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    assert out.rstrip().endswith("TORCH False")
    for name in COMMANDS:
        assert f"    {name} " in out
    out = _run_python(
        "import sys, xbt\n"
        "print('torch' in sys.modules)\n"
        "print(xbt.fit.__module__, xbt.toy.text_corpus(2)[0] != '', 'torch' in sys.modules, 'fit' in dir(xbt))\n"
    )
    assert out.split() == ["False", "xbt.method.fit", "True", "True", "True"]


def test_every_command_and_flag_explains_itself():
    parser = build_parser()
    seen = dict(_subparsers(parser))
    assert set(COMMANDS) <= set(seen) and {"toy models", "toy data", "gallery build"} <= set(seen)
    for path, sub in seen.items():
        assert sub.description, f"xbt {path} has no description"
        for action in sub._actions:
            if not action.option_strings or action.help == "==SUPPRESS==":
                continue
            flag = action.option_strings[-1]
            assert action.help and action.help.strip(), f"xbt {path} {flag} has no help"
            assert "__" not in str(action.metavar or ""), f"xbt {path} {flag} shows an internal name"
            assert action.help.count("(default") <= 1, f"xbt {path} {flag} prints its default twice"


def test_a_lazy_parser_lists_the_others_and_builds_only_the_one_that_runs(capsys):
    parser = build_parser("toy")
    choices = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert set(choices) == set(COMMANDS)
    assert choices["toy"].description and not choices["fit"].description  # fit is listed, not built
    assert main(["toy", "models"]) == 0
    out = capsys.readouterr().out
    for name in ("xbt-toy-old", "xbt-toy-new", "xbt-patterns-wide-old", "patterns-wide"):
        assert name in out


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "data"
    assert main(["toy", "data", "--out", str(out), "--texts", "400", "--pairs", "12", "--gallery", "6"]) == 0
    return out


def test_toy_data_writes_what_fit_eval_and_gallery_read(toy_data, capsys):
    import datasets

    texts = (toy_data / "texts.txt").read_text().splitlines()
    assert len(texts) == 400
    pairs = datasets.load_from_disk(str(toy_data / "pairs"))
    assert pairs.column_names == ["image", "caption"] and len(pairs) == 12 * 5  # one row per caption
    assert len(list((toy_data / "images").glob("*.png"))) == 6
    assert len((toy_data / "captions.txt").read_text().splitlines()) == 30
    adapter = toy_data.parent / "adapter"
    fit = ["fit", "--old", "xbt-toy-old", "--new", "xbt-toy-new", "--texts", str(toy_data / "texts.txt")]
    status = main([*fit, "--pairs", str(toy_data / "pairs"), "--method", "procrustes", "--out", str(adapter)])
    assert status == 0 and (adapter / "xbt_config.json").is_file()
    # NAME=FOLDER without --new: the new model comes from the adapter's config, not from the raw spec
    capsys.readouterr()
    report = toy_data.parent / "report"
    status = main(
        ["eval", "--old", "xbt-toy-old", "--adapter", f"mine={adapter}", "--limit", "20"]
        + ["--no-query-cost", "--quiet", "--out", str(report)]
    )
    assert status == 0
    assert set(json.loads((report / "report.json").read_text())["methods"]) == {"mine"}


def test_toy_data_and_eval_refuse_what_does_not_apply(tmp_path, capsys):
    assert main(["toy", "data", "--out", str(tmp_path / "d"), "--pairs", "5000"]) == 2
    assert "--pairs must be between 4 and 2000" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    status = main(
        ["eval", "--old", "xbt-toy-old", "--new", "xbt-toy-new", "--dataset", "flickr30k"] + ["--world", "x"]
    )
    assert status == 2 and "--world 'x' applies to --dataset toy only" in capsys.readouterr().err


def test_an_unknown_model_names_the_kinds_of_spec_not_every_open_clip_config(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("a\nb\n")
    status = main(["fit", "--old", "toy", "--new", "xbt-toy-new", "--texts", str(tmp_path / "t.txt")] + ["--out", "x"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1
    assert "xbt-toy-old" in err and "xbt toy models" in err and "coca_ViT" not in err


def test_export_without_the_extra_names_the_extra(monkeypatch, tmp_path):
    import xbt
    from xbt.serving import export

    monkeypatch.setitem(sys.modules, "onnx", None)  # what an import of a package not installed meets
    old, new = xbt.toy.load_clips()
    adapter = xbt.fit(old, new, xbt.toy.text_corpus(50), method="procrustes", verbose=False)
    with pytest.raises(xbt.XBTError, match=r"needs onnx, not installed here.*xbt\[export\]"):
        adapter.export("onnx", tmp_path / "served")
    assert not (tmp_path / "served").exists() and export.EXPORT_NEEDS == ("onnx", "onnxruntime", "tokenizers")


def test_stage1_says_how_many_distinct_texts_it_read(capsys):
    import xbt

    old, new = xbt.toy.load_clips()
    texts = xbt.toy.text_corpus(300)
    xbt.fit(old, new, texts + texts[:50], epochs=1, cache=False, verbose=True)
    out = capsys.readouterr().out
    assert f"read 350 texts, {len(set(texts)):,} distinct" in out


def test_the_command_waits_passively_unless_told_otherwise():
    """OpenMP threads that spin while waiting made a first demo ten times slower beside one other busy process."""
    code = (
        "import os, sys\n"
        "from xbt.cli import main\n"
        "main(['toy', 'models'])\n"
        "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert run.stdout.split()[-2:] == ["PASSIVE", "True"]  # set before the command's torch import
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert run.stdout.split()[-2] == "ACTIVE"


def test_the_lazy_root_the_stub_and_all_name_the_same_things():
    """``__all__``, the lazy table and the type checkers' stub list one set of public names, each resolvable."""
    import ast
    from pathlib import Path

    import xbt
    from xbt.compat import ROOT_NAMES

    eager = {"toy", "XBTError", "__version__"}  # the package and what the root imports at once
    assert set(xbt.__all__) == set(ROOT_NAMES) | eager
    stub = ast.parse((Path(xbt.__file__).parent / "__init__.pyi").read_text())
    stubbed = {a.asname or a.name for node in stub.body if isinstance(node, ast.ImportFrom) for a in node.names}
    assert set(xbt.__all__) <= stubbed
    for name in xbt.__all__:
        assert getattr(xbt, name) is not None and name in dir(xbt)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = xbt.nope
