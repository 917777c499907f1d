#!/usr/bin/env python3
"""On-demand benchmarks of hpc-eval (issue 9): login-node latency, array scaling, cron scan cost.

Not a test: run it by hand on the machine you care about, and read the ratios (every number in
one run comes from the same machine under the same load).

    .venv/bin/python benchmarks/bench.py                 # everything (1.5-2 minutes on 2 CPUs)
    .venv/bin/python benchmarks/bench.py --quick         # smaller N (arrays up to 100, watch over 1,000 dirs)
    .venv/bin/python benchmarks/bench.py --skip-slurm    # only what needs no Slurm (sections 1, 2 and the validate scan)
    .venv/bin/python benchmarks/bench.py --json          # one JSON object instead of the table
    .venv/bin/python benchmarks/bench.py --markdown      # the table as Markdown (docs/benchmarks.md)
    .venv/bin/python benchmarks/bench.py --save FILE     # also write the JSON object to FILE
    .venv/bin/python benchmarks/bench.py --scale         # only section 6 (about 2 minutes)
    .venv/bin/python benchmarks/bench.py --quick --report-targets   # CI: missed targets reported, exit 0

Sections:
  1. startup   `hpc-eval --help` and `hpc-eval validate <one dir>` against `python -c pass`;
               discovery and validation over a run of 10,000 iter dirs.
  2. dry-run   `hpc-eval submit --dry-run -c tiny_chat` with hpc-eval's cache cold, holding the
               task catalogue only (a new config), and warm; the phases the time goes to.
  3. arrays    `hpc-eval submit --all` of N = 1, 10, 100, 1000 checkpoints on the local Slurm
               against N plain `sbatch --wrap true --hold`; wall time and sbatch calls. Jobs are
               submitted held and cancelled right away.
  4. watch     one `hpc-eval watch` pass over a run of 10,000 iter dirs of which 9,990 are in the
               completed index; its directory reads and stat calls (strace).
  5. payload   job start to the run_eval call (a launcher dry run), and the payload's CPU while it
               waits for a real evaluation against a stub model that answers after 5 s.
  6. scale     `submit --dry-run --all`, `results` and `status` over 1,000 and 10,000 checkpoints or
               evaluations (results also at 2,000), each beside its floor measured in the same run: a
               plain Python loop making the same files, or making the same reads and stats.

Needs: the project's venv, a running local Slurm (bash scripts/start-slurm.sh) for 3-5, strace
for the syscall counts of 4 (skipped with a note when missing). Writes only under a temp dir
(hpc-eval's cache included: XDG_CACHE_HOME points there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/support (fake checkpoints, stub, counters) is not an installed package

from hpc_eval.slurm import max_array_size  # noqa: E402
from support.commands import write_counter  # noqa: E402
from support.fakeckpt import make_iter, make_run, write_tracker  # noqa: E402
from support.stub import start_stub  # noqa: E402

PYTHON = sys.executable
HPC_EVAL = (
    str(Path(PYTHON).with_name("hpc-eval"))
    if Path(PYTHON).with_name("hpc-eval").exists()
    else shutil.which("hpc-eval") or "hpc-eval"
)
BFCL_STUB = REPO / "tests" / "configs" / "bfcl_stub.yaml"
# What every Slurm submission here adds: the launcher's own dry run unless a real evaluation is
# wanted, no GPU, one CPU, held so that nothing runs (the bench cancels the jobs right away).
SMALL_JOB = ["slurm.cpus_per_task=1", "slurm.gpus_per_node=0"]
HELD = ["dry_run=true", *SMALL_JOB, "+slurm.additional_parameters.hold=true"]
PLAIN_SBATCH = [
    "sbatch",
    "--parsable",
    "--hold",
    "--wrap",
    "true",
    "-o",
    "/dev/null",
    "-J",
    "hpc-eval-bench-plain",
    "-c",
    "1",
]
BFCL_REPLY = "[calculate_triangle_area(base=10, height=5)]"
COUNTED = ("sbatch", "squeue", "sacct", "scontrol")


@dataclass
class Row:
    section: str
    measure: str
    value: float | int | str
    unit: str = ""
    ratio: str = ""  # against the section's baseline
    target: str = ""
    ok: bool | None = None
    detail: str = ""


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp, self.rows = args, tmp, []
        self.repeats = 5 if args.quick else 9
        (tmp / "tmp").mkdir()
        (tmp / "bin").mkdir()
        self.env = {
            **os.environ,
            "XDG_CACHE_HOME": str(tmp / "cache"),
            "TMPDIR": str(tmp / "tmp"),
            "NEMO_EVALUATOR_TELEMETRY_LEVEL": "0",
            "STUB_URL": "http://127.0.0.1:9",
            "PATH": f"{tmp / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.counters = {
            command: write_counter(command, tmp / "bin", tmp / f"calls-{command}.txt", timed=True)
            for command in COUNTED
            if shutil.which(command)
        }

    # ---------------------------------------------------------------- helpers
    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        if not self.args.json:
            print(
                f"  {row.section:<8} {row.measure:<58} {fmt(row.value)} {row.unit}".rstrip(),
                file=sys.stderr,
                flush=True,
            )
        return row

    def calls(self, command: str) -> tuple[int, float]:
        """(calls, seconds inside them) since the last reset_calls()."""
        counter = self.counters.get(command)
        return (counter.count(), counter.seconds()) if counter else (0, 0.0)

    def reset_calls(self) -> None:
        for counter in self.counters.values():
            counter.reset()

    def run(
        self, argv: list, env: dict | None = None, check: bool = True, cwd: Path | None = None
    ) -> tuple[float, float, subprocess.CompletedProcess]:
        """(wall s, CPU s of the process and its children, result)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([str(a) for a in argv], env=env or self.env, cwd=cwd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(map(str, argv))[:300]} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            )
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done

    def median(self, argv: list, env: dict | None = None, check: bool = True) -> tuple[float, float]:
        return self.medians([argv], env, check)[0]

    def medians(self, commands: list[list], env: dict | None = None, check: bool = True) -> list[tuple[float, float]]:
        """(median wall, median CPU) of each command, run in turns so that a burst of load hits all alike."""
        runs = [[self.run(argv, env, check)[:2] for argv in commands] for _ in range(self.repeats)]
        return [
            (statistics.median(r[i][0] for r in runs), statistics.median(r[i][1] for r in runs))
            for i in range(len(commands))
        ]

    # ---------------------------------------------------------------- 1. startup
    def startup(self) -> None:
        one = make_iter(self.tmp / "one" / "checkpoints", 100)
        (bare, bare_cpu), (help_wall, help_cpu), (wall, cpu) = self.medians(
            [[PYTHON, "-c", "pass"], [HPC_EVAL, "--help"], [HPC_EVAL, "validate", one]]
        )
        self.add(
            "startup",
            f"python -c pass (median of {self.repeats}, in turns with the two below)",
            ms(bare),
            "ms",
            detail=f"CPU {ms(bare_cpu)} ms",
        )
        self.add(
            "startup",
            "hpc-eval --help",
            ms(help_wall),
            "ms",
            ratio=times(help_wall / bare),
            target="< 4x",
            ok=help_wall / bare < 4,
            detail=f"CPU {ms(help_cpu)} ms ({help_cpu / bare_cpu:.1f}x)",
        )
        self.add(
            "startup",
            "hpc-eval validate <one iter dir>",
            ms(wall),
            "ms",
            ratio=times(wall / bare),
            detail=f"CPU {ms(cpu)} ms ({cpu / bare_cpu:.1f}x)",
        )

    def validate_scan(self, run: Path, count: int) -> None:
        """Discovery and `hpc-eval validate` over a big run (formerly scripts/bench_validate.py)."""
        code = (
            "import json, sys, time\nfrom hpc_eval.checkpoint import discover\n"
            "t = time.perf_counter(); found = discover(sys.argv[1]); a = time.perf_counter() - t\n"
            "t = time.perf_counter(); latest = discover(sys.argv[1], select='latest'); b = time.perf_counter() - t\n"
            "print(json.dumps([a, len(found.valid), b, latest.valid[0].iteration]))"
        )
        all_s, valid, latest_s, step = json.loads(self.run([PYTHON, "-c", code, run])[2].stdout)
        self.add(
            "startup",
            f"discover(select='all') over {count:,} iter dirs (in process)",
            round(all_s, 3),
            "s",
            detail=f"{valid:,} valid",
        )
        self.add(
            "startup", f"discover(select='latest') over {count:,} iter dirs", ms(latest_s), "ms", detail=f"iter {step}"
        )
        children = sorted(str(path) for path in run.glob("iter_*"))
        wall, cpu, _ = self.run([HPC_EVAL, "validate", *children])
        self.add(
            "startup",
            f"hpc-eval validate <run>/iter_* ({count:,} dirs)",
            round(wall, 3),
            "s",
            detail=f"CPU {cpu:.2f} s",
        )
        wall, _, done = self.run([HPC_EVAL, "validate", run], check=False)
        self.add(
            "startup",
            "hpc-eval validate <run dir> (the latest suggestion)",
            ms(wall),
            "ms",
            detail=f"exit {done.returncode}",
        )

    # ---------------------------------------------------------------- 2. submit --dry-run
    def dry_run(self) -> None:
        argv = [HPC_EVAL, "submit", "--dry-run", "-c", "tiny_chat"]
        for state in ("cold", "new config", "warm"):
            self.forget(state)
            wall, cpu = self.median(argv) if state == "warm" else self.run(argv)[:2]
            label = f"warm (median of {self.repeats})" if state == "warm" else state
            self.add(
                "dry-run",
                f"submit --dry-run -c tiny_chat, {label}",
                round(wall, 3),
                "s",
                detail=f"CPU {cpu:.2f} s; {CACHE_STATES[state]}",
                **({"target": "< 1 s", "ok": wall < 1.0} if state == "warm" else {}),
            )
        for state in ("cold", "warm"):
            self.forget(state)
            for name, seconds in json.loads(self.run([PYTHON, "-c", PHASES])[2].stdout):
                self.add("dry-run", f"  {state}: {name}", ms(seconds), "ms")
        times = import_times(self.run([PYTHON, "-X", "importtime", "-c", "import hpc_eval.cli"])[2].stderr)
        self.add("dry-run", "python -X importtime: import hpc_eval.cli", times.get("hpc_eval.cli", 0.0), "ms")
        launcher = "import hpc_eval.launcher as l; l.import_launcher()"
        times = import_times(self.run([PYTHON, "-X", "importtime", "-c", launcher])[2].stderr)
        self.add(
            "dry-run",
            "python -X importtime: the launcher (import_launcher)",
            round(sum(t for n, t in times.items() if n.startswith("nemo_evaluator")), 1),
            "ms",
            detail="largest: " + largest(times, 3, "nemo_evaluator"),
        )

    def forget(self, state: str) -> None:
        """Put hpc-eval's cache in a CACHE_STATES state (warm: leave it)."""
        cache = self.tmp / "cache" / "hpc-eval"
        if state == "cold":
            shutil.rmtree(cache, ignore_errors=True)
        elif state == "new config":
            for path in cache.glob("preflight-*"):
                path.unlink()

    # ---------------------------------------------------------------- 3. arrays
    def arrays(self) -> None:
        limit = max_array_size()
        largest = max(self.ns)
        self.run(
            [HPC_EVAL, "submit", "--dry-run", "-c", BFCL_STUB, *HELD]
        )  # its preflight, cached: every N below pays the same
        self.add(
            "arrays",
            "cluster MaxArraySize (indices 0..MaxArraySize-1)",
            limit,
            target=f"> {largest - 1}",
            ok=limit > largest - 1,
        )
        for n in self.ns:
            run = make_run(self.tmp / "arrays" / f"n{n}" / f"train{n}" / "checkpoints", range(100, 100 * (n + 1), 100))
            self.reset_calls()
            wall, cpu, done = self.run(
                [
                    HPC_EVAL,
                    "submit",
                    "-c",
                    BFCL_STUB,
                    "--checkpoint",
                    run,
                    "--all",
                    "--output-dir",
                    self.tmp / "arrays" / f"n{n}" / "out",
                    *HELD,
                    "--json",
                ]
            )
            jobs = [job["job_id"] for job in json.loads(done.stdout)["jobs"]]
            scancel(jobs)
            calls, in_sbatch = self.calls("sbatch")
            ids, start = [], time.perf_counter()
            for _ in range(n):
                ids.append(
                    subprocess.run(PLAIN_SBATCH, capture_output=True, text=True, check=True)
                    .stdout.strip()
                    .split(";")[0]
                )
            plain = time.perf_counter() - start
            scancel(ids)
            target = "1 sbatch" + (", < 3 s + sbatch" if n >= 1000 else "")
            ok = calls == 1 and (n < 1000 or wall - in_sbatch < 3.0)
            self.add(
                "arrays",
                f"hpc-eval submit --all, N={n}",
                round(wall, 3),
                "s",
                ratio=f"{times(wall / plain)} plain",
                target=target,
                ok=ok,
                detail=f"{calls} sbatch ({in_sbatch:.2f} s in it), CPU {cpu:.2f} s, {ms((wall - in_sbatch) / n)} ms per checkpoint besides sbatch",
            )
            self.add(
                "arrays",
                f"  {n} plain sbatch --wrap true --hold",
                round(plain, 3),
                "s",
                detail=f"{n} sbatch, {ms(plain / n)} ms each",
            )

    # ---------------------------------------------------------------- 4. watch
    def watch(self, run: Path, count: int) -> None:
        os.environ.update(STUB_URL=self.env["STUB_URL"], XDG_CACHE_HOME=self.env["XDG_CACHE_HOME"])
        from hpc_eval import identity
        from hpc_eval.config import load_config
        from hpc_eval.store import completed_index, index_entry, run_folder, run_of

        out = self.tmp / "watch" / "out"
        base = load_config(str(BFCL_STUB), HELD, checkpoint=run, output_dir=out)
        config = base.for_checkpoint(run)
        real = identity.real_path(run)
        index = completed_index(out, run_folder(run_of(real, config.source.stem), real), config.config_hash())
        index.mkdir(parents=True)
        names = sorted(path.name for path in run.glob("iter_*"))
        old, new = names[:-10], names[-10:]
        start = time.perf_counter()
        for name in old:
            (index / index_entry(name, identity.stat_key(run / name))).touch()
        self.add(
            "watch",
            f"setup: {len(old):,} entries in the completed index",
            round(time.perf_counter() - start, 2),
            "s",
            detail=str(index.relative_to(out)),
        )
        argv = [HPC_EVAL, "watch", run, "-c", BFCL_STUB, "--output-dir", out, *HELD, "--json"]

        def one_pass(label: str, strace_to: Path | None = None) -> dict:
            self.reset_calls()
            prefix = ["strace", "-f", "-y", "-qq", "-e", "trace=%file,getdents64", "-o", strace_to] if strace_to else []
            wall, cpu, done = self.run(prefix + argv, check=False)
            result = json.loads(done.stdout)
            scancel([job["job_id"] for job in result["jobs"]])
            counts = {command: self.calls(command)[0] for command in COUNTED}
            submitted = sum(1 for action in result["actions"] if action["action"] == "submitted")
            if not strace_to:
                self.add(
                    "watch",
                    f"one pass over {count:,} dirs: {label}",
                    round(wall, 3),
                    "s",
                    target="< 1 s",
                    ok=wall < 1.0,
                    detail=f"{submitted} submitted; calls: "
                    + ", ".join(f"{c} {n}" for c, n in counts.items() if n)
                    + f"; CPU {cpu:.2f} s",
                )
            return result

        one_pass(f"{len(new)} new, {len(old):,} evaluated")
        one_pass("next pass, nothing new")
        if not shutil.which("strace"):
            self.add("watch", "syscall counts", "skipped", detail="strace is not installed (apt-get install strace)")
            return
        for name in new:  # the same pass again, under strace
            shutil.rmtree(out / index.parent.name / name)
        shutil.rmtree(out / ".arrays", ignore_errors=True)
        trace = self.tmp / "watch" / "strace.txt"
        one_pass("under strace", trace)
        counts = count_syscalls(trace, run, set(old), set(new))
        total, main_total, under_run, under_old, under_new, dir_reads = counts
        self.add(
            "watch",
            "  pass under strace: file syscalls of the hpc-eval process",
            sum(main_total.values()),
            "calls",
            detail=", ".join(f"{name} {n}" for name, n in main_total.most_common(5))
            + f"; with sbatch, scontrol...: {sum(total.values())}",
        )
        self.add(
            "watch",
            "  of them in the run dir itself (listing)",
            under_run,
            "calls",
            detail=f"getdents64 {dir_reads['run']}, index getdents64 {dir_reads['index']}",
        )
        self.add(
            "watch",
            f"  of them inside the {len(old):,} evaluated iter dirs",
            under_old,
            "calls",
            target=f"<= {len(old):,} (one stat of .metadata each)",
            ok=under_old <= len(old),
        )
        self.add(
            "watch",
            f"  of them inside the {len(new)} new iter dirs",
            under_new,
            "calls",
            detail=f"{under_new / len(new):.1f} per new checkpoint",
        )

    # ---------------------------------------------------------------- 5. payload
    def payload(self) -> None:
        hook = self.tmp / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(RUN_EVAL_HOOK)
        events = self.tmp / "payload" / "run_eval-events.txt"
        events.parent.mkdir()
        start_file = self.tmp / "payload" / "job-start"
        env = {**self.env, "PYTHONPATH": str(hook), "HPC_EVAL_BENCH_RUN_EVAL_LOG": str(events)}
        setup = f'slurm.setup=["date +%s.%N > {start_file}"]'  # the batch script's first line: the job's start
        done = self.run(
            [
                HPC_EVAL,
                "submit",
                "-c",
                BFCL_STUB,
                "--output-dir",
                self.tmp / "payload" / "dry",
                "dry_run=true",
                *SMALL_JOB,
                setup,
                "--json",
            ],
            env,
        )[2]
        eval_dir = Path(json.loads(done.stdout)["evaluations"][0]["eval_dir"])
        summary = wait_summary(eval_dir, 180)
        job_start = float(start_file.read_text())
        called = {event: float(t) for event, t, _ in (line.split() for line in events.read_text().splitlines())}
        first_log = submitit_start(eval_dir)
        self.add(
            "payload",
            "job start -> run_eval call (launcher dry run)",
            round(called["run_eval_called"] - job_start, 2),
            "s",
            detail=f"summary {summary.get('state')}",
        )
        self.add(
            "payload",
            "  job start -> submitit's first log line (srun, interpreter)",
            round(first_log - job_start, 2),
            "s",
        )
        self.add(
            "payload",
            "  -> run_eval call (imports, launcher, config)",
            round(called["run_eval_called"] - first_log, 2),
            "s",
        )
        self.add(
            "payload",
            "  run_eval itself (dry run: writes the scripts)",
            round(called["run_eval_returned"] - called["run_eval_called"], 2),
            "s",
        )
        times = import_times(self.run([PYTHON, "-X", "importtime", "-c", "import hpc_eval.payload"])[2].stderr)
        self.add(
            "payload",
            "python -X importtime: import hpc_eval.payload (before the launcher)",
            times.get("hpc_eval.payload", 0.0),
            "ms",
        )

        stub = start_stub(self.tmp / "payload", reply=BFCL_REPLY, delay_s=5)
        try:
            self.payload_wait(env, stub.url, events)
        finally:
            stub.stop()

    def payload_wait(self, env: dict, url: str, events: Path) -> None:
        # the private daemon of scripts/start-docker.sh, with the image of scripts/build-test-image.sh
        docker_host = f"unix://{os.environ.get('HPC_EVAL_DOCKER_DIR', '/var/tmp/hpc-eval-docker')}/docker.sock"
        env = {**env, "STUB_URL": url, "DOCKER_HOST": docker_host}
        events.unlink(missing_ok=True)
        done = self.run(
            [HPC_EVAL, "submit", "-c", BFCL_STUB, "--output-dir", self.tmp / "payload" / "real", *SMALL_JOB, "--json"],
            env,
        )[2]
        result = json.loads(done.stdout)
        eval_dir, job_id = Path(result["evaluations"][0]["eval_dir"]), result["jobs"][0]["job_id"]
        samples, pid, deadline = [], None, time.monotonic() + 300
        while time.monotonic() < deadline and not (eval_dir / "summary.json").exists():
            pid = pid or find_payload(eval_dir / "submitit")
            sample = proc_sample(pid) if pid else None
            if pid and sample is None:
                break  # the payload is gone
            if sample:
                samples.append(sample)
            time.sleep(0.25)
        if time.monotonic() >= deadline:
            scancel([job_id])
        summary = wait_summary(eval_dir, 60)
        returned = (
            dict(line.split()[:2] for line in events.read_text().splitlines()).get("run_eval_returned")
            if events.exists()
            else None
        )
        waiting = [s for s in samples if returned and s[0] >= float(returned) and s[2]]
        if len(waiting) < 2:
            self.add(
                "payload",
                "CPU while waiting for the evaluation",
                "n/a",
                detail=f"no wait observed (state {summary.get('state')}, {len(samples)} samples)",
            )
            return
        (t0, cpu0, _), (t1, cpu1, _) = waiting[0], waiting[-1]
        percent = 100 * (cpu1 - cpu0) / (t1 - t0)
        tasks = summary.get("tasks") or {}
        self.add(
            "payload",
            "CPU while waiting for a real evaluation (stub answers after 5 s)",
            round(percent, 3),
            "%",
            target="< 1%",
            ok=percent < 1.0,
            detail=f"{cpu1 - cpu0:.2f} s CPU (ticks of {1 / os.sysconf('SC_CLK_TCK'):g} s) over {t1 - t0:.1f} s of wait; job {summary.get('state')}, "
            f"task {next(iter(tasks.values()), {}).get('status')}; total payload CPU {cpu1:.2f} s",
        )

    # ---------------------------------------------------------------- 6. scale
    def scale(self, runs: dict[int, Path]) -> None:
        """Ten thousand checkpoints: each command beside the floor of its own file work, measured here and now.

        The machine is shared: CPU time (getrusage, process_time) is given beside wall time.
        """
        self.run(
            [HPC_EVAL, "submit", "--dry-run", "-c", "default", "--checkpoint", min(runs[min(runs)].glob("iter_*"))]
        )  # preflight cached
        for count, run in sorted(runs.items()):
            wall, cpu, _ = self.run(
                [HPC_EVAL, "submit", "--dry-run", "--all", "-c", "default", "--checkpoint", run, "--json"]
            )
            files, files_cpu = file_floor(self.tmp / f"floor-{count}", count)
            code = (
                "import json, sys, time\nfrom hpc_eval.checkpoint import discover\n"
                "t, c = time.perf_counter(), time.process_time(); discover(sys.argv[1])\n"
                "print(json.dumps([time.perf_counter() - t, time.process_time() - c]))"
            )
            found, found_cpu = json.loads(self.run([PYTHON, "-c", code, run])[2].stdout)
            floor, floor_cpu = files + found, files_cpu + found_cpu
            target = "< 1.5x floor" if count == 10_000 else ""
            self.add(
                "scale",
                f"submit --dry-run --all over {count:,} checkpoints",
                round(wall, 2),
                "s",
                ratio=times(wall / floor),
                target=target,
                ok=wall < 1.5 * floor if target else None,
                detail=f"CPU {cpu:.2f} s ({times(cpu / floor_cpu)} the floor's CPU)",
            )
            self.add(
                "scale",
                f"  floor: discovery + a plain loop making the same dirs and files ({count:,})",
                round(floor, 2),
                "s",
                detail=f"discover(all) {found:.2f} s, 2 mkdir + 2 files each {files:.2f} s; CPU {floor_cpu:.2f} s",
            )
        root = self.tmp / "evaluations"
        sizes = {1_000: ["a"], 2_000: ["a", "b"], 10_000: ["a", "b", "c"]}
        start = time.perf_counter()
        with ProcessPoolExecutor(4) as pool:
            list(
                pool.map(
                    build_evaluations,
                    [
                        (str(root / part), count, i)
                        for part, count in (("a", 1000), ("b", 1000), ("c", 8000))
                        for i in range(4)
                    ],
                )
            )
        self.add(
            "scale",
            "setup: 10,000 evaluations without a final summary (request, slurm.json, one task's tree)",
            round(time.perf_counter() - start, 1),
            "s",
        )
        for count, parts in sizes.items():
            roots = [root / part for part in parts]
            first = self.run([HPC_EVAL, "results", "--format", "json", *roots])[:2]
            second = self.run([HPC_EVAL, "results", "--format", "json", *roots])[:2]
            floor, floor_cpu = read_floor(roots, summary=False)
            target = "< 2 s second call" if count == 2_000 else ""
            self.add(
                "scale",
                f"results over {count:,} evaluations without a summary, first call",
                round(first[0], 2),
                "s",
                ratio=times(first[0] / floor),
                detail=f"CPU {first[1]:.2f} s; parses each results.yml, writes its metrics cache",
            )
            self.add(
                "scale",
                f"results over {count:,} evaluations without a summary, second call",
                round(second[0], 2),
                "s",
                ratio=times(second[0] / floor),
                target=target,
                ok=second[0] < 2 if target else None,
                detail=f"CPU {second[1]:.2f} s",
            )
            self.add(
                "scale",
                f"  floor: the same reads and stats in a plain loop ({count:,})",
                round(floor, 2),
                "s",
                detail=f"CPU {floor_cpu:.2f} s",
            )
            self.reset_calls()
            wall, cpu, _ = self.run([HPC_EVAL, "status", "--json", *roots])
            calls = {command: self.calls(command)[0] for command in ("squeue", "sacct")}
            target = "< 2 s, 1 squeue, 1 sacct" if count == 10_000 else ""
            ok = wall < 2 and calls == {"squeue": 1, "sacct": 1}
            self.add(
                "scale",
                f"status over {count:,} evaluations (none final)",
                round(wall, 2),
                "s",
                ratio=times(wall / floor),
                target=target,
                ok=ok if target else None,
                detail=f"CPU {cpu:.2f} s; squeue {calls['squeue']}, sacct {calls['sacct']}",
            )
        summarised = [root / part for part in sizes[2_000]]
        for request in (path for part in summarised for path in part.glob("*/*/request.json")):
            (request.parent / "summary.json").write_text(
                json.dumps(
                    {
                        "state": "COMPLETED",
                        "slurm_job_id": "1_0",
                        "tasks": {"bfcl.0": {"status": "success", "metrics": {"bfcl/live_overall_acc": 0.5}}},
                    }
                )
            )
        wall, cpu, _ = self.run([HPC_EVAL, "results", "--format", "json", *summarised])
        floor, floor_cpu = read_floor(summarised, summary=True)
        self.add(
            "scale",
            "results over 2,000 evaluations with a final summary",
            round(wall, 2),
            "s",
            ratio=times(wall / floor),
            detail=f"CPU {cpu:.2f} s; floor (the same reads) {floor:.2f} s, CPU {floor_cpu:.2f} s",
        )

    # ---------------------------------------------------------------- the whole run
    def build_big_run(self, count: int, name: str = "big") -> Path:
        run = self.tmp / name / "train" / "checkpoints"
        run.mkdir(parents=True)
        steps = list(range(100, 100 * (count + 1), 100))
        start = time.perf_counter()
        with ProcessPoolExecutor(4) as pool:
            list(pool.map(build_iters, [(str(run), steps[i::8]) for i in range(8)]))
        write_tracker(run, steps[-1])
        old = time.time() - 3600  # a quiet run: no save in progress
        for path in [*run.glob("iter_*/*"), *run.glob("iter_*")]:
            os.utime(path, (old, old))
        self.add(
            "setup", f"build a run of {count:,} fake iter dirs (make_iter)", round(time.perf_counter() - start, 1), "s"
        )
        return run

    def main(self) -> None:
        self.ns = (1, 10, 100) if self.args.quick else (1, 10, 100, 1000)
        count = 1_000 if self.args.quick else 10_000
        if self.args.scale:
            self.scale({1_000: self.build_big_run(1_000, "scale-1000"), count: self.build_big_run(count)})
            return
        self.startup()
        self.dry_run()
        run = self.build_big_run(count)
        self.validate_scan(run, count)
        if self.args.skip_slurm:
            return
        slurm_ok = subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
        if not slurm_ok:
            self.add(
                "slurm", "skipped", "n/a", detail="sinfo failed: start the local Slurm with bash scripts/start-slurm.sh"
            )
            return
        self.arrays()
        self.watch(run, count)
        self.payload()
        self.scale({1_000: self.build_big_run(1_000, "scale-1000"), count: run})


