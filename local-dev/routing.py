"""Broker routing as Knative Eventing does it, read from the rendered `manifests/`.

Pure code: it parses Broker, Trigger and PingSource objects (dicts, as
`kubectl kustomize` renders them) into typed routes and answers three
questions the local broker (`dropgate_local.router`) asks:

* which Triggers does an event match (`RoutingTable.matching_routes`), with the
  exact-match semantics of `spec.filter.attributes`;
* how long to wait before each retry (`backoff_delays`), as the Knative
  dispatcher computes it from a Trigger's `delivery`;
* is a PingSource due in a given minute (`CronSchedule.matches`).

No I/O happens here besides parsing; rendering and HTTP live in the router.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final, Literal
from zoneinfo import ZoneInfo

BROKER_API_GROUP: Final = "eventing.knative.dev"
SOURCES_API_GROUP: Final = "sources.knative.dev"
PING_EVENT_TYPE: Final = "dev.knative.sources.ping"

# Knative's attribute filter looks these up on every event, set or not; an unset
# optional attribute reads as "" (eventing pkg/eventfilter/attributes/filter.go).
_CONTEXT_ATTRIBUTES: Final = frozenset({
    "specversion", "type", "source", "subject", "id", "time", "dataschema", "schemaurl",
    "datacontenttype", "datamediatype", "datacontentencoding",
})
# A filter value of "" means "any non-empty value" (eventing v1 TriggerAnyFilter).
TRIGGER_ANY_FILTER: Final = ""

BackoffPolicy = Literal["linear", "exponential"]


class RoutingError(ValueError):
    """A manifest object cannot be turned into a route (missing or malformed field)."""


# -- ISO-8601 durations (delivery.backoffDelay, delivery.timeout) --

_DURATION: Final = re.compile(
    r"^P(?:(?P<years>\d+(?:[.,]\d+)?)Y)?(?:(?P<months>\d+(?:[.,]\d+)?)M)?(?:(?P<weeks>\d+(?:[.,]\d+)?)W)?"
    r"(?:(?P<days>\d+(?:[.,]\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:[.,]\d+)?)H)?(?:(?P<minutes>\d+(?:[.,]\d+)?)M)?(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?)?$"
)
# Knative parses with rickb777/date/period, whose nominal year and month these are.
_UNIT_SECONDS: Final = {"years": 365.2425 * 86400, "months": 30.436875 * 86400, "weeks": 7 * 86400,
                        "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}


def parse_iso8601_duration(text: str) -> timedelta:
    """`PT0.5S`, `PT2S`, `PT15M`, `P1D`... as a timedelta; ValueError for anything else."""
    match = _DURATION.match(text.strip().upper()) if isinstance(text, str) else None
    if not match or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        raise ValueError(f"not an ISO-8601 duration: {text!r} (expected e.g. PT0.5S, PT2S, PT15M)")
    seconds = sum(float(value.replace(",", ".")) * _UNIT_SECONDS[unit]
                  for unit, value in match.groupdict().items() if value)
    return timedelta(seconds=seconds)


# -- typed views of the manifest objects --

@dataclass(frozen=True)
class Destination:
    """A Knative `Destination` (duck v1): a reference to an addressable object and/or a URI."""

    kind: str | None = None
    name: str | None = None
    api_version: str | None = None
    namespace: str | None = None
    uri: str | None = None
    # OIDC audience of the target (`authentication-oidc`): the broker requests a token for it. A
    # Knative Service announces none, so a Trigger to one must set it, or no token is sent.
    audience: str | None = None

    @classmethod
    def from_spec(cls, spec: Mapping | None, where: str) -> Destination | None:
        if not spec:
            return None
        ref = spec.get("ref") or {}
        destination = cls(kind=ref.get("kind"), name=ref.get("name"), api_version=ref.get("apiVersion"),
                          namespace=ref.get("namespace"), uri=spec.get("uri"), audience=spec.get("audience"))
        if destination.name is None and destination.uri is None:
            raise RoutingError(f"{where}: a destination needs ref.name or uri")
        return destination

    @property
    def is_absolute_uri(self) -> bool:
        return bool(self.uri) and "://" in self.uri

    def resolve(self, addresses: Mapping[str, str]) -> str | None:
        """The URL to POST to, given where each referenced object answers; None when unresolvable.

        As in Knative, a relative `uri` is resolved against the referenced object's address.
        """
        if self.name is not None:
            base = addresses.get(self.name)
            if base is None:
                return None
            if self.uri:
                return base.rstrip("/") + "/" + self.uri.lstrip("/")
            return base
        return self.uri if self.is_absolute_uri else None

    def describe(self) -> str:
        if self.name is not None:
            return f"{self.kind or '?'}/{self.name}" + (f" {self.uri}" if self.uri else "")
        return str(self.uri)


@dataclass(frozen=True)
class DeliverySpec:
    """A Trigger's (or Broker's) `spec.delivery`."""

    retry: int = 0
    backoff_policy: BackoffPolicy | None = None
    backoff_delay: timedelta | None = None
    dead_letter: Destination | None = None
    timeout: timedelta | None = None  # per request; Knative's `delivery-timeout` feature (beta, on by default)
    format: Literal["json", "binary"] | None = None  # None: the event's own mode (binary for our events)

    @classmethod
    def from_spec(cls, spec: Mapping | None, where: str) -> DeliverySpec | None:
        if spec is None:
            return None
        retry = spec.get("retry", 0)
        if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
            raise RoutingError(f"{where}: delivery.retry must be a non-negative integer, got {retry!r}")
        policy = spec.get("backoffPolicy")
        if policy not in (None, "linear", "exponential"):
            raise RoutingError(f"{where}: delivery.backoffPolicy must be linear or exponential, got {policy!r}")
        fmt = spec.get("format")
        if fmt not in (None, "json", "binary"):
            raise RoutingError(f"{where}: delivery.format must be json or binary, got {fmt!r}")
        try:
            delay = parse_iso8601_duration(spec["backoffDelay"]) if spec.get("backoffDelay") else None
            timeout = parse_iso8601_duration(spec["timeout"]) if spec.get("timeout") else None
        except ValueError as exc:
            raise RoutingError(f"{where}: {exc}") from None
        return cls(retry=retry, backoff_policy=policy, backoff_delay=delay,
                   dead_letter=Destination.from_spec(spec.get("deadLetterSink"), f"{where} deadLetterSink"),
                   timeout=timeout, format=fmt)


def backoff_delays(delivery: DeliverySpec | None) -> list[float]:
    """Seconds to wait before each retry: `delivery.retry` entries, first retry first.

    The Knative dispatcher (eventing pkg/kncloudevents/retries.go) hands
    hashicorp/go-retryablehttp a backoff of `delay * 2^n` (exponential) or
    `delay * n` (linear), and go-retryablehttp calls it with n = 0 before the
    first retry. So exponential waits delay, 2·delay, 4·delay…; linear waits
    0, delay, 2·delay…. Without both a policy and a delay, retries are immediate.
    """
    if delivery is None or delivery.retry <= 0:
        return []
    if delivery.backoff_policy is None or delivery.backoff_delay is None:
        return [0.0] * delivery.retry
    delay = delivery.backoff_delay.total_seconds()
    if delivery.backoff_policy == "exponential":
        return [delay * 2**n for n in range(delivery.retry)]
    return [delay * n for n in range(delivery.retry)]


def should_retry(status: int | None) -> bool:
    """Knative's SelectiveRetry (knative/eventing pkg/kncloudevents/retries.go): connection errors,
    5xx, 404, 408, 409 and 429 are retried; nothing else.

    `status` is None when no HTTP response came back (refused, reset, timed out).
    404 is retried because a Knative Service answers it while its pod becomes ready.
    """
    return status is None or status >= 500 or status in (404, 408, 409, 429)


@dataclass(frozen=True)
class TriggerRoute:
    """One Trigger: which events of which Broker go to which subscriber, and how delivery is retried."""

    name: str
    namespace: str | None
    broker: str
    filter_attributes: Mapping[str, str]
    subscriber: Destination
    delivery: DeliverySpec | None

    @property
    def subscriber_service(self) -> str | None:
        """The referenced object's name (a Knative Service for dropgate), or None for a plain URI."""
        return self.subscriber.name

    def matches(self, event_attributes: Mapping[str, str]) -> bool:
        """Knative's exact attribute matching: every filter entry must hold; no filter matches everything.

        An attribute the event lacks fails the filter. Context attributes always
        exist, reading "" when unset. A filter value "" accepts any non-empty value.
        """
        for name, wanted in self.filter_attributes.items():
            if name in event_attributes and event_attributes[name] is not None:
                value = str(event_attributes[name])
            elif name in _CONTEXT_ATTRIBUTES:
                value = ""
            else:
                return False
            if wanted == TRIGGER_ANY_FILTER:
                if value == "":
                    return False
            elif wanted != value:
                return False
        return True


