"""The gate's imperative shell: data directory, reloads, the journal and the shared counter.

Data directory (``Settings.compliance_dir``, ``EXCHANGE_COMPLIANCE_DIR``; without it the
process keeps uploads in a private temporary directory and nothing survives a restart):

* ``national.dnc``, ``state-XX.dnc``, ``litigators.dnc``: ``DncArray`` files written by the
  importer (``python -m exchange dnc import``, or the upload endpoints) and memory-mapped;
* ``rnd.csv`` (``number,disconnected_date``), ``flags.json`` (``emergency_states``,
  ``abandon_campaigns``), ``holidays.json`` (``{"version", "dates": {ST: [...]}}``): optional;
* ``journal.jsonl``: every opt-out, consent and revocation taken through the API, appended
  and fsynced, replayed at start and tailed by every process. With ``privacy`` set (the
  exchange's sealer, duck-typed: ``seal``, ``blind``, ``load``, ``open``), no number is written
  in clear: an opt-out's ``number`` and a consent's ``phone`` are sealed under the number's
  data key, beside its blind index (``blind``, ``phone_blind``); a line whose number was erased
  replays as an opt-out by blind index (still honoured) or a consent without a number. Each
  such line names the index key it was blinded with (``ix``): a journal whose lines another
  master key wrote cannot be matched at all, and the exchange refuses to start on one
  (``JournalForeign``) rather than drop its opt-outs silently. (Under the same master key but
  another database, the data keys are elsewhere: its opt-outs still hold by blind index and
  its consents match nothing, both failing closed.)

``scan`` (run in a worker thread: it opens files and checks their CRCs) finds what changed
and loads it; ``apply`` swaps the new values into the gate's stores in one assignment each,
on the event loop. A file that fails its checks is logged and the previous value stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any
from collections.abc import Callable

from .consent import consent_from_record
from .dncarray import DncArray
from .dncfile import DncFileError, open_array, read_meta, replace
from .gate import Gate, Verdict
from .importer import ImportAborted, Report, import_changes, import_full
from .loaders import load_flags, load_holidays, load_rnd
from .rules import RulesError, parse_day
from .stores import NumberList
from .suppression import Suppressed

log = logging.getLogger("exchange.compliance")
REFRESH_S = 2.0
DEFAULT_MAX_UPLOAD_BYTES = 8 << 30
SWEEP_EVERY = 30  # refresh ticks between sweeps of the in-process call history


def list_file(root: Path, kind: str, state: str | None = None) -> Path:
    if kind == "national":
        return root / "national.dnc"
    if kind == "state":
        assert state is not None
        return root / f"state-{state}.dnc"
    if kind == "litigators":
        return root / "litigators.dnc"
    raise ValueError(kind)


def number_list(arr: DncArray) -> NumberList:
    meta = arr.meta
    snap = meta.get("snapshot_date")
    day = parse_day(snap) if snap else None
    crc = f"{meta.get('crc_bits', 0):08x}"
    return NumberList(arr, day, f"{meta.get('list', meta.get('kind'))}:{snap}:n={len(arr)}:crc={crc}")


class JournalForeign(RuntimeError):
    """The compliance journal was blinded under another index key (another master key): its
    opt-outs cannot be applied (fail closed: the exchange does not start)."""


class ComplianceRuntime:
    def __init__(self, gate: Gate, data_dir: Path | None = None, redis_url: str | None = None,
                 redis_prefix: str = "dce:", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
        self.gate = gate
        self.max_upload_bytes = max_upload_bytes  # the upload endpoints' limit on a list file
        self.stores = gate.stores
        self.persistent = data_dir is not None
        self._dir = Path(data_dir) if data_dir is not None else None
        self.redis_url = redis_url
        self.redis_prefix = redis_prefix
        self.frequency: Any = None
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._journal_pos = 0
        self._replaying = False
        self._task: asyncio.Task | None = None
        self.privacy: Any = None  # exchange.privacy.Sealer: numbers sealed in the journal and Redis keys blinded
        self.foreign_lines = 0  # journal lines sealed under another database's keys
        self.stores.suppressions.listener = self._journal_suppression

    @property
    def dir(self) -> Path:
        """The data directory; without one configured, a private temporary one (made on first use)."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="dce-compliance-"))
        return self._dir

    @classmethod
    def from_settings(cls, gate: Gate, settings: Any) -> ComplianceRuntime:
        """From the exchange's ``Settings`` (read by attribute: the compliance package never
        imports the exchange): ``compliance_dir``, ``redis_url``, ``redis_prefix``,
        ``max_dnc_upload_bytes``."""
        root = settings.compliance_dir
        prefix = settings.redis_prefix or settings.market + ":"  # unset: the market's prefix (exchange.nodes)
        return cls(gate, Path(root) if root else None, settings.redis_url, prefix,
                   settings.max_dnc_upload_bytes)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        changes = await asyncio.to_thread(self.scan)
        await self._unseal(changes)
        self.apply(changes)
        if self.foreign_lines:
            raise JournalForeign(f"{self.foreign_lines} lines of {self.journal_path} were sealed under another index key "
                                 "(another master key, or another database): their opt-outs and consents cannot be applied; "
                                 "refusing to start (keep the compliance directory with its database and master key)")
        if self.redis_url:
            from .redis_frequency import RedisFrequency

            self.frequency = RedisFrequency(self.redis_url, self.redis_prefix)
            self.gate.shared_frequency = True
        self._task = asyncio.create_task(self._refresher(), name="compliance-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.frequency is not None:
            await self.frequency.close()

    async def _refresher(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(REFRESH_S)
            ticks += 1
            try:
                changes = await asyncio.to_thread(self.scan)
                await self._unseal(changes)
                self.apply(changes)
                self.gate.prebuild_windows(time.time_ns())  # next week's calling-window tables, ahead
                if ticks % SWEEP_EVERY == 0:
                    self.sweep()
            except Exception:  # a bad file must not stop later reloads
                log.exception("compliance_refresh_failed")

    def sweep(self) -> None:
        now = time.time_ns()
        policy = self.gate.rules.policy
        self.stores.frequency.sweep(now, 2 * policy.frequency_window_hours * 3_600_000_000_000)
        self.stores.inquiries.sweep(now, (policy.ebr_inquiry_days + 1) * 86_400_000_000_000)

    # ------------------------------------------------------------------ reloads
    def _changed(self, path: Path) -> bool:
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._seen.get(str(path)) == sig:
            return False
        self._seen[str(path)] = sig
        return True

    def scan(self) -> list[tuple[str, Any]]:
        """Load whatever changed on disk (worker thread). Returns (what, value) pairs."""
        out: list[tuple[str, Any]] = []
        if self._dir is None or not self._dir.is_dir():
            return out
        candidates = [("national", self.dir / "national.dnc"), ("litigators", self.dir / "litigators.dnc")]
        candidates += [(f"state:{p.stem[6:]}", p) for p in sorted(self.dir.glob("state-??.dnc"))]
        for what, path in candidates:
            if self._changed(path):
                try:
                    out.append((what, number_list(open_array(path))))
                except (DncFileError, RulesError, OSError) as exc:
                    log.error("compliance_list_rejected", extra={"path": str(path), "error": str(exc), "note": "the previous list stays in force"})
        for name, loader in (("rnd.csv", load_rnd), ("flags.json", load_flags), ("holidays.json", load_holidays)):
            path = self.dir / name
            if self._changed(path):
                try:
                    out.append((name, loader(path)))
                except (ValueError, OSError) as exc:
                    log.error("compliance_file_rejected", extra={"path": str(path), "error": str(exc), "note": "the previous value stays in force"})
        out.extend(self._read_journal())
        return out

    def apply(self, changes: list[tuple[str, Any]]) -> None:
        """Swap loaded values into the stores (event loop thread)."""
        st = self.stores
        for what, value in changes:
            if what == "national":
                st.swap(national=value)
            elif what == "litigators":
                st.swap(litigators=value)
            elif what.startswith("state:"):
                st.set_state_list(what[6:], value)
            elif what == "rnd.csv":
                st.swap(rnd=value)
            elif what == "flags.json":
                st.swap(flags=value)
            elif what == "holidays.json":
                st.swap(holidays=value)
            elif what == "journal":
                self._apply_journal(value)

    # ------------------------------------------------------------------ journal
    @property
    def journal_path(self) -> Path:
        return self.dir / "journal.jsonl"

    def _append(self, entry: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read_journal(self) -> list[tuple[str, Any]]:
        try:
            with open(self.journal_path, "rb") as f:
                f.seek(self._journal_pos)
                data = f.read()
        except FileNotFoundError:
            return []
        cut = data.rfind(b"\n") + 1  # a line still being written waits for the next scan
        self._journal_pos += cut
        entries = []
        for raw in data[:cut].splitlines():
            try:
                entries.append(json.loads(raw))
            except ValueError:
                log.error("compliance_journal_bad_line", extra={"line": repr(raw[:200])})
        return [("journal", entries)] if entries else []

    async def _unseal(self, changes: list[tuple[str, Any]]) -> None:
        """Load the data keys the journal lines among ``changes`` were sealed with."""
        if self.privacy is None:
            return
        values = [v for what, entries in changes if what == "journal" for e in entries
                  for v in (e.get("number"), (e.get("record") or {}).get("phone") if isinstance(e.get("record"), dict) else None)
                  if isinstance(v, str)]
        if values:
            await self.privacy.load(values)

    def _open(self, value: Any) -> Any:
        """A journal line's number in clear (None: erased); as it is without a sealer."""
        return self.privacy.open(value) if self.privacy is not None and isinstance(value, str) else value

    def _apply_journal(self, entries: list[dict[str, Any]]) -> None:
        st = self.stores
        self._replaying = True
        try:
            for e in entries:
                try:
                    kind = e.get("t")
                    if self.privacy is not None and "ix" in e and e["ix"] != self.privacy.index_id:
                        self.foreign_lines += 1
                        log.critical("compliance_journal_foreign_line", extra={"kind": kind, "index_id": e["ix"]})
                        continue
                    if kind == "suppression":
                        number = self._open(e["number"])
                        if number is None:  # erased: the opt-out stays, by the number's blind index
                            st.suppressions.add_blind(e["blind"], e["scope"], int(e["added_ns"]), e.get("source", ""))
                        else:
                            st.suppressions.add(number, e["scope"], int(e["added_ns"]), e.get("source", ""))
                    elif kind == "consent":
                        record = e["record"]
                        if "phone_blind" in e and isinstance(record, dict):
                            record = {**record, "phone": self._open(record.get("phone")) or "erased"}
                        st.consents.add(consent_from_record(e["token"], record, e.get("publisher", "")))
                    elif kind == "revoke":
                        st.consents.revoke(e["token"], int(e["at_ns"]), e.get("channel", ""), e.get("publisher"))
                except (KeyError, ValueError, TypeError) as exc:
                    log.error("compliance_journal_bad_entry", extra={"entry": str(e), "error": str(exc)})
        finally:
            self._replaying = False

    def _journal_suppression(self, s: Suppressed) -> None:
        if not self._replaying:
            if self.privacy is not None:
                sealed, blind = self.privacy.seal(s.number, time.time_ns())
                self._append({"t": "suppression", "number": sealed, "blind": blind, "ix": self.privacy.index_id, "scope": s.scope,
                              "added_ns": s.added_ns, "source": s.source})
                return
            self._append({"t": "suppression", "number": s.number, "scope": s.scope, "added_ns": s.added_ns, "source": s.source})

    # ------------------------------------------------------------------ writes
    def add_consent(self, token: str, record: dict[str, Any], publisher: str) -> str:
        """"created" | "unchanged" | "conflict" (ValueError when the record is malformed)."""
        consent = consent_from_record(token, record, publisher)
        status = self.stores.consents.add(consent)
        if status == "created":
            phone = record.get("phone")
            if self.privacy is not None and phone is not None:
                sealed, blind = self.privacy.seal(consent.phone or str(phone), time.time_ns())
                self._append({"t": "consent", "token": token, "record": {**record, "phone": sealed}, "phone_blind": blind,
                              "ix": self.privacy.index_id, "publisher": publisher})
            else:
                self._append({"t": "consent", "token": token, "record": record, "publisher": publisher})
        return status

    def revoke(self, token: str, at_ns: int, channel: str, scope: str, source: str, publisher: str | None = None) -> Any:
        """Revoke a consent and put its number on the internal DNC (``scope``); None if unknown.
        ``publisher``: that publisher's record of the token only; None: every record of it (the
        operator), or, for a buyer's scope, every record naming that buyer."""
        st = self.stores.consents
        found = [st.record(token, publisher)] if publisher is not None else st.all(token)
        records = [c for c in found if c is not None]
        if scope.startswith("buyer:"):  # one seller's revocation: its own opt-out; the others' consent stands
            buyer = scope[len("buyer:"):]
            records = [c for c in records if buyer in c.sellers]
            for c in records:
                if c.phone is not None:
                    self.stores.suppressions.add(c.phone, scope, at_ns, source or f"revocation:{channel}")
            return records[0]._replace(revoked_ns=at_ns, revocation_channel=channel) if records else None
        if not records:
            return None
        rec = st.revoke(token, at_ns, channel, publisher)
        self._append({"t": "revoke", "token": token, "at_ns": at_ns, "channel": channel,
                      **({"publisher": publisher} if publisher is not None else {})})
        for c in records:
            if c.phone is not None:
                self.stores.suppressions.add(c.phone, scope, at_ns, source or f"revocation:{channel}")
        return rec

    def import_list(self, kind: str, files: list[Path], snapshot_date: str | None, state: str | None = None,
                    changes: bool = False, progress: Callable[[Report], None] | None = None, force: bool = False,
                    max_reject_ratio: float = 0.5) -> Report:
        """Import into the data directory and publish atomically (any thread). Raises
        ``ImportAborted`` (nothing published) or ``ValueError`` (bad arguments)."""
        if snapshot_date is not None:
            date.fromisoformat(snapshot_date)
        if kind in ("national", "state") and snapshot_date is None:
            raise ValueError("a snapshot date (the download date) is required")
        self.dir.mkdir(parents=True, exist_ok=True)
        final = list_file(self.dir, kind, state)
        tmp = self.dir / f".{final.name}.{os.getpid()}.tmp"
        list_id = f"state-{state}" if kind == "state" else kind
        report = Report("changes" if changes else "full", list_id, snapshot_date, [str(f) for f in files])
        try:
            if changes:
                if not final.exists():
                    raise ImportAborted("a change list needs a full list imported first")
                meta = import_changes(open_array(final), files, tmp, report, progress, max_reject_ratio)
            else:
                meta = import_full(files, tmp, report, progress, max_reject_ratio)
                if kind == "national" and final.exists() and not force:
                    prev = int(read_meta(final).get("count", 0))
                    if report.numbers < prev // 2:
                        raise ImportAborted(f"the new list holds {report.numbers} numbers, less than half of the "
                                            f"{prev} in force: truncated file? (--force to import anyway)")
            open_array(tmp)  # check what was written before it replaces anything
            replace(tmp, final)
        except DncFileError as exc:
            raise ImportAborted(str(exc)) from None
        finally:
            tmp.unlink(missing_ok=True)
        report.path = str(final)
        report.meta = meta
        return report

    # ------------------------------------------------------------------ shared frequency counter
    async def settle(self, verdict: Verdict, member: str) -> Verdict:
        """The awaited step: check-and-record on the shared counter for an allowed call."""
        pend, plan = verdict.pending, verdict.plan
        if pend is None:
            return verdict
        if self.frequency is None or plan is None:
            return Verdict(False, "internal_error", None, None, None, plan)
        try:
            key = pend.key
            if self.privacy is not None:  # "<vertical>:<e164>": the shared counter's key names the number's blind index
                vertical, _, e164 = key.rpartition(":")
                key = f"{vertical}:{self.privacy.blind(e164)}"
            allowed_from = await self.frequency.check_and_record(key, plan.at_ns, pend.cap, pend.window_ns, member)
        except Exception as exc:  # fail closed: no shared count, no capped call
            log.error("compliance_frequency_unavailable", extra={"error": repr(exc)})
            return Verdict(False, "internal_error", "frequency_counter_unavailable", None, None, plan)
        if allowed_from is None:
            return verdict._replace(pending=None)
        return self.gate.frequency_denied(verdict, allowed_from)