CACHE_STATES = {
    "cold": "no cache: preflight imports the launcher and parses its task catalogue",
    "new config": "task catalogue cached, this config never preflighted: the launcher is imported",
    "warm": "this config passed preflight with this launcher before: no launcher import",
}
# The phases of `submit --dry-run -c tiny_chat` in one process (cold: each cache miss on its own line).
PHASES = r"""
import json, sys, time
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
import hpc_eval.cli; mark("import hpc_eval.cli (click)")
from hpc_eval import checkpoint, config, launcher, preflight, slurm, submit; mark("import config, submit (omegaconf, yaml)")
cfg = config.load_config("tiny_chat"); mark("load_config")
if not launcher.cache_file("preflight", "").parent.is_dir():  # cold
    from hpc_eval.launcher import import_launcher; import_launcher(); mark("import the launcher")
    launcher.task_catalogue(); mark("task catalogue: the launcher parses it (cache miss)")
preflight.preflight(cfg)
mark("preflight" + ("" if "nemo_evaluator_launcher" in sys.modules else " (cached verdict: no launcher import)"))
settings = slurm.slurm_settings(cfg)
submit.submit_evaluations(cfg, checkpoint.choose_checkpoints([], checkpoint.Selection()), settings, dry_run=True)
mark("dry-run plan, save, sbatch preview (submitit)")
print(json.dumps([(name, t - marks[i][1]) for i, (name, t) in enumerate(marks[1:])]))
"""

