"""The execution profiles: what a cluster run asks SLURM for, and that the local profile (which
Snakemake loads on every run, with precedence) does not silently override the cluster one."""
import re

import yaml

from conftest import ROOT

SLURM = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
DEFAULT = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())


def test_default_profile_does_not_override_the_slurm_profile():
    clashes = {k: (v, SLURM[k]) for k, v in DEFAULT.items() if k in SLURM and SLURM[k] != v}
    assert not clashes, f"profiles/default would override profiles/slurm: {clashes}"


def test_slurm_profile_asks_for_memory_and_time_and_leaves_gpus_to_the_rules():
    assert SLURM["executor"] == "slurm"
    assert SLURM["keep-going"] and SLURM["rerun-incomplete"] and SLURM["retries"] >= 1
    defaults = SLURM["default-resources"]
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb"} <= set(defaults)
    for rule in ("train", "train_monolithic"):
        res = SLURM["set-resources"][rule]
        # Memory grows with each attempt and starts above the default; runtime is longer.
        assert re.fullmatch(r"\d+ \* attempt", str(res["mem_mb"]))
        assert int(str(res["mem_mb"]).split()[0]) > defaults["mem_mb"]
        assert res["runtime"] > defaults["runtime"]
    assert SLURM["set-threads"]["sfm"] > 1
    # A GPU here would override the rules' per-scene choice (a `train.device: cpu` scene, the
    # evaluation that renders on the CPU): the rules ask for GPUs, the profile never does.
    assert not [rule for rule, res in SLURM["set-resources"].items() if "gpu" in res or "gres" in res]
    assert "gpu" not in defaults


def test_light_rules_run_locally():
    snakefile = (ROOT / "Snakefile").read_text()
    block = re.search(r"^localrules:\n((?:    \w+,\n)+)", snakefile, re.M)
    assert block, "no localrules: block in the Snakefile"
    local = set(re.findall(r"\w+", block.group(1)))
    assert {"all", "ingest", "georef"} <= local
    assert not local & {"sfm", "train", "train_monolithic", "partition", "evaluate"}
