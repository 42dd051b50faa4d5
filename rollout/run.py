"""A canary rollout, step by step, promoted or rolled back on its own (and `pin`).

    1. models.config: serve the stable version S and the candidate C (a `specific` policy),
       `stable` -> S; TF Serving loads C beside S (its availability-preserving policy keeps S).
    2. C AVAILABLE: label it `canary` (TF Serving refuses a label on a version it has not
       loaded: server_core.cc, UpdateModelVersionLabelMap), and wait until every gateway
       routes the canary label to C (it refuses C if its contract does not check out).
    3. Each step: send that share of the default traffic to C (the gateway's admin API), wait
       the window, compare C with S on the gateways' metrics (`rollout.judge`). A failed step
       rolls back at once.
    4. Promote: `stable` -> C (every default request goes to C), then serve C alone (TF
       Serving unloads S). Roll back: share 0 (every request to S), then serve S alone (TF
       Serving unloads C). Requests in flight on the version unloaded are retried by the
       gateway on the one that stays (service.models).

Each models.config change is written to the file (TF Serving polls it:
`--model_config_file_poll_wait_seconds`) and, unless told not to, also sent with
HandleReloadConfigRequest so TF Serving applies it now; its next poll finds the same config.
Every step prints one line saying what it did and why.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.errors import ConfigError
from contract.tfs_config import (
    CANARY_LABEL,
    STABLE_LABEL,
    model_entry,
    read_models_config,
    with_versions,
    write_text_proto,
)
from rollout.clients import Gateway, ModelServer
from rollout.errors import RolloutError
from rollout.judge import CountersWentBack, Limits, Stats, Verdict, judge, scrape, window

AVAILABLE, END = "AVAILABLE", "END"
_SETTLE_S = 0.5  # after a new share: every worker process has read it (service.traffic)
_POLL_S = 0.5


class Outcome(enum.Enum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled back"


@dataclass(frozen=True)
class Plan:
    """One rollout: which version, how fast, judged how."""

    model: str
    candidate: int
    models_config: Path
    steps: tuple[float, ...] = (0.05, 0.25, 1.0)  # shares of the default traffic
    window_s: float = 60.0
    limits: Limits = field(default_factory=Limits)
    load_timeout_s: float = 600.0  # TF Serving loads and warms the candidate
    gateway_timeout_s: float = 60.0  # every gateway routes as the config says
    reassert_s: float = 5.0  # the share is PUT again this often (a restarted gateway forgets)
    reload_rpc: bool = True

    def __post_init__(self) -> None:
        steps = list(self.steps)
        if not steps or steps != sorted(set(steps)) or not steps[0] > 0 or steps[-1] > 1:
            raise RolloutError(
                f"steps must be increasing shares in (0, 1]. Received: steps={steps}"
            )
        if self.window_s <= 0 or self.candidate < 1:
            raise RolloutError(
                f"window_s must be > 0 and the version >= 1. Received: window_s={self.window_s}, "
                f"version={self.candidate}"
            )


class Rollout:
    """Runs a `Plan` against one model server and the gateways in front of it."""

    def __init__(
        self,
        plan: Plan,
        server: ModelServer,
        gateways: Sequence[Gateway],
        *,
        say: Callable[[str], None] = print,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.plan, self._server, self._gateways = plan, server, list(gateways)
        self._say, self._sleep = say, sleep
        self._config: Any = None

    # -- models.config ----------------------------------------------------------------------

    def _read(self) -> Any:
        try:
            config = read_models_config(self.plan.models_config)
            model_entry(config, self.plan.model)
        except ConfigError as exc:
            raise RolloutError(str(exc)) from None
        return config

    def _apply(self, versions: list[int], labels: dict[str, int], what: str) -> None:
        config = with_versions(self._config, self.plan.model, versions, labels)
        write_text_proto(self.plan.models_config, config)
        if self.plan.reload_rpc:
            self._server.reload(config)
        self._config = config
        shown = ", ".join(f"{k} -> v{v}" for k, v in sorted(labels.items()))
        served = ", ".join(f"v{v}" for v in versions)
        self._say(f"models.config: serve {served}; {shown}: {what}")

    # -- pin ----------------------------------------------------------------------------------

    def pin(self) -> int:
        """Serve only the newest AVAILABLE version, labelled stable: a new export then waits
        for `rollout run` instead of being loaded by TF Serving's latest policy."""
        self._config = self._read()
        serving = self._available()
        if not serving:
            raise RolloutError(
                f"no version of {self.plan.model} is AVAILABLE at {self._server.address}"
            )
        stable = max(serving)
        self._apply([stable], {STABLE_LABEL: stable}, "pinned")
        return stable

    # -- run ----------------------------------------------------------------------------------

    def run(self) -> Outcome:
        """The whole rollout; the outcome, said in the last line."""
        if not self._gateways:
            raise RolloutError("give at least one gateway URL")
        self._config = self._read()
        stable, candidate = self._stable(), self.plan.candidate
        steps = ", ".join(f"{s * 100:g} %" for s in self.plan.steps)
        self._say(
            f"rollout of {self.plan.model} v{candidate}: stable is v{stable}; steps {steps}, "
            f"{self.plan.window_s:g} s each"
        )
        try:
            self._apply([stable, candidate], {STABLE_LABEL: stable}, f"loading v{candidate}")
            why = self._wait_loaded(candidate)
            if why is None:
                self._apply(
                    [stable, candidate],
                    {STABLE_LABEL: stable, CANARY_LABEL: candidate},
                    f"v{candidate} is AVAILABLE: canary",
                )
                why = self._wait_gateways(
                    lambda m: m.get("canary", {}).get("version") == candidate,
                    f"canary v{candidate}",
                )
            baseline: Stats | None = None
            for share in self.plan.steps if why is None else ():
                verdict, baseline = self._step(share, stable, candidate, baseline)
                if not verdict.ok:
                    why = f"step {share * 100:g} %: {verdict.reason}"
                    break
            if why is not None:
                return self._roll_back(stable, candidate, why)
            return self._promote(stable, candidate)
        except KeyboardInterrupt:
            self._roll_back(stable, candidate, "interrupted")
            raise

    def _available(self) -> list[int]:
        return sorted(
            v for v, (s, _) in self._server.states(self.plan.model).items() if s == AVAILABLE
        )

    def _stable(self) -> int:
        """The version serving now: the `stable` label's, else the newest AVAILABLE one other
        than the candidate."""
        entry = model_entry(self._config, self.plan.model)
        serving = self._available()
        labelled = entry.version_labels.get(STABLE_LABEL)
        if labelled in serving and labelled != self.plan.candidate:
            return int(labelled)
        others = [v for v in serving if v != self.plan.candidate]
        if others:
            return max(others)
        hint = (
            f"; TF Serving already serves v{self.plan.candidate} alone (its latest policy "
            "loaded the export): pin the stable version with `resnet-serving rollout pin` "
            "before exporting the next candidate"
            if self.plan.candidate in serving
            else ""
        )
        raise RolloutError(
            f"no stable version of {self.plan.model} is AVAILABLE at {self._server.address}{hint}"
        )

    def _wait_loaded(self, candidate: int) -> str | None:
        """None once `candidate` is AVAILABLE; else why it is not (failed, or too slow)."""
        end = time.monotonic() + self.plan.load_timeout_s
        state = "unknown"
        while time.monotonic() < end:
            state, error = self._server.states(self.plan.model).get(candidate, ("not seen", ""))
            if state == AVAILABLE:
                return None
            if state == END:
                return f"v{candidate} failed to load: {error or 'unloaded'}"
            self._sleep(_POLL_S)
        return f"v{candidate} was not AVAILABLE within {self.plan.load_timeout_s:g} s ({state})"

    def _wait_gateways(self, done: Callable[[dict[str, Any]], bool], what: str) -> str | None:
        """None once every gateway's /v1/models entry satisfies `done`; else why not (the
        gateway refused the candidate's contract, or did not get there in time)."""
        end = time.monotonic() + self.plan.gateway_timeout_s
        waiting = list(self._gateways)
        while waiting and time.monotonic() < end:
            for gateway in list(waiting):
                entry = gateway.model(self.plan.model)
                refused = [
                    v for v in entry.get("versions", [])
                    if v["version"] == self.plan.candidate and v.get("error") and not v["serving"]
                ]  # fmt: skip
                if refused:
                    return f"{gateway.url} refused v{self.plan.candidate}: {refused[0]['error']}"
                if done(entry):
                    waiting.remove(gateway)
            if waiting:
                self._sleep(_POLL_S)
        if waiting:
            return f"{waiting[0].url} did not route {what} within {self.plan.gateway_timeout_s:g} s"
        return None

    def _share(self, share: float) -> None:
        for gateway in self._gateways:
            gateway.set_canary(self.plan.model, share)

    def _step(
        self, share: float, stable: int, candidate: int, baseline: Stats | None
    ) -> tuple[Verdict, Stats | None]:
        """One step: the share, the window, the verdict (and stable's numbers for later)."""
        self._share(share)
        self._say(
            f"step {share * 100:g} %: {share * 100:g} % of default requests to v{candidate} "
            f"for {self.plan.window_s:g} s"
        )
        for _ in range(3):
            self._sleep(_SETTLE_S)
            before = scrape(g.metrics() for g in self._gateways)
            end = time.monotonic() + self.plan.window_s
            while (left := end - time.monotonic()) > 0:
                self._sleep(min(self.plan.reassert_s, left))
                self._share(share)  # a gateway that restarted meanwhile gets it again
            after = scrape(g.metrics() for g in self._gateways)
            try:
                canary = window(before, after, self.plan.model, candidate)
                current = window(before, after, self.plan.model, stable)
                break
            except CountersWentBack as exc:
                self._say(f"step {share * 100:g} %: {exc}; measuring the window again")
        else:
            return Verdict(
                False, "the gateways' counters kept going back: cannot measure"
            ), baseline
        enough = current.requests >= self.plan.limits.min_requests
        compare = current if enough else baseline
        verdict = judge(canary, compare, self.plan.limits)
        word = "ok" if verdict.ok else "FAILED"
        note = "" if enough or compare is None else " (stable as measured in an earlier step)"
        self._say(f"step {share * 100:g} %: {word}: {verdict.reason}{note}")
        return Verdict(verdict.ok, verdict.reason + note), compare

    def _promote(self, stable: int, candidate: int) -> Outcome:
        self._apply([stable, candidate], {STABLE_LABEL: candidate}, f"v{candidate} is stable")
        why = self._wait_gateways(
            lambda m: m.get("version") == candidate, f"v{candidate} as default"
        )
        if why is not None:  # the label is moved; only the old version's unload waits
            self._say(f"warning: {why}; v{stable} stays served until the gateways follow")
            self._share(0.0)
            return Outcome.PROMOTED
        self._share(0.0)
        self._apply([candidate], {STABLE_LABEL: candidate}, f"v{stable} unloads")
        self._say(f"promoted {self.plan.model} v{candidate}")
        return Outcome.PROMOTED

    def _roll_back(self, stable: int, candidate: int, why: str) -> Outcome:
        self._say(f"rolling back: {why}")
        try:
            self._share(0.0)  # every default request to stable at once
        except RolloutError as exc:
            self._say(f"warning: {exc}")
        self._apply([stable], {STABLE_LABEL: stable}, f"v{candidate} unloads")
        self._say(f"rolled back {self.plan.model} to v{stable}")
        return Outcome.ROLLED_BACK
