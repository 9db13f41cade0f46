"""The benchmarks run end to end at a small size (the full runs, `python benchmarks/bench_extract.py`
~15 minutes and `python benchmarks/bench_load.py` ~7, keep their figures in benchmarks/RESULTS.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
BENCHMARK = BENCHMARKS / "bench_extract.py"


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


@pytest.mark.slow
def test_quick_load_benchmark_reports_every_loader():
    result = subprocess.run(
        [sys.executable, BENCHMARKS / "bench_load.py", "--quick", "--no-write-results"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| w(\d) N=(\d+) \| (.+?) \| (\d+) \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \|", result.stdout, re.M)
    methods = {(workers, method) for workers, _, method, _, _, _ in rows}
    for workers in ("0", "2"):
        for method in ("png folder", "jpeg q90 folder", "hdf5 gzip", "PatchDataset zstd", "PatchDataset jpeg",
                       "ShardShuffledPatches zstd", "ShardShuffledPatches jpeg", "ShardShuffledPatches zstd HWC",
                       "ShardShuffledPatches zstd reuse", "ShardShuffledPatches zstd HWC reuse",
                       "webdataset .jpg", "webdataset .npy"):
            assert (workers, method) in methods
    assert all(int(rate) > 0 and float(first) > 0 for _, _, _, rate, first, _ in rows)
    targets = result.stdout.partition("## Targets")[2]
    assert len(re.findall(r"\((PASS|FAIL) (≥|<) ", targets)) == 9


@pytest.mark.slow
def test_quick_add_array_benchmark_reports_both_rates():
    result = subprocess.run(
        [sys.executable, BENCHMARKS / "bench_add_array.py", "--patches", "240", "--patch-size", "64",
         "--repeats", "1", "--workers", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"reading alone .*: +[\d,]+ patches/s", result.stdout)
    assert len(re.findall(r"add_array, .* [\d,]+ patches/s  \([\d.]+ of reading alone\)", result.stdout)) == 2


@pytest.mark.slow
def test_quick_quality_benchmark_reports_extraction_with_and_without():
    result = subprocess.run(
        [sys.executable, BENCHMARKS / "bench_quality.py", "--quick", "--patches", "64", "--repeats", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"measure_patches / extraction estimate: [\d.]+ %", result.stdout)
    rows = re.findall(r"^\| 1 \| (zstd|jpeg) \| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \|", result.stdout, re.M)
    assert {codec for codec, *_ in rows} == {"zstd", "jpeg"}
    assert all(int(n) > 0 and int(without) > 0 and int(with_) > 0 for _, n, without, with_, _ in rows)


@pytest.mark.slow
def test_quick_tiling_benchmark_reports_coordinates_and_pixels():
    result = subprocess.run(  # hs2p and TIAToolbox need their own environment: wsizarr alone here
        [sys.executable, BENCHMARKS / "bench_tiling.py", "--quick", "--no-peers", "--no-write-results"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| (wsizarr \w+) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \| .+? \| ([\d.]+) \| ([\d,]+) \|",
                      result.stdout, re.M)
    assert {method for method, *_ in rows} == {"wsizarr zstd", "wsizarr jpeg"}
    assert all(int(n.replace(",", "")) > 100 and int(plan_ms.replace(",", "")) > 0 and int(pixels.replace(",", "")) > 0
               for _, n, plan_ms, _, _, pixels in rows)
    assert "## Whole-slide tiling (`python benchmarks/bench_tiling.py --quick`" in result.stdout