# sitecustomize for the payload's jobs: log when the launcher's run_eval is called and returns.
RUN_EVAL_HOOK = r"""
import importlib.abc, importlib.machinery, os, sys, time

LOG = os.environ.get("HPC_EVAL_BENCH_RUN_EVAL_LOG")


def record(event):
    with open(LOG, "a") as handle:
        handle.write(f"{event} {time.time():.6f} {os.getpid()}\n")


class RunEvalHook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "nemo_evaluator_launcher.api.functional":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            original = module.run_eval

            def run_eval(*args, **kwargs):
                record("run_eval_called")
                try:
                    return original(*args, **kwargs)
                finally:
                    record("run_eval_returned")

            module.run_eval = run_eval

        spec.loader.exec_module = exec_module
        return spec


if LOG:
    sys.meta_path.insert(0, RunEvalHook())
"""


def build_iters(job: tuple[str, list[int]]) -> None:
    parent, steps = job
    for step in steps:
        make_iter(parent, step)


def build_evaluations(job: tuple[str, int, int]) -> None:
    """Every fourth of `count` evaluations under a run folder, as a job still running leaves them:
    request.json, slurm.json, and one launcher task that ended (stage.exit 0, a real results.yml)."""
    root, count, part = job
    results = (REPO / "tests" / "data" / "results_bfcl.yml").read_bytes()
    for index in range(part, count, 4):
        eval_dir = Path(root) / f"iter_{index:07d}" / "0123abcd4567-00000000"
        task = eval_dir / "20260101_120000-0123456789abcdef" / "bfcl.0"
        os.makedirs(task / "logs")
        os.makedirs(task / "artifacts")
        (eval_dir / "request.json").write_text(
            json.dumps(
                {
                    "run": Path(root).name,
                    "iteration": index,
                    "checkpoint": None,
                    "config_hash": "0123abcd4567",
                    "created_at": "2026-01-01T00:00:00+0000",
                }
            )
        )
        (eval_dir / "slurm.json").write_text(
            json.dumps({"slurm_job_id": f"{900000 + index // 1000}_{index % 1000}"}) + "\n"
        )
        (task / "logs" / "stage.exit").write_text("2026-01-01T00:05:00Z 0\n")
        (task / "artifacts" / "results.yml").write_bytes(results)


