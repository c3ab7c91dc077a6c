"""benchmarks/scale.py runs end to end on a small ViT: every command appears with positive wall, limit and
memory figures, its ratios and its target checks.

The benchmark runs as its own process (not main() in this one): a child's ru_maxrss counts the memory of the
process it was started from, and pytest has torch imported. About a minute on 2 cores (some 20 fresh
processes that import torch), hence ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

COMMANDS = ["find random", "find magnitude", "stretch", "squeeze", "info", "compare", "export", "import"]


@pytest.mark.slow
def test_quick_run_reports_every_command(tmp_path) -> None:
    arch = "vit-d4-w64-h4-p16"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick", "--arch", arch,
                           "--json", "--work", str(tmp_path / "work")],
                          check=False, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["machine"]["cpus"] == os.cpu_count() and result["machine"]["torch"]
    assert result["baselines_mb"]["torch"] > result["baselines_mb"]["numpy"] > 0
    rows = result["rows"]
    assert [r["command"] for r in rows] == COMMANDS and {r["arch"] for r in rows} == {arch}
    for r in rows:
        assert r["wall_s"] > 0 and r["limit_s"] > 0 and r["peak_mb"] > 0 and r["limit_peak_mb"] > 0, r
        assert r["largest_file_mb"] > 0 and r["time_ratio"] == pytest.approx(r["wall_s"] / r["limit_s"]), r
        assert isinstance(r["mem_ratio"], float) and isinstance(r["time_ok"], bool) and isinstance(r["mem_ok"], bool)
        assert r["baseline"] == ("numpy" if r["command"] in ("info", "stretch", "squeeze", "compare") else "torch")
    # --work keeps the files: the tickets, the export's run folder and the import's ticket
    folder = tmp_path / "work" / arch
    assert (folder / "random.safetensors").is_file() and (folder / "exported" / "mask.pth").is_file()
    assert (folder / "imported.safetensors").is_file()
    assert not list(folder.glob("*.limit")), "the limits' outputs are removed"
