"""`make bench`: every CPU benchmark, each writing its section of benchmarks/RESULTS.md (GPU cases run too
when CUDA is present; on a lent GPU machine use benchmarks/gpu_check.sh). Last, the load test (bench_load, with
its defaults) when PostgreSQL and Redis are running."""

import sys

from benchmarks import (
    bench_backdoor,
    bench_checkpoint_embed,
    bench_embed,
    bench_equivariance,
    bench_equivariance_ceiling,
    bench_folder_embed,
    bench_load,
    bench_pool_natural,
    bench_probes,
    bench_sandbox,
    bench_spectrum,
)

for bench in (bench_spectrum, bench_probes, bench_embed, bench_checkpoint_embed, bench_folder_embed, bench_sandbox,
              bench_equivariance, bench_equivariance_ceiling, bench_backdoor, bench_pool_natural):
    print(f"== {bench.__name__}", flush=True)
    bench.main(sys.argv[1:])
print(f"== {bench_load.__name__}", flush=True)
bench_load.main([], skip_without_services=True)
