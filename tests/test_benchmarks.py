"""The extraction benchmark runs end to end (at a small size: the full run is `python
benchmarks/bench_extract.py`, ~15 minutes, and its figures live in benchmarks/RESULTS.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_extract.py"


@pytest.mark.slow
def test_quick_benchmark_reports_every_method():
    result = subprocess.run(
        [sys.executable, BENCHMARK, "--quick", "--no-write-results", "--skip-rss"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| (.+?) \(N=(\d+)\) \| (.+?) \| (\d+) \|", result.stdout, re.M)
    methods = {method for _, _, method, _ in rows}
    assert {"png", "jpeg", "hdf5", "read_region", "wsizarr zstd w1"} <= methods
    assert any(m.startswith("wsizarr jpegxl") for m in methods)
    assert all(int(n) > 0 and int(rate) > 0 for _, n, _, rate in rows)
    assert "## Targets" in result.stdout and "× the PNG recipe" in result.stdout
