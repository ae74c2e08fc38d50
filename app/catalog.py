"""The catalog: services and feature recipes from YAML.

Owns parsing, `${VAR:-default}` expansion and validation with errors that name the
file, the key and the problem. `current_catalog()` re-reads the file when it changes
so that limits tune live; a job keeps the recipe snapshot it was created with.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from app.config import get_settings

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SERVICE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_VAR = re.compile(r"\$\{([^}]*)\}")
_VAR_BODY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.S)
DEFAULT_CATALOG = "default_catalog.yaml"


class CatalogError(ValueError):
    """An invalid catalog; the message names the file, the key and the problem."""


class Backoff(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_s: Annotated[float, Field(ge=0)] = 0.5
    max_s: Annotated[float, Field(ge=0)] = 30.0
    multiplier: Annotated[float, Field(ge=1)] = 2.0
    # Full jitter: the delay is drawn from [delay * (1 - jitter), delay].
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.5


# How long a python step may run when its service sets no timeout_s. An http service
# without one takes HTTP_READ_TIMEOUT_S, read when the catalog is loaded: a job's recipe
# snapshot keeps the value its steps started with.
PYTHON_STEP_TIMEOUT_S = 30.0


def _default_timeout_s(fields: dict[str, Any]) -> float:
    if fields.get("kind") == "http":
        return get_settings().http_read_timeout_s
    return PYTHON_STEP_TIMEOUT_S


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
# What every call carries from the gateway (DESIGN.md "Calling a service").
RESERVED_HEADERS = frozenset(
    {"x-job-id", "idempotency-key", "content-type", "content-length", "host", "traceparent"}
)


class Service(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["http", "python"]
    url: str | None = None
    target: str | None = None
    queue: str = "default"
    concurrency: Annotated[int, Field(ge=1)] = 10
    timeout_s: Annotated[float, Field(gt=0, default_factory=_default_timeout_s)]
    lease_ttl_s: Annotated[float, Field(gt=0)] = 60.0
    max_attempts: Annotated[int, Field(ge=1)] = 3
    backoff: Backoff = Backoff()
    # Sent on every call to this service only (kind http): its own credentials. Left
    # out of dumps, so never copied into a job's recipe snapshot or an API answer; the
    # worker takes them from the live catalog (app/jobs/slots.py live_service).
    headers: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the gateway itself")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r}: a value cannot hold a line break")
        return headers

    @model_validator(mode="after")
    def _call_spec(self) -> Service:
        if not QUEUE_NAME.match(self.queue):
            raise ValueError(f"queue {self.queue!r} is not a valid queue name ([A-Za-z0-9_.-])")
        if self.kind == "http":
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ValueError("kind http needs url: an http:// or https:// address")
            if self.target:
                raise ValueError("target is for kind python; kind http takes url")
        else:
            if not self.target or not re.match(r"^[\w.]+:[\w.]+$", self.target):
                raise ValueError("kind python needs target: 'package.module:function'")
            if self.url:
                raise ValueError("url is for kind http; kind python takes target")
            if self.headers:
                raise ValueError("headers are for kind http; kind python takes none")
        return self


class Feature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    steps: Annotated[list[str], Field(min_length=1)]
    # Each step's share of the progress: `progress` after a step is the weights so far
    # over their total. A step written as a plain service name weighs 1.
    weights: list[float] = []

    @model_validator(mode="after")
    def _weights(self) -> Feature:
        if not self.weights:
            object.__setattr__(self, "weights", [1.0] * len(self.steps))
        if len(self.weights) != len(self.steps):
            raise ValueError("weights: one per step")
        if sum(self.weights) <= 0:
            raise ValueError("steps: every weight is 0; at least one step must weigh more")
        return self


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str
    services: dict[str, Service]
    features: dict[str, Feature]

    def recipe(self, feature_name: str) -> list[Service]:
        """The services of the feature's steps, in order (their weights: `Feature.weights`)."""
        return [self.services[name] for name in self.features[feature_name].steps]

    @property
    def queues(self) -> list[str]:
        return sorted({service.queue for service in self.services.values()})

    @property
    def longest_timeout_s(self) -> float:
        return max((s.timeout_s for s in self.services.values()), default=0.0)


def expand_env(text: str, where: str, env: Mapping[str, str] | None = None) -> str:
    """Expand `${VAR}` and `${VAR:-default}`; anything else in `${...}` is an error."""
    env = os.environ if env is None else env

    def substitute(match: re.Match[str]) -> str:
        body = _VAR_BODY.match(match.group(1))
        if body is None:
            raise CatalogError(
                f"{where}: unsupported variable syntax {match.group(0)!r} "
                "(use ${VAR} or ${VAR:-default})"
            )
        name, default = body.group(1), body.group(2)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise CatalogError(f"{where}: environment variable {name} is not set and has no default")

    return _VAR.sub(substitute, text)


