"""Every benchmark in one run, one after the other, each in a fresh process so that one's
memory and threads do not slow the next.

    python benchmarks/bench_all.py [--threads 2]      # about 11 minutes on a 2-core CPU
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = ["bench_core.py", "bench_evaluate.py", "bench_flow.py", "bench_folder.py", "bench_engines.py", "bench_autocast.py"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    here, failed = Path(__file__).parent, []
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        start = time.perf_counter()
        if subprocess.run([sys.executable, str(here / script), "--threads", str(args.threads)]).returncode:
            failed.append(script)
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