@dataclass(frozen=True)
class PingSchedule:
    """One PingSource: a cron schedule, the event it sends and where."""

    name: str
    namespace: str | None
    schedule: CronSchedule
    sink: Destination
    content_type: str | None
    data: str | None
    data_base64: str | None
    extensions: Mapping[str, str] = field(default_factory=dict)

    @property
    def event_source(self) -> str:
        """The CloudEvents `source` Knative's PingSource adapter sets."""
        return f"/apis/v1/namespaces/{self.namespace or 'default'}/pingsources/{self.name}"

    def is_due(self, moment: datetime) -> bool:
        return self.schedule.matches(moment)


@dataclass(frozen=True)
class BrokerInfo:
    name: str
    namespace: str | None
    broker_class: str | None
    delivery: DeliverySpec | None


# -- cron (PingSource spec.schedule) --

_MONTH_NAMES: Final = {name: i for i, name in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], start=1)}
_DAY_NAMES: Final = {name: i for i, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_DESCRIPTORS: Final = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                       "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
                       "@hourly": "0 * * * *"}


def _parse_cron_field(text: str, low: int, high: int, names: Mapping[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"empty list element in {text!r}")
        range_text, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step_text and (not step_text.isdigit() or step < 1):
            raise ValueError(f"bad step in {part!r}")
        if range_text == "*":
            start, end = low, high
        else:
            first, dash, last = range_text.partition("-")
            start = _cron_value(first, names)
            end = _cron_value(last, names) if dash else (high if step_text else start)
        if not low <= start <= high or not low <= end <= high or start > end:
            raise ValueError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _cron_value(text: str, names: Mapping[str, int]) -> int:
    if text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise ValueError(f"not a number: {text!r}")
    return int(text)


@dataclass(frozen=True)
class CronSchedule:
    """A standard 5-field cron expression: minute hour day-of-month month day-of-week.

    Supports `*`, lists, ranges, steps, month and day names, the @hourly-style
    descriptors and a `CRON_TZ=`/`TZ=` prefix, like the robfig/cron parser
    PingSource uses. When both day fields are restricted a day matches if either
    does (classic cron); when one is `*` both must.
    """

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]
    dom_restricted: bool
    dow_restricted: bool
    timezone: str | None = None

    @classmethod
    def parse(cls, expression: str, timezone: str | None = None) -> CronSchedule:
        text = expression.strip()
        if text.startswith(("CRON_TZ=", "TZ=")):
            prefix, _, text = text.partition(" ")
            timezone = prefix.split("=", 1)[1]
            text = text.strip()
        text = _DESCRIPTORS.get(text.lower(), text)
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"cron schedule {expression!r} must have 5 fields "
                             "(minute hour day-of-month month day-of-week)")
        try:
            dow = _parse_cron_field(fields[4], 0, 7, _DAY_NAMES)
            schedule = cls(
                expression=expression,
                minutes=_parse_cron_field(fields[0], 0, 59, {}),
                hours=_parse_cron_field(fields[1], 0, 23, {}),
                days_of_month=_parse_cron_field(fields[2], 1, 31, {}),
                months=_parse_cron_field(fields[3], 1, 12, _MONTH_NAMES),
                days_of_week=frozenset(d % 7 for d in dow),  # 7 is Sunday too
                dom_restricted=not fields[2].startswith("*"),
                dow_restricted=not fields[4].startswith("*"),
                timezone=timezone,
            )
            if timezone:
                ZoneInfo(timezone)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"cron schedule {expression!r}: {exc}") from None
        return schedule

    def matches(self, moment: datetime) -> bool:
        """Whether the schedule fires in the minute containing `moment` (naive: taken as UTC)."""
        if self.timezone:
            aware = moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo("UTC"))
            moment = aware.astimezone(ZoneInfo(self.timezone))
        if moment.minute not in self.minutes or moment.hour not in self.hours or moment.month not in self.months:
            return False
        dom_ok = moment.day in self.days_of_month
        dow_ok = (moment.isoweekday() % 7) in self.days_of_week
        if self.dom_restricted and self.dow_restricted:
            return dom_ok or dow_ok
        return dom_ok and dow_ok


