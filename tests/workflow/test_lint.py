"""The workflow passes Snakemake's own linter."""

from conftest import ROOT, run_snakemake


def test_snakemake_lint_is_clean():
    proc = run_snakemake(ROOT, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Congratulations, your workflow is in a good condition!" in out