def file_floor(root: Path, count: int) -> tuple[float, float]:
    """(wall, CPU) of a plain loop that makes what a dry run makes per checkpoint: two dirs, two small files."""
    config = "x" * 1500
    wall, cpu = time.perf_counter(), time.process_time()
    os.makedirs(root / "run")
    for index in range(count):
        eval_dir = root / "run" / f"iter_{index:07d}" / "0123abcd4567-00000000"
        os.mkdir(eval_dir.parent)
        os.mkdir(eval_dir)
        with open(eval_dir / "launcher_config.yaml", "w") as handle:
            handle.write(config)
        with open(eval_dir / "request.json", "w") as handle:
            handle.write(config[:700])
    return time.perf_counter() - wall, time.process_time() - cpu


def read_floor(roots: list[Path], summary: bool) -> tuple[float, float]:
    """(wall, CPU) of the file work of `results` at its best, in a plain loop: list the evaluations,
    read request.json, then summary.json, or the task tree (two listings, stage.exit, a stat of
    results.yml, the metrics cache)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for root in roots:
        for iteration in os.listdir(root):
            for leaf in os.listdir(root / iteration):
                eval_dir = root / iteration / leaf
                with open(eval_dir / "request.json", "rb") as handle:
                    handle.read()
                if summary:
                    with open(eval_dir / "summary.json", "rb") as handle:
                        handle.read()
                    continue
                os.path.exists(eval_dir / "summary.json")
                for invocation in os.listdir(eval_dir):
                    if invocation.startswith("2026"):
                        for task in os.listdir(eval_dir / invocation):
                            task_dir = eval_dir / invocation / task
                            with open(task_dir / "logs" / "stage.exit", "rb") as handle:
                                handle.read()
                            os.stat(task_dir / "artifacts" / "results.yml")
                            try:
                                with open(task_dir / "hpc_eval_metrics.json", "rb") as handle:
                                    handle.read()
                            except FileNotFoundError:
                                pass
    return time.perf_counter() - wall, time.process_time() - cpu


def fmt(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}" if isinstance(value, float) else str(value)


def times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def import_times(stderr: str) -> dict[str, float]:
    """`python -X importtime`'s top-level imports: name -> cumulative ms, largest first."""
    rows = [line.split("|") for line in stderr.splitlines() if line.startswith("import time:") and line.count("|") == 2]
    top = {r[2].strip(): int(r[1]) / 1000 for r in rows if r[1].strip().isdigit() and not r[2].startswith("  ")}
    return {name: round(t, 1) for name, t in sorted(top.items(), key=lambda item: item[1], reverse=True)}


