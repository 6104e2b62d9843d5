"""benchmarks/gpu_check.py in its tiny CPU mode: every row is there with finite figures, the DDP line says
two processes train like one, and a failing row does not stop the others."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def test_tiny_run_writes_every_row(tmp_path):
    gc = _module()
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["section"], r["name"]) for r in rows] == gc.planned_rows()
    assert len(rows) == 1 + 1 + 2 * 2 + 2 * 3
    for r in rows:
        assert r["error"] is None, r
        assert r["peak_mem_mb"] > 0 and r["seconds"] > 0
        assert all(math.isfinite(x) for x in _numbers(r)), r
    by_name = {r["name"]: r for r in rows}
    ddp = by_name["2 processes = 1 process"]
    assert ddp["equal"] is True and ddp["backend"] == "gloo" and ddp["steps"] == 12
    for r in rows:
        if r["section"] == "sample":
            assert r["nfe"] == gc.TINY["nfe"] and r["images_per_s"] > 0
            assert r["overhead"] > 0.5          # wall time over NFE x the network's own time (timing noise)
        if r["section"] == "train":
            assert r["steps_per_s"] > 0 and r["batch"] == gc.TINY["train_batch"]
    assert by_name["inception features"]["n"] == gc.TINY["fid_n"]
    assert "| ddp | 2 processes = 1 process | equal (gloo" in done.stdout    # the printed table


def test_a_failing_row_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    gc = _module()

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (pretend)")

    monkeypatch.setattr(gc, "measure_fid", broken)
    out = tmp_path / "g.json"
    assert gc.main(["--tiny", "--sections", "fid,sample", "--out", str(out)]) == 1   # a row failed
    rows = json.loads(out.read_text())["rows"]
    assert [r["section"] for r in rows] == ["fid"] + ["sample"] * 4
    assert rows[0]["error"] == "RuntimeError: CUDA out of memory (pretend)"
    assert all(r["error"] is None and r["images_per_s"] > 0 for r in rows[1:])
    assert "RuntimeError: CUDA out of memory (pretend)" in capsys.readouterr().out


def test_rows_after_the_budget_are_skipped(tmp_path):
    gc = _module()
    out = tmp_path / "g.json"
    assert gc.main(["--tiny", "--sections", "sample", "--budget-s", "0", "--out", str(out)]) == 1
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(r["error"].startswith("skipped: the time budget") for r in rows)
