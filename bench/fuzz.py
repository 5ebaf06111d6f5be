"""The long fuzz run: every target of ``tests/fuzz`` (one per decoder of bytes a peer or
an HTTP client controls), ``--cases`` inputs each (default 100 000).

Each target runs in a fresh child process (so that its peak RSS is its own),
with atheris (coverage-guided libFuzzer, over instrumented ``aicn`` code) when
it is installed, else with the seed mutator of ``tests/fuzz/mutate.py``.  A
crash is what :func:`tests.fuzz.harness.check` calls one: an exception the
decoder does not document, a logged failure, a hung read or a broken
invariant; crashing inputs are written to ``--crashes`` (one file per kind)
and the run goes on.  Every 128th case runs under :mod:`tracemalloc`, giving
the most memory one input made the decoder allocate.

Printed per target: cases, cases/s, crashes, peak RSS of its process, the
largest sampled allocation of one case, the slowest case.  Exit status 1 if
any target crashed.

    python bench/fuzz.py [--cases 100000] [--targets kad,identify] [--engine auto|atheris|mutate]
                         [--quick] [--jobs 1] [--json FILE] [--crashes DIR] [--seed 1] [--list]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE_EVERY = 128
QUICK_CASES = 2000


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _kind(exc: BaseException) -> str:
    """A crash's kind: its type and where it was raised (the deepest aicn frame, else the last)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/aicn/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__} at {where}"


class Run:
    """One target's run in this (child) process."""

    def __init__(self, target, cases: int, out: Path, crashes: Path) -> None:
        from tests.fuzz.harness import check

        self.check = check
        self.target = target
        self.cases = cases
        self.out = out
        self.crash_dir = crashes
        self.n = 0
        self.crash_count = 0
        self.kinds: dict[str, dict] = {}
        self.max_alloc = (0, 0)  # (bytes, input length)
        self.slowest = (0.0, 0)
        self.start_rss = _rss_kib()
        self.started = time.perf_counter()

    def one(self, data: bytes) -> None:
        data = data[: self.target.max_len]
        self.n += 1
        sample = self.n % SAMPLE_EVERY == 0
        if sample:
            tracemalloc.start()
        t0 = time.perf_counter()
        crash = self.check(self.target, data)
        elapsed = time.perf_counter() - t0
        if sample:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            if peak > self.max_alloc[0]:
                self.max_alloc = (peak, len(data))
        if elapsed > self.slowest[0]:
            self.slowest = (elapsed, len(data))
        if crash is not None:
            self._crashed(crash, data)
        if self.n >= self.cases or self.n % 5000 == 0:
            self.report()

    def _crashed(self, crash: BaseException, data: bytes) -> None:
        self.crash_count += 1
        kind = _kind(crash)
        entry = self.kinds.setdefault(kind, {"count": 0})
        entry["count"] += 1
        if entry["count"] == 1:
            name = f"crash-{self.target.name}-{hashlib.sha1(data).hexdigest()[:12]}"
            self.crash_dir.mkdir(parents=True, exist_ok=True)
            (self.crash_dir / name).write_bytes(data)
            entry["input"] = str(self.crash_dir / name)
            entry["message"] = str(crash)[:200]
            entry["traceback"] = "".join(traceback.format_exception(crash))[-3000:]
            print(f"  {self.target.name}: CRASH {kind} -> {entry['input']}", file=sys.stderr, flush=True)

    def report(self) -> None:
        seconds = time.perf_counter() - self.started
        result = {
            "target": self.target.name, "cases": self.n, "seconds": seconds, "crashes": self.crash_count,
            "kinds": self.kinds, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "start_rss_kib": self.start_rss, "max_case_alloc": self.max_alloc[0],
            "max_case_alloc_input_len": self.max_alloc[1], "slowest_case_s": self.slowest[0],
            "slowest_case_input_len": self.slowest[1],
        }
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(self.out)


