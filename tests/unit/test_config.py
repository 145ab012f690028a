from pathlib import Path

import pytest
import yaml

from aerosplat.config import load_scene, validate_scene
from aerosplat.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "schema.yaml"


def test_shipped_scenes_validate_and_get_defaults():
    for path in sorted((ROOT / "config" / "scenes").glob("*.yaml")):
        cfg = load_scene(path, SCHEMA)
        assert cfg["sfm"]["matcher"] in ("auto", "exhaustive", "spatial")
        assert cfg["georef"]["gps_sigma_h_m"] > 0
        assert "images" in cfg


def test_misspelt_key_names_file_key_and_suggestion(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"images": "x", "sfm": {"matchr": "exhaustive"}}))
    with pytest.raises(InputError) as e:
        load_scene(p, SCHEMA)
    msg = str(e.value)
    assert str(p) in msg and "sfm.matchr" in msg and "did you mean `matcher`" in msg


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(InputError) as e:
        validate_scene({"images": "x", "ingest": {"max_image_size": "big"}}, SCHEMA, source="scene.yaml")
    assert "ingest.max_image_size" in str(e.value) and "scene.yaml" in str(e.value)


def test_bad_enum_and_missing_images(tmp_path):
    with pytest.raises(InputError) as e:
        validate_scene({"sfm": {"mapper": "magic"}}, SCHEMA, source="s.yaml")
    assert "sfm.mapper" in str(e.value) and "'images' is a required property" in str(e.value)


def test_config_readme_table_matches_schema():
    """config/README.md's key table is generated from the schema; regenerate it when the schema changes:
    python -c 'from aerosplat.config import *; print(schema_table(load_yaml("config/schema.yaml")))'"""
    from aerosplat.config import load_yaml, schema_table

    assert schema_table(load_yaml(SCHEMA)) in (ROOT / "config" / "README.md").read_text()


def test_test_scenes_are_the_shipped_scenes_but_for_training():
    """tests/scenes/ holds the shipped scenes at the test suite's settings: the same photos, SfM,
    georeferencing, partitions and products, only the training may be lighter (and the tests also
    train the one-partition quality reference, `evaluate.compare_monolithic`, which the demo leaves
    out for time); so what the workflow tests prove is proven for the shipped scene files."""
    tests = sorted((ROOT / "tests" / "scenes").glob("*.yaml"))
    assert {p.name for p in tests} == {"sample.yaml", "brighton_beach.yaml"}
    for path in tests:
        ours = load_scene(path, SCHEMA)
        shipped = load_scene(ROOT / "config" / "scenes" / path.name, SCHEMA)
        differ = {k for k in set(ours) | set(shipped) if ours.get(k) != shipped.get(k)}
        assert differ <= {"description", "train", "evaluate"}, (path.name, differ)
        assert {k for k in ours["evaluate"] if ours["evaluate"][k] != shipped["evaluate"][k]} <= {"compare_monolithic"}
        lighter = {k for k in ours["train"] if ours["train"][k] != shipped["train"][k]}
        assert lighter <= {"steps", "image_scale", "sh_degree_interval"}, (path.name, lighter)
        assert ours["train"]["steps"] <= shipped["train"]["steps"]
        assert ours["train"]["image_scale"] <= shipped["train"]["image_scale"]
