"""`make bench`: every benchmark, each writing its section of benchmarks/RESULTS.md."""

from benchmarks import bench_spectrum

bench_spectrum.main([])