# -- loading a rendered manifest stream --

def _group(api_version: str | None) -> str:
    return (api_version or "").split("/", 1)[0] if "/" in (api_version or "") else ""


def _is(doc: Mapping, group: str, kind: str) -> bool:
    return doc.get("kind") == kind and _group(doc.get("apiVersion")) == group


@dataclass(frozen=True)
class RoutingTable:
    """The Brokers, Triggers and PingSources of one rendered manifest stream."""

    brokers: Mapping[str, BrokerInfo]
    routes: tuple[TriggerRoute, ...]
    pings: tuple[PingSchedule, ...]
    config: Mapping[str, str] = field(default_factory=dict)  # data of the `dropgate-config` ConfigMap, if any

    @classmethod
    def from_manifests(cls, documents: Iterable[Mapping | None], *,
                       config_map: str = "dropgate-config") -> RoutingTable:
        brokers: dict[str, BrokerInfo] = {}
        triggers: list[Mapping] = []
        pings: list[PingSchedule] = []
        config: dict[str, str] = {}
        for doc in documents:
            if not doc:
                continue
            meta = doc.get("metadata") or {}
            if _is(doc, BROKER_API_GROUP, "Broker"):
                annotations = meta.get("annotations") or {}
                brokers[meta["name"]] = BrokerInfo(
                    name=meta["name"], namespace=meta.get("namespace"),
                    broker_class=annotations.get("eventing.knative.dev/broker.class"),
                    delivery=DeliverySpec.from_spec((doc.get("spec") or {}).get("delivery"), f"Broker {meta['name']}"))
            elif _is(doc, BROKER_API_GROUP, "Trigger"):
                triggers.append(doc)
            elif _is(doc, SOURCES_API_GROUP, "PingSource"):
                pings.append(_ping_from_manifest(doc))
            elif doc.get("kind") == "ConfigMap" and doc.get("apiVersion") == "v1" and meta.get("name") == config_map:
                config = {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
        routes = tuple(_route_from_manifest(doc, brokers) for doc in triggers)
        return cls(brokers=MappingProxyType(brokers), routes=routes, pings=tuple(pings),
                   config=MappingProxyType(config))

    def matching_routes(self, event_attributes: Mapping[str, str], broker: str | None = None) -> list[TriggerRoute]:
        """The Triggers (of `broker`, or of any Broker) whose filter the event passes, in manifest order."""
        return [route for route in self.routes
                if (broker is None or route.broker == broker) and route.matches(event_attributes)]

    def ping(self, name: str) -> PingSchedule | None:
        return next((p for p in self.pings if p.name == name), None)

    def with_bucket_names(self, renames: Mapping[str, str]) -> RoutingTable:
        """A copy whose `bucket` filters use other bucket names (e.g. a test's buckets instead of the ConfigMap's)."""
        renames = {old: new for old, new in renames.items() if old and new and old != new}
        if not renames:
            return self
        routes = tuple(
            TriggerRoute(r.name, r.namespace, r.broker, MappingProxyType({
                k: (renames.get(v, v) if k == "bucket" else v) for k, v in r.filter_attributes.items()}),
                r.subscriber, r.delivery)
            for r in self.routes)
        return RoutingTable(self.brokers, routes, self.pings, self.config)


def _route_from_manifest(doc: Mapping, brokers: Mapping[str, BrokerInfo]) -> TriggerRoute:
    meta = doc.get("metadata") or {}
    name = meta.get("name") or "?"
    where = f"Trigger {name}"
    spec = doc.get("spec") or {}
    broker = spec.get("broker") or (spec.get("brokerRef") or {}).get("name")
    if not broker:
        raise RoutingError(f"{where}: spec.broker is required")
    if spec.get("filters"):
        # The SubscriptionsAPI `filters` field overrides `filter` in Knative; dropgate does not use it.
        raise RoutingError(f"{where}: spec.filters (SubscriptionsAPI) is not supported; use filter.attributes")
    attributes = (spec.get("filter") or {}).get("attributes") or {}
    if not all(isinstance(v, str) for v in attributes.values()):
        raise RoutingError(f"{where}: filter.attributes values must be strings")
    subscriber = Destination.from_spec(spec.get("subscriber"), f"{where} subscriber")
    if subscriber is None:
        raise RoutingError(f"{where}: spec.subscriber is required")
    delivery = DeliverySpec.from_spec(spec.get("delivery"), where)
    broker_info = brokers.get(broker)
    if broker_info is not None and broker_info.delivery is not None:
        # A Trigger without delivery uses its Broker's; one without a dead-letter sink falls back to the Broker's.
        if delivery is None:
            delivery = broker_info.delivery
        elif delivery.dead_letter is None and broker_info.delivery.dead_letter is not None:
            delivery = DeliverySpec(delivery.retry, delivery.backoff_policy, delivery.backoff_delay,
                                    broker_info.delivery.dead_letter, delivery.timeout, delivery.format)
    return TriggerRoute(name=name, namespace=meta.get("namespace"), broker=broker,
                        filter_attributes=MappingProxyType(dict(attributes)), subscriber=subscriber, delivery=delivery)


def _ping_from_manifest(doc: Mapping) -> PingSchedule:
    meta = doc.get("metadata") or {}
    name = meta.get("name") or "?"
    spec = doc.get("spec") or {}
    where = f"PingSource {name}"
    if spec.get("data") is not None and spec.get("dataBase64") is not None:
        raise RoutingError(f"{where}: data and dataBase64 are mutually exclusive")
    try:
        schedule = CronSchedule.parse(spec.get("schedule") or "", spec.get("timezone"))
    except ValueError as exc:
        raise RoutingError(f"{where}: {exc}") from None
    sink = Destination.from_spec(spec.get("sink"), f"{where} sink")
    if sink is None:
        raise RoutingError(f"{where}: spec.sink is required")
    extensions = ((spec.get("ceOverrides") or {}).get("extensions") or {})
    return PingSchedule(name=name, namespace=meta.get("namespace"), schedule=schedule, sink=sink,
                        content_type=spec.get("contentType"), data=spec.get("data"),
                        data_base64=spec.get("dataBase64"),
                        extensions=MappingProxyType({str(k): str(v) for k, v in extensions.items()}))
