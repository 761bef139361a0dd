"""Start-up cost: ``import pydmabuf`` and the CLI next to a bare interpreter and the
imports a hand-written peer needs, all in fresh processes, in one run.

    python benchmarks/bench_import.py            # 20 runs of each, medians
    python benchmarks/bench_import.py --vm       # the same inside the real-kernel VM

Each row is the median wall time of starting a fresh interpreter that runs the row's
code, with the package's bytecode cached (as after an install: the first run of each
row is a warm-up that writes it). "over pass" subtracts the bare interpreter; the last
column is the ratio to ``import json`` (the VM's absolute times are emulated: compare
ratios there). ``-X importtime`` of ``import pydmabuf`` follows, its biggest entries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ROWS: list[tuple[str, list[str]]] = [
    ("python -c pass", ["-c", "pass"]),
    ("import fcntl, struct", ["-c", "import fcntl, struct"]),
    ("import json", ["-c", "import json"]),
    ("import pydmabuf", ["-c", "import pydmabuf"]),
    ("pydmabuf --help", ["-m", "pydmabuf", "--help"]),
    ("pydmabuf info", ["-m", "pydmabuf", "info"]),
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure what an installed package costs
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def median_ms(argv: list[str], runs: int, env: dict[str, str]) -> float:
    subprocess.run(argv, env=env, capture_output=True, check=True)  # warm-up: writes bytecode
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def importtime_top(env: dict[str, str], count: int) -> list[str]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pydmabuf"], env=env,
                         capture_output=True, text=True, check=True)
    rows = []
    for line in out.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    rows.sort(reverse=True)
    return [f"{us / 1000:8.1f} ms  {name}" for us, name in rows[:count]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="fresh processes per row (default 20)")
    parser.add_argument("--top", type=int, default=12, help="-X importtime entries to show (default 12)")
    parser.add_argument("--vm", action="store_true", help="run inside the real-kernel VM")
    args = parser.parse_args()
    if args.vm:
        from pydmabuf import vm

        # The checkout is read-only in the guest: a copy of the package (and this script)
        # in the guest's tmpfs can cache bytecode.
        script = (f"rm -rf /tmp/bench-import && mkdir /tmp/bench-import && "
                  f"cp -r {REPO / 'pydmabuf'} {REPO / 'benchmarks'} /tmp/bench-import/ && "
                  f"exec {sys.executable} /tmp/bench-import/benchmarks/bench_import.py "
                  f"--runs {args.runs} --top {args.top}")
        result = vm.run(["sh", "-c", script], env={"PYDMABUF_BACKEND": "kernel"}, stream=sys.stdout)
        return result.returncode
    env = _env()
    results = {label: median_ms([sys.executable, *argv], args.runs, env) for label, argv in ROWS}
    bare, json_ms = results["python -c pass"], results["import json"]
    print(f"Python {sys.version.split()[0]}, {os.uname().machine}, kernel {os.uname().release}; "
          f"median of {args.runs} fresh processes, bytecode cached; ms")
    print(f"{'start':24} {'wall':>7} {'over pass':>10} {'/ import json':>14}")
    for label, ms in results.items():
        print(f"{label:24} {ms:7.1f} {ms - bare:10.1f} {ms / json_ms:13.2f}x")
    print("\npython -X importtime -c 'import pydmabuf', cumulative, biggest first:")
    for line in importtime_top(env, args.top):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