def child(args) -> None:
    """Fuzz one target in this process and write its figures to ``args.out``."""
    engine = args.engine
    if engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["aicn"]):
            import aicn.api.app  # noqa: F401 -- everything the targets reach, instrumented
            import aicn.node.node  # noqa: F401
            from tests.fuzz.targets import TARGETS, seeds
    else:
        from tests.fuzz.targets import TARGETS, seeds
    from aicn.log import set_log_level

    set_log_level("critical")  # failures still reach the harness (they are critical)
    target = TARGETS[args.child]
    run = Run(target, args.cases, Path(args.out), Path(args.crashes))
    corpus = seeds(target)
    if engine == "atheris":
        import atheris

        Path(args.crashes).mkdir(parents=True, exist_ok=True)  # libFuzzer's artifact_prefix must exist
        corpus_dir = tempfile.mkdtemp(prefix=f"fuzz-{target.name}-")
        for i, seed in enumerate(corpus):
            Path(corpus_dir, f"seed{i}").write_bytes(seed[: target.max_len])
        dict_path = Path(corpus_dir, "dict.txt")
        dict_path.write_text("".join('"%s"\n' % "".join(f"\\x{b:02x}" for b in token)
                                     for token in target.dictionary))
        argv = [sys.argv[0], f"-runs={args.cases}", f"-max_len={target.max_len}", f"-seed={args.seed}",
                "-print_final_stats=0", "-close_fd_mask=1", "-timeout=20", "-rss_limit_mb=2048",
                f"-artifact_prefix={args.crashes}/libfuzzer-{target.name}-", str(Path(corpus_dir, "corpus"))]
        Path(corpus_dir, "corpus").mkdir()
        for i, seed in enumerate(corpus):
            Path(corpus_dir, "corpus", f"seed{i}").write_bytes(seed[: target.max_len])
        if target.dictionary:
            argv.insert(1, f"-dict={dict_path}")
        atheris.Setup(argv, run.one)
        atheris.Fuzz()  # exits the process at the end of the runs
    else:
        from tests.fuzz.mutate import Mutator

        mutator = Mutator(corpus, max_len=target.max_len, dictionary=target.dictionary, seed=args.seed)
        for seed in corpus:
            run.one(seed)
        while run.n < args.cases:
            run.one(mutator.next())
    run.report()


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_target(name: str, args, engine: str, crashes: Path) -> dict:
    out = Path(tempfile.mkstemp(prefix=f"fuzz-{name}-", suffix=".json")[1])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--cases", str(args.cases),
           "--engine", engine, "--out", str(out), "--crashes", str(crashes), "--seed", str(args.seed)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        result = json.loads(out.read_text())
    except (OSError, ValueError):
        result = {"target": name, "cases": 0, "seconds": time.perf_counter() - started, "crashes": 1,
                  "kinds": {f"child exited with {proc.returncode}": {"count": 1,
                                                                     "traceback": proc.stderr[-3000:]}},
                  "peak_rss_kib": 0, "start_rss_kib": 0, "max_case_alloc": 0, "max_case_alloc_input_len": 0,
                  "slowest_case_s": 0.0, "slowest_case_input_len": 0}
    finally:
        out.unlink(missing_ok=True)
    if proc.returncode != 0 and result["cases"] < args.cases:
        result["crashes"] += 1
        result["kinds"][f"child exited with {proc.returncode} after {result['cases']} cases"] = {
            "count": 1, "traceback": proc.stderr[-3000:]}
    result["engine"] = engine
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="inputs per target (default 100000)")
    parser.add_argument("--targets", default="", help="comma-separated target names (default: all)")
    parser.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CASES} cases per target")
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once (default 1)")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--crashes", help="directory for crashing inputs (default: a new temporary one)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    from tests.fuzz.targets import TARGETS

    if args.list:
        for target in TARGETS.values():
            print(f"{target.name:20} {target.doc}\n{'':20} errors: {', '.join(target.errors)}")
        return 0
    if args.quick:
        args.cases = QUICK_CASES
    names = [n for n in args.targets.split(",") if n] or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)} (see --list)")
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _have_atheris() else "mutate"
    crashes = Path(args.crashes or tempfile.mkdtemp(prefix="aicn-fuzz-crashes-"))
    crashes.mkdir(parents=True, exist_ok=True)
    print(f"fuzz: {len(names)} targets x {args.cases} cases, engine {engine}, crashes to {crashes}",
          flush=True)
    print(f"{'target':20} {'cases':>8} {'cases/s':>8} {'crashes':>7} {'peak RSS':>10} "
          f"{'max alloc/case':>14} {'slowest':>9}", flush=True)
    started = time.perf_counter()
    results = []

    def show(r: dict) -> None:
        rate = r["cases"] / r["seconds"] if r["seconds"] else 0
        print(f"{r['target']:20} {r['cases']:>8} {rate:>8.0f} {r['crashes']:>7} "
              f"{_fmt_bytes(r['peak_rss_kib'] * 1024):>10} {_fmt_bytes(r['max_case_alloc']):>14} "
              f"{r['slowest_case_s'] * 1000:>7.1f}ms", flush=True)
        for kind, entry in r["kinds"].items():
            print(f"    {entry['count']} x {kind}: {entry.get('message', '')[:100]}"
                  + (f" ({entry['input']})" if "input" in entry else ""), flush=True)
            if "input" not in entry:  # the child died: the end of what it said
                tail = [line for line in entry.get("traceback", "").splitlines() if line.strip()][-5:]
                print("".join(f"      {line}\n" for line in tail), end="", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for result in pool.map(lambda n: run_target(n, args, engine, crashes), names):
            results.append(result)
            show(result)
    total_cases = sum(r["cases"] for r in results)
    total_crashes = sum(r["crashes"] for r in results)
    wall = time.perf_counter() - started
    print(f"total: {len(results)} targets, {total_cases} cases, {total_crashes} crashes, {wall:.0f} s wall")
    if args.json:
        Path(args.json).write_text(json.dumps({"engine": engine, "cases_per_target": args.cases,
                                               "wall_s": wall, "targets": results}, indent=2))
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
