"""Public paths keep working after the move to sub-packages: the package root, xbt.toy, the console script, and
every module path README.md, the notebooks and the scripts used before (each answered from its new room)."""

import importlib
import importlib.metadata
import subprocess
import sys
import warnings

import pytest

import xbt
import xbt.compat

#: (old module, names imported from it) as README.md, the notebooks and the scripts used them before the move
OLD_IMPORTS = [
    ("xbt.adapter_config", ["ModelRef"]),
    ("xbt.app", ["SearchEngine", "launch"]),
    ("xbt.backfill", ["BackfillJob"]),
    ("xbt.calibration", ["calibration_set", "fit_calibration"]),
    ("xbt.config", ["Stage1Config", "Stage2Config", "BaselineConfig", "BASELINE_OPTIONS"]),
    ("xbt.datasets", ["RetrievalDataset", "load_dataset", "load_toy"]),
    ("xbt.distillation", ["distill_text_head"]),
    ("xbt.embed", ["embed_images", "embed_texts", "check_texts", "hash_texts"]),
    ("xbt.encoders", ["as_encoder", "load_clip"]),
    ("xbt.gallery", ["MixedGallery"]),
    ("xbt.gallery_commands", ["pair_vectors"]),
    ("xbt.io", ["atomic_path", "write_json"]),
    ("xbt.maps", ["orthogonal_procrustes"]),
    ("xbt.old_gallery", ["Gallery"]),
    ("xbt.planner", ["PLANS", "DisagreementModel", "plan_order"]),
    ("xbt.search", ["recall_at_k", "block_search"]),
    ("xbt.toy.models", ["MODEL_NAMES"]),
    ("xbt.toy.worlds", ["get_world"]),
    ("xbt.fit", ["fit", "fuse", "fit_map", "METHODS"]),
    ("xbt.stage1", ["Projection", "seeded", "train_projection"]),
    ("xbt.fusion", ["slerp", "select_alpha", "pair_groups", "image_ids", "FUSION_KINDS"]),
    ("xbt.adapter", ["Adapter", "FusionAdapter", "load_adapter", "ADAPTER_CLASSES"]),
    ("xbt.stream", ["iter_texts", "text_hashes", "TEXT_COLUMNS"]),
    ("xbt.toy.data", ["SCENES", "test_split", "pairs"]),
    ("xbt.toy.world", ["make_scene", "render", "captions"]),
]


@pytest.mark.parametrize("module, names", OLD_IMPORTS, ids=[m for m, _ in OLD_IMPORTS])
def test_an_old_import_path_still_gives_its_names(module, names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        found = importlib.import_module(module)
        for name in names:
            assert getattr(found, name) is not None, f"{module}.{name}"


@pytest.mark.parametrize("old", sorted(xbt.compat.MOVED))
def test_every_moved_module_imports_and_answers_its_main_module_s_names(old):
    module = importlib.import_module(f"xbt.{old}")
    main = importlib.import_module(f"xbt.{xbt.compat.MOVED[old][0]}")
    public = [n for n in vars(main) if not n.startswith("_") and not isinstance(vars(main)[n], type(sys))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert all(getattr(module, n) is getattr(main, n) for n in public)


def test_an_old_path_warns_once_and_names_the_new_home():
    module = xbt.compat.MovedModule("old_gallery", ("gallery.static",), {})
    with pytest.warns(DeprecationWarning, match="xbt.old_gallery moved to xbt.gallery.static"):
        assert module.Gallery is xbt.gallery.StaticGallery
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert module.StaticGallery is xbt.gallery.StaticGallery
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = module.nope


def test_the_root_functions_stay_functions_beside_their_old_module_paths():
    from xbt.evaluate import evaluate
    from xbt.fit import fuse

    assert callable(xbt.fit) and xbt.fit.__module__ == "xbt.method.fit" and xbt.fuse is fuse
    assert xbt.evaluate is evaluate and xbt.evaluate.__module__ == "xbt.evaluation.evaluate"


def test_the_package_root_and_the_toy_package_keep_their_names():
    for name in xbt.__all__:
        assert getattr(xbt, name) is not None, name
    for name in xbt.toy.__all__:
        assert getattr(xbt.toy, name) is not None, name
    assert (
        xbt.toy.load_toy(n=2).name == "toy"
        and xbt.load_dataset("toy", world="patterns", limit=2).name == "toy-patterns"
    )


def test_the_console_script_runs():
    run = subprocess.run(
        [sys.executable, "-c", "from xbt.cli import main; raise SystemExit(main(['--version']))"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and run.stdout.startswith("xbt "), run.stderr
    entry = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "xbt"]
    assert [e.value for e in entry] == ["xbt.cli:main"]
