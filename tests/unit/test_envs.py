"""Static check of the per-stage conda environments (conda channels are unreachable where the tests
run, so the envs are never built here): every rule runs its script in an env that provides every
third-party module the script imports, directly or through the aerosplat modules it uses (any import
anywhere in those modules counts, lazy ones included)."""
import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PACKAGE = ROOT / "workflow" / "aerosplat"
# conda-forge names whose PyPI distribution is called differently.
CONDA_TO_PYPI = {"python-pdal": "pdal", "lazrs-python": "lazrs", "pytorch": "torch"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def env_packages(env_file: Path) -> set[str]:
    """Normalised distribution names an env file installs (conda and pip sections)."""
    spec = yaml.safe_load(env_file.read_text())
    names = set()

    def add(requirement):
        name = re.split(r"[\s=<>!~\[;]", requirement.strip(), maxsplit=1)[0]
        if name and not name.startswith("-"):
            names.add(_norm(CONDA_TO_PYPI.get(name, name)))

    for dep in spec.get("dependencies") or []:
        if isinstance(dep, dict):
            for requirement in dep.get("pip") or []:
                add(requirement)
        else:
            add(dep)
    return names


def rule_envs_and_scripts(rules_dir: Path) -> dict[str, tuple[str | None, str | None]]:
    """{rule: (conda env path, script path)} from the .smk files, `use rule ... as ... with:` included
    (the derived rule keeps what it does not override)."""
    rules = {}
    for smk in sorted(rules_dir.glob("*.smk")):
        text = smk.read_text()
        heads = list(re.finditer(r"^(?:rule|checkpoint) (\w+):|^use rule (\w+) as (\w+) with:", text, re.M))
        for i, head in enumerate(heads):
            body = text[head.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]

            def directive(key):
                m = re.search(rf"^    {key}:\s*\n\s+\"([^\"]+)\"", body, re.M)
                return str((smk.parent / m.group(1)).resolve()) if m else None

            if head.group(1):
                rules[head.group(1)] = (directive("conda"), directive("script"))
            else:
                conda, script = rules[head.group(2)]
                rules[head.group(3)] = (directive("conda") or conda, directive("script") or script)
    return rules


def _module_file(dotted: str, package_dir: Path) -> Path | None:
    parts = dotted.split(".")[1:]  # below "aerosplat"
    base = package_dir.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(script: Path, package_dir: Path = PACKAGE) -> dict[str, str]:
    """{top-level module: file that imports it} over the script and the aerosplat modules it reaches."""
    found: dict[str, str] = {}
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        in_package = package_dir in path.parents
        dotted_here = ("aerosplat." + ".".join(path.relative_to(package_dir).with_suffix("").parts)
                       if in_package else "")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative import inside the package
                    parent = dotted_here.split(".")[: -node.level] if not path.name == "__init__.py" \
                        else dotted_here.split(".")[: len(dotted_here.split(".")) - node.level + 1]
                    module = ".".join(parent + ([module] if module else []))
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                local = path.parent / f"{top}.py"  # a helper beside the script (scripts/_repo_path.py)
                if not in_package and local.is_file():
                    todo.append(local)
                elif top == "aerosplat":
                    target = _module_file(name, package_dir)
                    if target:
                        todo.append(target)
                elif top and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, str(path.relative_to(ROOT) if ROOT in path.parents else path))
        if in_package and path.name != "__init__.py":
            init = path.parent / "__init__.py"
            if init.is_file():
                todo.append(init)
    return found


def missing_from_env(script: Path, env_file: Path, package_dir: Path = PACKAGE) -> list[str]:
    provided = env_packages(env_file)
    dists = packages_distributions()
    missing = []
    for module, where in sorted(third_party_imports(script, package_dir).items()):
        candidates = {_norm(d) for d in dists.get(module, [])} or {_norm(module)}
        if not candidates & provided:
            missing.append(f"{module} (imported in {where}; distribution {'/'.join(sorted(candidates))})")
    return missing


RULES = rule_envs_and_scripts(ROOT / "rules")
SCRIPTED = {name: v for name, v in RULES.items() if v[1]}


def test_rules_were_found_and_each_script_runs_in_a_conda_env():
    assert {"sfm", "georef", "partition", "train", "train_monolithic", "merge", "evaluate"} <= set(SCRIPTED)
    no_env = [name for name, (conda, _) in SCRIPTED.items() if not conda]
    assert not no_env, f"rules without a conda: directive: {no_env}"
    for name, (conda, script) in SCRIPTED.items():
        assert Path(conda).is_file(), f"rule {name}: env {conda} does not exist"
        assert Path(script).is_file(), f"rule {name}: script {script} does not exist"


@pytest.mark.parametrize("rule", sorted(SCRIPTED))
def test_rule_env_provides_every_import_of_its_script(rule):
    conda, script = SCRIPTED[rule]
    missing = missing_from_env(Path(script), Path(conda))
    assert not missing, (f"rule {rule}: {Path(conda).relative_to(ROOT)} lacks what "
                         f"{Path(script).relative_to(ROOT)} imports: {missing}")


def test_train_env_does_not_carry_the_sfm_stack():
    """Per-stage envs: each gets only what it needs."""
    assert "pycolmap" not in env_packages(ROOT / "envs" / "train.yaml")
    assert "torch" not in env_packages(ROOT / "envs" / "sfm.yaml")


@pytest.mark.parametrize("env", sorted(p.name for p in (ROOT / "envs").glob("*.yaml")))
def test_every_env_file_pins_python_from_conda_forge(env):
    spec = yaml.safe_load((ROOT / "envs" / env).read_text())
    assert spec["channels"][0] == "conda-forge"
    assert any(isinstance(d, str) and re.match(r"python\s*=", d) for d in spec["dependencies"])


@pytest.mark.parametrize("rule", sorted(SCRIPTED))
def test_scripts_import_the_package_from_the_checkout(rule):
    """The envs do not install aerosplat: each script puts the checkout on sys.path first."""
    text = Path(SCRIPTED[rule][1]).read_text()
    assert "import _repo_path" in text
    assert text.index("import _repo_path") < text.index("aerosplat")


def test_stage_envs_named_by_the_design_carry_their_key_packages():
    expected = {
        "sfm": {"pycolmap"},
        "train": {"torch", "gsplat", "pytorch-msssim"},
        "nerfstudio": {"nerfstudio", "gsplat"},
        "gis": {"pdal", "rasterio", "laspy", "pyproj"},
        "mesh": {"open3d", "trimesh"},
    }
    for env, packages in expected.items():
        assert packages <= env_packages(ROOT / "envs" / f"{env}.yaml"), env


def test_the_check_fails_when_an_import_is_missing_from_the_env(tmp_path):
    pkg = tmp_path / "aerosplat"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "stage.py").write_text("import numpy\n\ndef later():\n    import scipy.ndimage\n")
    script = tmp_path / "script.py"
    script.write_text("from aerosplat import stage\nimport os\n")
    env = tmp_path / "env.yaml"
    env.write_text("channels: [conda-forge]\ndependencies:\n  - python =3.11\n  - numpy >=1.26\n")
    missing = missing_from_env(script, env, package_dir=pkg)
    assert len(missing) == 1 and missing[0].startswith("scipy (imported in")
    env.write_text(env.read_text() + "  - pip:\n      - scipy >=1.11\n")
    assert missing_from_env(script, env, package_dir=pkg) == []