def largest(times: dict[str, float], count: int, prefix: str = "") -> str:
    return ", ".join(
        f"{name} {t:g} ms" for name, t in list((n, t) for n, t in times.items() if n.startswith(prefix))[:count]
    )


def scancel(ids: list[str]) -> None:
    for start in range(0, len(ids), 500):
        subprocess.run(["scancel", *ids[start : start + 500]], capture_output=True)


def wait_summary(eval_dir: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            summary = json.loads((eval_dir / "summary.json").read_text())
            if summary.get("state") not in (None, "RUNNING"):
                return summary
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    return {"state": "no summary.json"}


def submitit_start(eval_dir: Path) -> float:
    """The time of submitit's first log line in the job (milliseconds)."""
    from datetime import datetime

    found = [
        datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for log in (eval_dir / "submitit").glob("*_log.*")
        for match in [re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\)", log.read_text())]
        if match
    ]
    if not found:
        raise RuntimeError(f"no submitit log line under {eval_dir / 'submitit'}")
    return min(found)


def find_payload(folder: Path) -> int | None:
    """The python running submitit's _submit for this submitit folder."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                Path(cmdline[0].decode()).name.startswith("python")
                and b"submitit.core._submit" in cmdline
                and str(folder).encode() in cmdline
            ):
                return int(proc.name)  # not srun, whose command line names the same module and folder
    return None


def proc_sample(pid: int) -> tuple[float, float, bool] | None:
    """(time, utime+stime in s, has children) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return time.time(), cpu, bool(children.exists() and children.read_text().strip())


def count_syscalls(trace: Path, run: Path, old: set[str], new: set[str]):
    """Per syscall name; and how many name the run dir, an old iter dir, a new one."""
    from collections import Counter

    total, main_total, dir_reads = Counter(), Counter(), Counter()
    under_run = under_old = under_new = 0
    prefix, main_pid = str(run) + "/", None
    for line in trace.read_text().splitlines():
        match = re.match(r"(\d+)\s+(\w+)\(", line)
        if not match:
            continue
        pid, syscall = match.groups()
        main_pid = main_pid or pid  # the first line is hpc-eval's own
        total[syscall] += 1
        if pid == main_pid:
            main_total[syscall] += 1
        paths = re.findall(r'"(/[^"]*)"|<(/[^>]*)>', line)
        paths = {a or b for a, b in paths}
        if syscall == "getdents64":
            if str(run) in paths:
                dir_reads["run"] += 1
            elif any("/.completed-" in p for p in paths):
                dir_reads["index"] += 1
        names = {p[len(prefix) :].split("/", 1)[0] for p in paths if p.startswith(prefix)}
        if str(run) in paths:
            under_run += 1
        if names & old:
            under_old += 1
        elif names & new:
            under_new += 1
    return total, main_total, under_run, under_old, under_new, dir_reads


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    slurm = (
        subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
        if shutil.which("sinfo")
        else "none"
    )
    try:
        from importlib.metadata import version

        launcher = version("nemo-evaluator-launcher")
    except Exception:  # noqa: BLE001
        launcher = "?"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "slurm": slurm,
        "launcher": launcher,
        "os": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S%z"),
    }


