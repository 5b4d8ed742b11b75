"""Which host of a pool gets a job, and whether it can start now: pure, on probes.

The host has the last word (its job decides under the lock, :data:`remote.DECIDE`); this is
the same rule applied to what the client saw, to pick a host and explain the choice.
"""

from __future__ import annotations

from gpuhub.backends.lab.discovery import Probe, Thresholds
from gpuhub.record import Record


class Verdict(Record):
    kind: str  # take | wait | never
    reason: str
    gpus: tuple[int, ...] = ()


class Choice(Record):
    host: str
    verdict: Verdict
    reason: str  # why this host, for the user


def verdict(probe: Probe, limits: Thresholds, need: int, user: str, token: str | None = None) -> Verdict:
    """Could a job of ``user`` needing ``need`` GPUs start on this host now (as the host decides)?"""
    states = probe.classify(limits)
    usable = [s for s in states if s.state not in ("unavailable", "reserved")]
    free = [s.gpu.index for s in states if s.state == "free"]
    reserved = sum(1 for s in states if s.state == "reserved")
    if need > len(usable):
        more = f" ({reserved} more reserved by the site)" if reserved else ""
        usable_text = f"this host has {len(usable)} GPU(s) gpuhub may hand out{more}"
        return Verdict("never", f"{need} GPU(s) asked, but {usable_text}")
    cap = limits.max_gpus_per_user
    if cap and need > cap:
        return Verdict("never", f"{need} GPU(s) asked; the site allows {cap} per user")
    holds: dict[str, int] = {}
    for lock in probe.locks:
        if lock.alive:
            holds[lock.user] = holds.get(lock.user, 0) + 1
    if cap and holds.get(user, 0) + need > cap:
        return Verdict("wait", f"you already hold {holds.get(user, 0)} GPU(s) here and the site allows {cap} per user")
    avail, ahead, ahead_need = len(free), 0, 0
    for entry in probe.waiting():
        if entry.token == token:
            break
        if cap and holds.get(entry.user, 0) + entry.need > cap:
            continue  # blocked by its own user's limit: it does not hold the line
        avail -= entry.need
        ahead += 1
        ahead_need += entry.need
    if avail >= need:
        return Verdict("take", f"{len(free)} of {len(usable)} GPU(s) free", tuple(free[:need]))
    queued = f", {ahead} job(s) queued ahead need {ahead_need}" if ahead else ""
    return Verdict("wait", f"{need} GPU(s) asked, {len(free)} of {len(usable)} free{queued}")


def _load(probe: Probe, limits: Thresholds) -> tuple[float, int]:
    """Busy share of the usable GPUs (lower is better), then free count (higher is better)."""
    states = [s for s in probe.classify(limits) if s.state not in ("unavailable", "reserved")]
    busy = sum(1 for s in states if s.state in ("held", "foreign"))
    free = sum(1 for s in states if s.state == "free")
    return (busy / len(states) if states else 1.0, -free)


def choose(probes: list[Probe], limits: Thresholds, need: int, user: str, wait: bool) -> Choice:
    """The host a job goes to: one that can start it now, least loaded first; when none can and
    ``wait``, the one with the shortest queue. A :class:`Choice` whose verdict is not ``take``
    (and not ``wait`` when waiting) means no host will do; its reason says why for each."""
    judged = [(p, verdict(p, limits, need, user)) for p in probes]
    summary = ", ".join(f"{p.host}: {v.reason}" for p, v in judged)
    ready = [(p, v) for p, v in judged if v.kind == "take"]
    if ready:
        probe, v = min(ready, key=lambda pv: _load(pv[0], limits))
        why = f"host {probe.host}: {v.reason}"
        if len(probes) > 1:
            why += f", least loaded of {len(probes)} hosts" if len(ready) > 1 else f", the only host with {need} free"
        return Choice(probe.host, v, why)
    waiting = [(p, v) for p, v in judged if v.kind == "wait"]
    if wait and waiting:
        probe, v = min(waiting, key=lambda pv: (len(pv[0].waiting()), _load(pv[0], limits)))
        return Choice(probe.host, v, f"host {probe.host}: queued ({v.reason})")
    kind = "wait" if waiting else "never"
    return Choice("", Verdict(kind, summary), summary)
