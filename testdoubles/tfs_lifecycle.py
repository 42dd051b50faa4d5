"""Model lifecycle as TF Serving's ServerCore runs it: config, polling, versions, labels.

The stand-in's copy of (paths in tensorflow/serving, tag 2.19.1):

* `model_servers/server_core.cc`: ReloadConfig validates a ModelConfigList (unique names,
  absolute base paths, the `tensorflow` platform), builds the version-label map first
  (UpdateModelVersionLabelMap: a label may only point at an AVAILABLE version unless
  `allow_version_labels_for_unavailable_models`), then waits for new models to be AVAILABLE
  (WaitUntilModelsAvailable). ServableRequestFromModelSpec resolves a ModelSpec by version,
  by label, or to the latest.
* `sources/storage_path/file_system_storage_path_source.cc`: every poll lists the numeric
  children of each model's base path and aspires versions by `model_version_policy`
  (latest N, default 1; all; specific).
* `core/aspired_versions_manager.cc` + `core/availability_preserving_policy.cc`: one action at
  a time, unloads before loads; a version no longer aspired is unloaded only once an aspired
  one is AVAILABLE (so a new version is LOADING -> AVAILABLE before the old one goes
  UNLOADING -> END); the highest new aspired version loads first. With the model server's
  default `--num_load_threads=0` loads run one at a time on the manager thread.
* `core/basic_manager.cc`: only AVAILABLE versions serve; an unload takes the version out of
  the serving map (UNLOADING) and waits for in-flight requests before END. A failed load is
  retried `max_num_load_retries` times `load_retry_interval` apart, then ends in END with
  the error; it is not retried while it stays aspired.
* `core/servable_state_monitor.cc` + `model_servers/get_model_status_impl.cc`: every version
  ever seen stays listed (END included), highest first.

Not copied: resource estimation, `servable_versions_always_present`, custom model configs.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from testdoubles.tfs_status import TFSError, invalid, servable_id, servable_not_found

log = logging.getLogger("testdoubles.standin")

_State = get_model_status_pb2.ModelVersionStatus
START, LOADING, AVAILABLE, UNLOADING, END = (
    _State.START,
    _State.LOADING,
    _State.AVAILABLE,
    _State.UNLOADING,
    _State.END,
)
STATE_NAMES = {v: _State.State.Name(v) for v in (START, LOADING, AVAILABLE, UNLOADING, END)}
PLATFORM = "tensorflow"
_VERSION_DIR = re.compile(r"\s*[+-]?\d+\s*")  # absl::SimpleAtoi accepts these


class Loaded(Protocol):
    """What a loader returns: a version ready to serve (its session)."""

    def close(self) -> None: ...


Loader = Callable[[str, int, Path], Loaded]  # may raise TFSError


@dataclass
class VersionEntry:
    """One version as the manager and the state monitor see it."""

    model: str
    version: int
    path: Path
    state: int = START
    error: TFSError | None = None
    session: Any = None  # set while AVAILABLE / UNLOADING
    aspired: bool = True
    managed: bool = True  # in the manager's harness map (False: history only)
    handles: int = 0  # requests holding it


@dataclass
class _Model:
    config: Any  # ModelConfig
    versions: dict[int, VersionEntry] = field(default_factory=dict)
    pending: set[int] | None = None  # aspired versions from the last poll, not yet applied
    removed: bool = False


class Handle:
    """A request's hold on one AVAILABLE version; release it when the request ends."""

    def __init__(self, manager: ModelManager, entry: VersionEntry) -> None:
        self._manager, self.entry = manager, entry

    @property
    def session(self) -> Any:
        return self.entry.session

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self._manager._release(self.entry)


