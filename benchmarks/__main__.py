"""`make bench`: every CPU benchmark, each writing its section of benchmarks/RESULTS.md (GPU cases run too
when CUDA is present; on a lent GPU machine use benchmarks/gpu_check.sh)."""

import sys

from benchmarks import bench_backdoor, bench_embed, bench_equivariance, bench_probes, bench_spectrum

for bench in (bench_spectrum, bench_probes, bench_embed, bench_equivariance, bench_backdoor):
    print(f"== {bench.__name__}", flush=True)
    bench.main(sys.argv[1:])