def table(rows: list[Row], markdown: bool) -> str:
    columns = ["section", "measure", "value", "unit", "ratio", "target", "ok", "detail"]
    cells = [
        [
            row.section,
            row.measure,
            fmt(row.value),
            row.unit,
            row.ratio,
            row.target,
            "" if row.ok is None else "yes" if row.ok else "MISSED",
            row.detail,
        ]
        for row in rows
    ]
    if markdown:
        escape = lambda text: text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(escape(c) for c in row) + " |" for row in cells])
    widths = [max(len(c[i]) for c in [columns] + cells) for i in range(len(columns) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in [columns] + cells)


def main() -> int:
    # tiny_chat names its key by NVIDIA_API_KEY, and submit checks that it is set; no request is sent
    os.environ.setdefault("NVIDIA_API_KEY", "unused-by-the-benchmark")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="arrays up to N=100, watch over 1,000 dirs")
    parser.add_argument(
        "--skip-slurm", action="store_true", help="skip the sections that need the local Slurm (3, 4, 5)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--save", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    parser.add_argument(
        "--report-targets",
        action="store_true",
        help="report missed targets but exit 0 (CI: noisy machines); errors still exit non-zero",
    )
    parser.add_argument("--scale", action="store_true", help="only section 6 (its status rows call the local Slurm)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hpc-eval-bench-"))
    bench = Bench(args, tmp)
    info = {**machine(), "load_before": os.getloadavg()}
    started = time.perf_counter()
    try:
        bench.main()
    finally:
        info.update(
            load_after=os.getloadavg(),
            bench_s=round(time.perf_counter() - started, 1),
            command=" ".join(["benchmarks/bench.py", *sys.argv[1:]]),
        )
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report = json.dumps({"machine": info, "rows": [asdict(row) for row in bench.rows]}, indent=2)
    if args.save:
        args.save.write_text(report + "\n")
    if args.json:
        print(report)
    else:
        load = lambda values: " ".join(f"{v:.2f}" for v in values)  # noqa: E731
        print(
            f"machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, {info['slurm']}, launcher {info['launcher']}; "
            f"load {load(info['load_before'])} -> {load(info['load_after'])}; {info['bench_s']} s; {info['date']}"
        )
        print(table(bench.rows, args.markdown))
    missed = [row.measure for row in bench.rows if row.ok is False]
    if missed and args.report_targets:
        print(f"missed targets (reported, not failed): {'; '.join(missed)}", file=sys.stderr)
    return 1 if missed and not args.report_targets else 0


if __name__ == "__main__":
    sys.exit(main())