def _expand_tree(node: Any, where: str) -> Any:
    if isinstance(node, str):
        return expand_env(node, where)
    if isinstance(node, dict):
        return {key: _expand_tree(value, f"{where}.{key}") for key, value in node.items()}
    if isinstance(node, list):
        return [_expand_tree(value, f"{where}[{i}]") for i, value in enumerate(node)]
    return node


def _describe(error: ValidationError, where: str) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        problems.append(f"{where}{'.' + key if key else ''}: {item['msg']}")
    return "; ".join(problems)


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a mapping, got {type(raw).__name__}")
    return raw


def _weighed_steps(raw: list[Any], where: str) -> tuple[list[Any], list[float]]:
    """A recipe's service names and weights: a step is a service name (weight 1) or
    `{service: NAME, weight: N}` with N a number >= 0."""
    names: list[Any] = []
    weights: list[float] = []
    for i, step in enumerate(raw):
        if not isinstance(step, dict):
            names.append(step)
            weights.append(1.0)
            continue
        unknown = set(step) - {"service", "weight"}
        if unknown:
            raise CatalogError(
                f"{where}[{i}]: unknown key(s) {sorted(unknown)} (a step takes service, weight)"
            )
        if "service" not in step:
            raise CatalogError(f"{where}[{i}].service: required (the service the step calls)")
        weight = step.get("weight", 1)
        number = isinstance(weight, int | float) and not isinstance(weight, bool)
        if not number or not math.isfinite(weight) or weight < 0:
            raise CatalogError(f"{where}[{i}].weight: must be a number >= 0, got {weight!r}")
        names.append(step["service"])
        weights.append(float(weight))
    return names, weights


def _parse_features(raw: Any, source: str, services: dict[str, Service]) -> dict[str, Feature]:
    features: dict[str, Feature] = {}
    for name, spec_raw in _mapping(raw, f"{source}: features").items():
        where = f"{source}: features.{name}"
        spec = dict(_mapping(spec_raw, where))
        if "weights" in spec:
            raise CatalogError(
                f"{where}.weights: unknown key (a step weighs {{service: NAME, weight: N}})"
            )
        if isinstance(spec.get("steps"), list):
            spec["steps"], spec["weights"] = _weighed_steps(spec["steps"], f"{where}.steps")
        try:
            features[name] = Feature(name=name, **spec)
        except ValidationError as exc:
            raise CatalogError(_describe(exc, where)) from exc
        for i, step in enumerate(features[name].steps):
            if step not in services:
                raise CatalogError(f"{where}.steps[{i}]: unknown service {step!r}")
    return features


def parse_catalog(text: str, source: str) -> Catalog:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {exc}") from exc
    document = _mapping(document, source)
    unknown = set(document) - {"services", "features"}
    if unknown:
        raise CatalogError(f"{source}: unknown top-level key(s) {sorted(unknown)}")

    services: dict[str, Service] = {}
    for name, raw in _mapping(document.get("services"), f"{source}: services").items():
        where = f"{source}: services.{name}"
        if not SERVICE_NAME.match(str(name)):
            raise CatalogError(f"{where}: invalid service name")
        spec = _expand_tree(_mapping(raw, where), where)
        try:
            services[name] = Service(name=name, **spec)
        except ValidationError as exc:
            raise CatalogError(_describe(exc, where)) from exc
        except TypeError as exc:
            raise CatalogError(f"{where}: {exc}") from exc

    features = _parse_features(document.get("features"), source, services)
    if not features:
        raise CatalogError(f"{source}: features: at least one feature is required")
    return Catalog(source=source, services=services, features=features)


def load_catalog(path: Path | None = None) -> Catalog:
    if path is None:
        text = resources.files("app").joinpath(DEFAULT_CATALOG).read_text()
        return parse_catalog(text, f"<package>/app/{DEFAULT_CATALOG}")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalog: {exc.strerror}") from exc
    return parse_catalog(text, str(path))


class _LiveCatalog:
    """The catalog of this process, re-read when its file changes (checked at most 1/s)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._mtime: float | None = None
        self._checked_at = 0.0

    def get(self) -> Catalog:
        path = get_settings().cao_catalog
        now = time.monotonic()
        if self._catalog is not None and (path is None or now - self._checked_at < 1.0):
            return self._catalog
        with self._lock:
            self._checked_at = now
            mtime = path.stat().st_mtime if path is not None and path.exists() else None
            if self._catalog is None or mtime != self._mtime:
                try:
                    previous, self._catalog = self._catalog, load_catalog(path)
                    self._mtime = mtime
                    if previous is not None:
                        structlog.get_logger().info(
                            "catalog reloaded",
                            source=self._catalog.source,
                            services=len(self._catalog.services),
                            features=len(self._catalog.features),
                        )
                except CatalogError:
                    if self._catalog is None:
                        raise
                    # A bad edit keeps the last good catalog; start-up still refuses it.
                    structlog.get_logger().exception("catalog reload failed; keeping previous")
                    self._mtime = mtime
            return self._catalog


_live = _LiveCatalog()


def current_catalog() -> Catalog:
    return _live.get()
