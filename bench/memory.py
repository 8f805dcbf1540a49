"""Peak memory (RSS) of the running app: ``prefloop serve`` with its queue filler on the bundled model.

    python bench/memory.py                          # fresh home; first start, then the steady start x2 dtypes
    python bench/memory.py --queue-target 8 --dtypes default     # a quick check
    python bench/memory.py --home /tmp/pf-home --skip-first-start   # reuse an initialised home

Starts the real app (``python -c 'from prefloop.cli import cli; cli()' serve``, as the ``prefloop`` command
does) in a temporary home, waits until its background sampler has filled the pair queue
(``queue_target`` pairs, 160-token responses), opens the app's page over HTTP, and reads the
app process's peak resident memory (VmHWM in /proc/PID/status; children are added if any).
Conditions, each its own server process, in one run:

- first start: an empty home, so the app converts the bundled GGUF to v0 itself first;
- steady start, sampler in ``default`` dtype (bfloat16 on CPUs with native bf16), then in
  ``float32`` (what the sampler used before; the baseline of the ratios), each after the
  queue has been emptied so the sampler fills it again.

Target: under 2 GiB. Peak RSS of a training round's child process is measured by
bench/round_time.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def children_peak_kib(pid: int) -> int:
    """Sum of children's VmHWM (the app starts none today; counted in case it ever does)."""
    total = 0
    try:
        for child in Path(f"/proc/{pid}/task").glob("*/children"):
            for child_pid in child.read_text().split():
                try:
                    total += memory_kib(int(child_pid)).get("VmHWM", 0)
                except OSError:
                    pass
    except OSError:
        pass
    return total


def queued(home: Path) -> int:
    os.environ["PREFLOOP_HOME"] = str(home)
    from prefloop.db.store import Store

    store = Store()
    active = store.active_version()
    return store.queued_pairs(active["id"]) if active else 0


def empty_queue(home: Path) -> int:
    os.environ["PREFLOOP_HOME"] = str(home)
    from prefloop.db.store import Store

    return Store().retire_open_pairs(except_version_id=-1)


def run_server(home: Path, name: str, dtype: str, queue_target: int, timeout_s: float) -> dict:
    """Start the app, wait for a full queue, return its memory figures; always stops it."""
    port = free_port()
    env = {**os.environ, "PREFLOOP_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)  # as a user starts it: the app picks its own threads
    env.pop("PREFLOOP_SAMPLING_DTYPE", None)
    if dtype != "default":
        env["PREFLOOP_SAMPLING_DTYPE"] = dtype
    log_path = home / f"serve-{name.replace(' ', '-')}.log"
    command = [sys.executable, "-c", "from prefloop.cli import cli; cli()", "serve", "--port", str(port)]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    peak_rss = 0
    page_ok = False
    full_at = None
    try:
        while time.perf_counter() - started < timeout_s:
            if server.poll() is not None:
                raise SystemExit(f"{name}: the app exited with {server.returncode}; see {log_path}")
            figures = memory_kib(server.pid)
            peak_rss = max(peak_rss, figures.get("VmRSS", 0))
            if not page_ok:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                        page_ok = response.status == 200
                except OSError:
                    pass
            if page_ok and queued(home) >= queue_target:
                full_at = time.perf_counter() - started
                time.sleep(2.0)  # the filler's pass after the last batch
                break
            time.sleep(0.5)
        figures = memory_kib(server.pid)
        return {
            "name": name,
            "hwm": figures["VmHWM"] * 1024 + children_peak_kib(server.pid) * 1024,
            "rss": figures["VmRSS"] * 1024,
            "queued": queued(home),
            "seconds": full_at if full_at is not None else float("nan"),
            "page": page_ok,
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="PREFLOOP_HOME to use (default: a new temp folder)")
    parser.add_argument("--queue-target", type=int, default=16, help="pairs the sampler must have ready")
    parser.add_argument("--dtypes", default="default,float32", help="sampler dtypes for the steady starts")
    parser.add_argument("--skip-first-start", action="store_true", help="home already initialised")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per server")
    args = parser.parse_args(argv)
    home = (args.home or Path(tempfile.mkdtemp(prefix="prefloop-mem-"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFLOOP_HOME"] = str(home)
    sys.path.insert(0, str(ROOT))
    from prefloop.db.store import Store

    Store().set_setting("queue_target", args.queue_target)
    print(f"home={home} queue_target={args.queue_target} cpus={os.cpu_count()}", flush=True)
    results = []
    if not args.skip_first_start:
        results.append(run_server(home, "first start (converts v0)", "default", args.queue_target, args.timeout))
        print(results[-1], flush=True)
    for dtype in [d.strip() for d in args.dtypes.split(",")]:
        empty_queue(home)
        results.append(run_server(home, f"steady start, sampler {dtype}", dtype, args.queue_target, args.timeout))
        print(results[-1], flush=True)

    base = next((r for r in results if r["name"].endswith("float32")), results[0])
    print()
    print("| app process | peak RSS (VmHWM) | RSS at the end | queue filled in | under 2 GiB | vs float32 sampler |")
    print("|---|---:|---:|---:|---|---:|")
    for r in results:
        print(f"| {r['name']} | {r['hwm'] / GIB:.2f} GiB | {r['rss'] / GIB:.2f} GiB | {r['seconds']:.0f} s "
              f"| {'yes' if r['hwm'] < 2 * GIB else 'NO'} | {r['hwm'] / base['hwm']:.2f}x |")


if __name__ == "__main__":
    main()
