"""What Slurm says of our jobs: live states from squeue, final ones from sacct, one call of each."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpc_eval.slurm import LIVE_STATES, base_job_ids, run_quietly


@dataclass
class SlurmJobState:
    state: str
    elapsed: str = ""
    reason: str = ""
    name: str = ""  # the job's name, to tell ours from another job that got the same id after a reset


def query_squeue(job_ids: list[str]) -> dict[str, SlurmJobState] | None:
    """Live jobs among `job_ids` (array tasks one per line), in one squeue call; None without an answer."""
    if not job_ids:
        return {}
    output = run_quietly(["squeue", "-h", "-r", "-o", "%i|%T|%M|%r|%j", "-j", ",".join(base_job_ids(job_ids))])
    return None if output is None else parse_squeue(output, job_ids)


def parse_squeue(output: str, job_ids: list[str]) -> dict[str, SlurmJobState]:
    """`squeue -o %i|%T|%M|%r|%j` lines -> the live states of `job_ids`."""
    states = {}
    for line in output.splitlines():
        job, state, elapsed, reason, name = (line.split("|", 4) + ["", "", "", ""])[:5]
        states[job.strip()] = SlurmJobState(
            state.strip(), elapsed.strip(), "" if reason.strip() == "None" else reason.strip(), name.strip()
        )
    # With -j, squeue also shows jobs that just ended; their final word comes from sacct.
    return {job: states[job] for job in job_ids if job in states and states[job].state in LIVE_STATES}


def query_sacct(job_ids: list[str]) -> dict[str, SlurmJobState] | None:
    """Final (or last known) states of `job_ids` from accounting, in one sacct call; None without an answer."""
    if not job_ids:
        return {}
    output = run_quietly(
        ["sacct", "-X", "-P", "-n", "-o", "JobID,State,ExitCode,Elapsed,JobName", "-j", ",".join(base_job_ids(job_ids))]
    )
    return None if output is None else parse_sacct(output, job_ids)


def parse_sacct(output: str, job_ids: list[str]) -> dict[str, SlurmJobState]:
    """`sacct -P -o JobID,State,ExitCode,Elapsed[,JobName]` lines -> the states of `job_ids`.

    An array's tasks that never started are folded into one line (`6_[0-499%32]`, `6_[1,3-5]`):
    each task it covers gets that line's state, unless a line of its own says otherwise. An array
    none of whose tasks ever started is one line under its bare id (`6`), which then covers them all.
    """
    states, folded = {}, {}
    for line in output.splitlines():
        parts = line.split("|")
        if len(parts) < 4:
            continue
        job, state, exit_code, elapsed = parts[:4]
        word = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        reason = state if word != state else (f"exit code {exit_code}" if word == "FAILED" else "")
        parsed = SlurmJobState(word.rstrip("+"), elapsed, reason, "|".join(parts[4:]))
        for task in array_tasks(job) or [job]:
            (folded if task != job else states)[task] = parsed
    states = {**folded, **states}
    return {
        job: states.get(job) or states[job.split("_")[0]]
        for job in job_ids
        if job in states or job.split("_")[0] in states
    }


def array_tasks(job: str) -> list[str]:
    """The task ids a folded sacct array line covers (`6_[0-2,5%32]` -> 6_0 6_1 6_2 6_5); [] for other ids."""
    match = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job)
    if not match:
        return []
    tasks = []
    for piece in match.group(2).split(","):
        first, _, last = piece.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            tasks += [f"{match.group(1)}_{index}" for index in range(int(first), int(last or first) + 1)]
    return tasks
