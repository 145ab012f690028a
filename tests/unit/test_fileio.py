"""Atomic outputs: a killed job's temporaries do not stay behind for good."""

from aerosplat.fileio import atomic_path, write_json


def test_a_killed_runs_partials_are_removed_when_the_job_runs_again(tmp_path):
    # What a SIGKILL inside atomic_path leaves: '.<name>.<random>.partial' beside the output.
    stale_dir = tmp_path / ".sparse.k3j2.partial"
    (stale_dir / "sparse").mkdir(parents=True)
    (stale_dir / "sparse" / "points3D.bin").write_bytes(b"x" * 1000)
    stale_file = tmp_path / ".report.json.a1b2.partial"
    stale_file.mkdir()
    other = tmp_path / ".database.db.zz.partial"  # another output's temporary: not ours to remove
    other.mkdir()
    with atomic_path(tmp_path / "sparse") as tmp:
        assert not stale_dir.exists()
        tmp.mkdir()
    write_json(tmp_path / "report.json", {"ok": True})
    assert not stale_file.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".database.db.zz.partial", "report.json", "sparse"]