class ModelManager:
    """Versions of every configured model: polled, loaded, served, unloaded (see module doc)."""

    def __init__(
        self,
        loader: Loader,
        *,
        file_system_poll_wait_s: float = 1.0,
        max_num_load_retries: int = 5,
        load_retry_interval_s: float = 60.0,
        allow_version_labels_for_unavailable_models: bool = False,
        manage_interval_s: float = 0.1,  # aspired_versions_manager.h: 100 ms
    ) -> None:
        self._loader = loader
        self._poll_wait_s = file_system_poll_wait_s
        self._retries = max_num_load_retries
        self._retry_interval_s = load_retry_interval_s
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._manage_interval_s = manage_interval_s
        self._cond = threading.Condition()
        self._models: dict[str, _Model] = {}
        self._labels: dict[str, dict[str, int]] | None = None  # None: no config yet
        self._config: Any = None
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.events: deque[tuple[float, str, int, str]] = deque(maxlen=10_000)

    # -- configuration (ServerCore::ReloadConfig) -------------------------------------------

    @property
    def config(self) -> Any:
        return self._config

    def reload_config(self, config: Any, *, timeout_s: float | None = None) -> None:
        """Apply a ModelServerConfig and wait for its new models; TFSError if it is refused."""
        if config.WhichOneof("config") != "model_config_list":
            raise invalid(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                "ModelConfigList is currently supported"
            )
        entries = list(config.model_config_list.config)
        _validate(entries)
        with self._cond:
            labels = self._label_map(entries)
            new = [
                c.name
                for c in entries
                if c.name not in self._models or self._models[c.name].removed
            ]
            wanted = {c.name for c in entries}
            for name, model in self._models.items():
                if name not in wanted and not model.removed:
                    model.removed, model.pending = True, set()  # tear down every version
            for cfg in entries:
                old = self._models.get(cfg.name)
                if old is None or old.removed:  # new, or back after removal: history kept
                    self._models[cfg.name] = _Model(cfg, versions=old.versions if old else {})
                self._models[cfg.name].config = cfg
            self._labels, self._config = labels, config
            self._cond.notify_all()
        self.poll()
        self._wait_available(new, timeout_s)

    def _label_map(self, entries: list[Any]) -> dict[str, dict[str, int]]:
        """server_core.cc, UpdateModelVersionLabelMap (called with the lock held)."""
        out: dict[str, dict[str, int]] = {}
        for cfg in entries:
            for label, version in cfg.version_labels.items():
                old = (self._labels or {}).get(cfg.name, {}).get(label)
                allowed = self._allow_unavailable_labels and old in (None, version)
                entry = self._models.get(cfg.name, _Model(cfg)).versions.get(version)
                if not allowed and (entry is None or entry.state != AVAILABLE):
                    raise TFSError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {cfg.name}, "
                        "which is not currently available for inference",
                    )
                out.setdefault(cfg.name, {})[label] = version
        return out

    def _wait_available(self, names: list[str], timeout_s: float | None) -> None:
        """server_core.cc, WaitUntilModelsAvailable: each new model's latest version
        AVAILABLE, or UNKNOWN naming the versions that ended in error.

        TF Serving waits for ever when a model has no version on disk; the stand-in says so."""
        with self._cond:
            for name in names:
                model = self._models[name]
                if any(e.managed and e.aspired for e in model.versions.values()):
                    continue
                base = model.config.base_path
                if not Path(base).is_dir():  # file_system_storage_path_source.cc
                    raise invalid(f"Could not find base path {base} for servable {name}")
                raise TFSError(
                    grpc.StatusCode.UNKNOWN,
                    f"No versions of servable {name} found under base path {base}. Did you "
                    "forget to name your leaf directory as a number (eg. '/1/')?",
                )
            done = self._cond.wait_for(
                lambda: all(self._settled(self._models[n]) for n in names), timeout_s
            )
            unavailable = [
                n
                for n in names
                if not any(e.state == AVAILABLE for e in self._models[n].versions.values())
            ]
            ended = [
                e
                for n in unavailable
                for e in self._models[n].versions.values()
                if e.managed and e.aspired and e.state == END
            ]
        if not unavailable:
            return
        parts = "".join(
            f"{{{servable_id(e.model, e.version)} due to error: {e.error}}}, " for e in ended
        )
        if not done:
            parts += "".join(f"{{{{name: {n}}} still loading}}, " for n in unavailable)
        raise TFSError(
            grpc.StatusCode.UNKNOWN,
            f"{len(unavailable)} model(s) did not become available: {{{parts}}}",
        )

    @staticmethod
    def _settled(model: _Model) -> bool:
        managed = [e for e in model.versions.values() if e.managed and e.aspired]
        if any(e.state == AVAILABLE for e in model.versions.values()):
            return True
        return bool(managed) and all(e.state == END for e in managed)

    # -- the file-system source (FileSystemStoragePathSource) ------------------------------

    def poll(self) -> None:
        """List every model's base path once and hand the aspired versions to the manager."""
        with self._cond:
            models = [(n, m.config) for n, m in self._models.items() if not m.removed]
        for name, cfg in models:
            versions = _aspired_versions(cfg)
            if versions is None:
                continue
            with self._cond:
                model = self._models.get(name)
                if model is not None and not model.removed:
                    model.pending = versions
                    self._apply_pending(model)
                    self._cond.notify_all()

    def _apply_pending(self, model: _Model) -> None:
        """AspiredVersionsManager::ProcessAspiredVersionsRequest (lock held)."""
        if model.pending is None:
            return
        wanted = model.pending
        # A re-aspired version still on its way out waits until it is gone
        # (HandlePendingAspiredVersionsRequests / ContainsAnyReaspiredVersions).
        if any(
            e.managed and not e.aspired and e.version in wanted for e in model.versions.values()
        ):
            return
        model.pending = None
        base = Path(model.config.base_path)
        for entry in model.versions.values():
            if entry.managed and entry.version not in wanted:
                entry.aspired = False
        for version in sorted(wanted):
            known = model.versions.get(version)
            if known is None or not known.managed:
                fresh = VersionEntry(model.config.name, version, base / str(version))
                model.versions[version] = fresh
                self._publish(fresh, START)
        self._flush(model)

    def _flush(self, model: _Model) -> None:
        """AspiredVersionsManager::FlushServables: drop un-aspired new/ended versions."""
        for entry in model.versions.values():
            if entry.managed and not entry.aspired and entry.state in (START, END):
                entry.managed = False

    # -- the manager thread (AspiredVersionsManager + AvailabilityPreservingPolicy) ----------

    def start_threads(self) -> None:
        """The manager thread and, unless polling is off, the file-system poller."""
        self.spawn("manager", self._manage_once, 0.0)
        if self._poll_wait_s > 0:
            self.spawn("fs-poll", self.poll, self._poll_wait_s)

    def spawn(self, name: str, fn: Callable[[], None], every_s: float) -> None:
        """Run `fn` every `every_s` seconds (0: back to back) on a daemon thread until close."""
        thread = threading.Thread(
            target=self._loop, args=(fn, every_s), name=f"standin-{name}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _loop(self, fn: Callable[[], None], every_s: float) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
            try:
                fn()
            except Exception:  # a poll or an action that fails must not stop the loop
                log.exception("stand-in %s failed", threading.current_thread().name)
            if every_s > 0:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, every_s)

    def _manage_once(self) -> None:
        """Take the next action (unloads first), or wait up to one manage interval."""
        with self._cond:
            for model in self._models.values():
                self._apply_pending(model)
                self._flush(model)
            action = self._next_action()
            if action is None:
                self._cond.wait(self._manage_interval_s)
                return
            kind, entry = action
            self._publish(entry, LOADING if kind == "load" else UNLOADING)
        if kind == "load":
            self._load(entry)
        else:
            self._unload(entry)

    def _next_action(self) -> tuple[str, VersionEntry] | None:
        """availability_preserving_policy.cc GetNextAction per model; unloads first."""
        loads = []
        for name in sorted(self._models):
            managed = [e for e in self._models[name].versions.values() if e.managed]
            aspired = [e for e in managed if e.aspired]
            unaspired_serving = [e for e in managed if not e.aspired and e.state == AVAILABLE]
            if unaspired_serving and (
                not aspired
                or any(e.state == AVAILABLE for e in aspired)
                or len(unaspired_serving) > 1
            ):
                return "unload", min(unaspired_serving, key=lambda e: e.version)
            new = [e for e in aspired if e.state == START]
            if new:
                loads.append(max(new, key=lambda e: e.version))
        return ("load", loads[0]) if loads else None

    def _load(self, entry: VersionEntry) -> None:
        """LoaderHarness::Load with retries (core/loader_harness.cc, util/retrier.cc)."""
        error: TFSError | None = None
        for attempt in range(self._retries + 1):
            if attempt:
                with self._cond:  # the retry is cancelled once the version is not aspired
                    self._cond.wait_for(
                        lambda: self._closed or not entry.aspired, self._retry_interval_s
                    )
                    if self._closed or not entry.aspired:
                        break
            try:
                session = self._loader(entry.model, entry.version, entry.path)
            except TFSError as exc:
                error = exc
                log.warning("stand-in: loading %s failed: %s", entry.path, exc)
                continue
            except Exception as exc:  # a bug or TF error the loader did not map
                error = TFSError(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
                continue
            with self._cond:
                entry.session, entry.error = session, None
                self._publish(entry, AVAILABLE)
            return
        with self._cond:
            entry.error = error or TFSError(grpc.StatusCode.CANCELLED, "load cancelled")
            self._publish(entry, END)

    def _unload(self, entry: VersionEntry) -> None:
        """BasicManager::ExecuteUnload: out of the serving map, drain the handles, END."""
        with self._cond:
            self._cond.wait_for(lambda: entry.handles == 0, 30.0)
            session, entry.session = entry.session, None
        if session is not None:
            session.close()
        with self._cond:
            self._publish(entry, END)

    def _publish(self, entry: VersionEntry, state: int) -> None:
        entry.state = state
        self.events.append((time.monotonic(), entry.model, entry.version, STATE_NAMES[state]))
        log.info("stand-in: %s %s", servable_id(entry.model, entry.version), STATE_NAMES[state])
        self._cond.notify_all()

    # -- requests ---------------------------------------------------------------------------

    def resolve(self, spec: Any) -> tuple[str, int | None]:
        """server_core.cc, ServableRequestFromModelSpec: (name, version or None = latest)."""
        if not spec.name:
            raise invalid("ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return spec.name, spec.version.value
        if choice == "version_label":
            with self._cond:
                if self._labels is None:
                    raise TFSError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"Model labels does not init yet.{spec.version_label}",
                    )
                version = self._labels.get(spec.name, {}).get(spec.version_label)
            if version is None:
                raise invalid(f"Unrecognized servable version label: {spec.version_label}")
            return spec.name, version
        return spec.name, None

    def acquire(self, spec: Any) -> Handle:
        """A hold on the AVAILABLE version `spec` names; NOT_FOUND when there is none."""
        name, version = self.resolve(spec)
        with self._cond:
            model = self._models.get(name)
            serving = [
                e for e in (model.versions.values() if model else ()) if e.state == AVAILABLE
            ]
            if version is not None:
                serving = [e for e in serving if e.version == version]
            if not serving:
                raise servable_not_found(name, version)
            entry = max(serving, key=lambda e: e.version)
            entry.handles += 1
            return Handle(self, entry)

    def _release(self, entry: VersionEntry) -> None:
        with self._cond:
            entry.handles -= 1
            self._cond.notify_all()

    def status(self, spec: Any) -> list[VersionEntry]:
        """get_model_status_impl.cc: one version, or every version ever seen, highest first.

        A version label in the spec is ignored, as TF Serving ignores it here."""
        with self._cond:
            model = self._models.get(spec.name)
            versions = dict(model.versions) if model else {}
        if spec.WhichOneof("version_choice") == "version":
            entry = versions.get(spec.version.value)
            if entry is None:
                raise TFSError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {spec.version.value} of model {spec.name}",
                )
            return [entry]
        if not versions:
            raise TFSError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}"
            )
        return [versions[v] for v in sorted(versions, reverse=True)]

    # -- introspection, waiting, shutdown ---------------------------------------------------

    def entries(self) -> Iterator[VersionEntry]:
        with self._cond:
            items = [e for m in self._models.values() for e in m.versions.values()]
        yield from items

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until `predicate()` (checked on every state change) or the timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout_s)

    def close(self) -> None:
        """Stop the threads and unload every version."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        for entry in self.entries():
            if entry.session is not None:
                entry.session.close()
                entry.session = None


def _validate(entries: list[Any]) -> None:
    """server_core.cc, ValidateModelConfigList and GetPlatform."""
    seen: set[str] = set()
    for cfg in entries:
        if cfg.name in seen:
            raise invalid(f"Illegal to list model {cfg.name} multiple times in config list")
        seen.add(cfg.name)
    for cfg in entries:
        if not Path(cfg.base_path).is_absolute() and "://" not in cfg.base_path:
            raise invalid(
                f"Expected model {cfg.name} to have an absolute path or URI; got "
                f"base_path()={cfg.base_path}"
            )
        if not cfg.model_platform:
            raise invalid(
                "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                f"ModelServerConfig::model_platform, model name is {cfg.name}"
            )
        if cfg.model_platform != PLATFORM:
            raise TFSError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"PlatformConfigMap has no entry for platform {cfg.model_platform}",
            )


def _aspired_versions(cfg: Any) -> set[int] | None:
    """file_system_storage_path_source.cc: the versions the policy aspires; None if the base
    path cannot be read (the previous aspired set then stays)."""
    base = Path(cfg.base_path)
    try:
        children = [p.name for p in base.iterdir()]
    except OSError:
        log.warning("Could not find base path %s for servable %s", base, cfg.name)
        return None
    found = {int(c) for c in children if _VERSION_DIR.fullmatch(c)}
    policy = cfg.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return found
    if kind == "specific":
        wanted = set(policy.specific.versions)
        for missing in sorted(wanted - found):
            log.warning(
                "Version %d of servable %s, which was requested to be served as a 'specific' "
                "version in the servable's version policy, was not found in the file system",
                missing,
                cfg.name,
            )
        return found & wanted
    n = max(policy.latest.num_versions, 1)  # the default policy: latest, 1 version
    if not found:
        log.warning(
            "No versions of servable %s found under base path %s. Did you forget to name your "
            "leaf directory as a number (eg. '/1/')?",
            cfg.name,
            base,
        )
    return set(sorted(found)[-n:])


def read_models_config(path: Path) -> Any:
    """A models.config text proto as TF Serving's ModelServerConfig (the real message)."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(
            Path(path).read_text(encoding="utf-8"), model_server_config_pb2.ModelServerConfig()
        )
    except (OSError, text_format.ParseError) as exc:
        raise invalid(f"cannot read model config {path}: {exc}") from None


def single_model_config(base_path: Path, name: str, version: int | None = None) -> Any:
    """A ModelServerConfig for one model (what `--model_name`/`--model_base_path` build)."""
    config = model_server_config_pb2.ModelServerConfig()
    cfg = config.model_config_list.config.add(
        name=name, base_path=str(Path(base_path).resolve()), model_platform=PLATFORM
    )
    if version is not None:
        cfg.model_version_policy.specific.versions.append(version)
    return config
