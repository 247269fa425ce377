"""The workflow language: what starts a run, who may enter, and the steps.

A workflow is data, like a segment (YAML in git, dicts, rows of the workflows
table)::

    name: cart_recovery
    trigger: {event: add_to_cart, key: properties.cart_id}
    entry: {consent: email}               # any rule, checked when someone enters
    filter: {not: {event: purchase, within: 2h}}   # re-checked before every action
    reentry: always                       # once (default) | always | {every: 30d}
    exit_when: {event: purchase, within: 1h}       # a rule, or left_segment
    frequency_cap: {max: 2, per: 24h, then: defer}
    quiet_hours: {start: "21:00", end: "08:00", then: defer}
    steps:
      - wait: 1h                          # or {until_local: "09:00"}
      - wait: {until: RULE, timeout: 2d, then: [...], on_timeout: [...]}
      - if: RULE
        then: [...]
        else: [...]
      - split:
          arms: [{name: a, percent: 45, steps: [...]}, {name: b, percent: 45, steps: [...]}]
          holdout: {name: control, percent: 10}
      - send: {template: cart_abandonment}    # an action (a plugin: register_actions)
      - exit: converted

Steps are compiled to nodes addressed by their path in the definition
(``steps[2].then[0]``); a run stores the path of the step it is at, so a
definition reads like what the engine does. Errors name the file, the line,
the workflow and the path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml

from core.errors import not_utf8
from core.segments.kinds import ConditionKinds
from core.segments.language import Rule, SegmentError, parse_duration, parse_rule
from core.types import Action, Trigger, is_snake_name

WORKFLOW_NAME_MAX_LENGTH = 64
STEP_KEYWORDS = ("wait", "if", "split", "exit")
TOP_KEYS = {
    "name",
    "description",
    "trigger",
    "entry",
    "filter",
    "reentry",
    "exit_when",
    "frequency_cap",
    "quiet_hours",
    "migrate",
    "steps",
}
LOCAL_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


class WorkflowError(ValueError):
    """A workflow definition is wrong: the message names file, line, workflow and path."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        workflow: str | None = None,
        path: str | None = None,
    ) -> None:
        self.file, self.line, self.workflow, self.path = file, line, workflow, path
        self.reason = message
        where = f"{file}:{line}" if file and line else file
        parts = [p for p in (where, f"workflow '{workflow}'" if workflow else None, path) if p]
        super().__init__(": ".join([*parts, message]))


class _Bad(Exception):
    """Raised inside parsing with the path; turned into a WorkflowError at the top."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path, self.message = path, message


# -- parsed form ---------------------------------------------------------------------


@dataclass(frozen=True)
class Cap:
    """At most ``max`` marketing messages per person in any ``per`` window, across
    workflows and segment sends; a send over it is deferred or skipped."""

    max: int
    per: timedelta
    then: Literal["defer", "skip"] = "defer"


@dataclass(frozen=True)
class QuietHours:
    """No marketing message between ``start`` and ``end`` in the person's timezone."""

    start: time
    end: time
    then: Literal["defer", "skip"] = "defer"

    def contains(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


@dataclass(frozen=True)
class Arm:
    name: str
    percent: float
    first: str | None  # the arm's first step; None: straight on after the split


@dataclass(frozen=True)
class Node:
    """One compiled step. ``next`` is the step after it (None: the run completes)."""

    path: str
    kind: str  # wait | wait_local | wait_until | if | split | action | exit
    next: str | None
    duration: timedelta | None = None
    local_time: time | None = None
    rule: Rule | None = None
    timeout: timedelta | None = None
    then: str | None = None
    otherwise: str | None = None
    arms: tuple[Arm, ...] = ()
    holdout: Arm | None = None
    action: Action | None = None
    params: Any = None
    reason: str = ""

    @property
    def marketing(self) -> bool:
        return self.action is not None and bool(self.action.marketing(self.params))


@dataclass(frozen=True)
class Workflow:
    name: str
    description: str
    trigger: Trigger
    trigger_params: Any
    entry: Rule | None
    filter: Rule | None
    exit_rule: Rule | None
    exit_on_leave: bool
    reentry: str  # once | always | every
    reentry_every: timedelta | None
    cap: Cap | None
    quiet_hours: QuietHours | None
    migrate: bool
    nodes: dict[str, Node]
    first: str | None
    definition: dict[str, Any] = field(repr=False)

    @property
    def digest(self) -> str:
        return definition_digest(self.definition)

    @property
    def segment(self) -> str | None:
        """The segment the workflow is about (its trigger's), if any."""
        return self.trigger.segment(self.trigger_params)

    @property
    def marketing(self) -> bool:
        """Whether some step sends marketing: a withdrawn consent ends its runs."""
        return any(n.marketing for n in self.nodes.values())

    def node(self, path: str | None) -> Node | None:
        return None if path is None else self.nodes.get(path)


def definition_digest(definition: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


# -- parsing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """What a workflow may use: condition kinds, triggers and actions by name."""

    kinds: ConditionKinds
    triggers: dict[str, Trigger]
    actions: dict[str, Action]


def _rule(data: Any, reg: Registry, path: str) -> Rule:
    try:
        return parse_rule(data, reg.kinds, path)
    except SegmentError as exc:
        raise _Bad(exc.path or path, exc.reason) from None


def _duration(value: Any, path: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _Bad(path, str(exc)) from None


def _local_time(value: Any, path: str) -> time:
    if not isinstance(value, str) or not (m := LOCAL_TIME.match(value)):
        raise _Bad(path, f"{value!r} is not a time of day (HH:MM, 24-hour, like 09:00)")
    return time(int(m.group(1)), int(m.group(2)))


def _mapping(value: Any, path: str, what: str, allowed: set[str], required=()) -> dict:
    if not isinstance(value, dict):
        raise _Bad(path, f"{what} is a mapping")
    unknown = set(value) - allowed
    if unknown:
        raise _Bad(
            path,
            f"unknown key(s) {', '.join(sorted(map(str, unknown)))} ({what}: "
            f"{', '.join(sorted(allowed))})",
        )
    for key in required:
        if key not in value:
            raise _Bad(path, f"{what} needs '{key}'")
    return value


def _policy(value: Any, path: str) -> Literal["defer", "skip"]:
    if value not in ("defer", "skip"):
        raise _Bad(path, f"then: {value!r} must be defer or skip")
    return value


def parse_cap(value: Any, path: str = "frequency_cap") -> Cap:
    data = _mapping(value, path, "frequency_cap", {"max", "per", "then"}, ("max", "per"))
    n = data["max"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise _Bad(f"{path}.max", f"{n!r} must be a whole number of messages, at least 1")
    return Cap(n, _duration(data["per"], f"{path}.per"), _policy(data.get("then", "defer"), path))


def parse_quiet_hours(value: Any, path: str = "quiet_hours") -> QuietHours:
    data = _mapping(value, path, "quiet_hours", {"start", "end", "then"}, ("start", "end"))
    start = _local_time(data["start"], f"{path}.start")
    end = _local_time(data["end"], f"{path}.end")
    if start == end:
        raise _Bad(path, "start and end are the same time")
    return QuietHours(start, end, _policy(data.get("then", "defer"), f"{path}.then"))


class _Compiler:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.nodes: dict[str, Node] = {}

    def steps(self, items: Any, path: str, after: str | None) -> str | None:
        """Compile a list of steps; the path of its first (``after`` when empty)."""
        if items is None:
            return after
        if not isinstance(items, list):
            raise _Bad(path, "steps are a list")
        paths = [f"{path}[{i}]" for i in range(len(items))]
        for i, item in enumerate(items):
            following = paths[i + 1] if i + 1 < len(items) else after
            self.step(item, paths[i], following)
        return paths[0] if paths else after

    def step(self, item: Any, path: str, after: str | None) -> None:
        if item == "exit":
            item = {"exit": "exit step"}
        if not isinstance(item, dict) or not item:
            raise _Bad(path, "a step is a mapping like {wait: 1h} or {send: {...}}")
        if "if" in item:
            data = _mapping(item, path, "if", {"if", "then", "else"})
            rule = _rule(data["if"], self.reg, f"{path}.if")
            then = self.steps(data.get("then"), f"{path}.then", after)
            otherwise = self.steps(data.get("else"), f"{path}.else", after)
            self.add(Node(path, "if", after, rule=rule, then=then, otherwise=otherwise))
            return
        if len(item) != 1:
            keys = ", ".join(map(str, item))
            raise _Bad(path, f"one step per list item (found {keys})")
        ((key, value),) = item.items()
        if key == "wait":
            self.wait(value, f"{path}.wait", path, after)
        elif key == "split":
            self.split(value, f"{path}.split", path, after)
        elif key == "exit":
            self.add(Node(path, "exit", None, reason=str(value or "exit step")))
        elif key in self.reg.actions:
            action = self.reg.actions[key]
            try:
                params = action.validate(value if value is not None else {})
            except Exception as exc:  # noqa: BLE001 - the plugin's own wording
                raise _Bad(f"{path}.{key}", _reason(exc)) from None
            self.add(Node(path, "action", after, action=action, params=params))
        else:
            known = ", ".join(sorted(self.reg.actions)) or "none"
            raise _Bad(
                path,
                f"unknown step '{key}': not a step keyword ({', '.join(STEP_KEYWORDS)}) and no "
                f"loaded plugin registers an action named '{key}' (actions: {known})",
            )

    def wait(self, value: Any, path: str, node_path: str, after: str | None) -> None:
        if not isinstance(value, dict):
            duration = _duration(value, path)
            self.add(Node(node_path, "wait", after, duration=duration))
            return
        if "until_local" in value:
            data = _mapping(value, path, "wait", {"until_local"})
            local = _local_time(data["until_local"], f"{path}.until_local")
            self.add(Node(node_path, "wait_local", after, local_time=local))
            return
        data = _mapping(
            value, path, "wait", {"until", "timeout", "then", "on_timeout"}, ("until", "timeout")
        )
        rule = _rule(data["until"], self.reg, f"{path}.until")
        timeout = _duration(data["timeout"], f"{path}.timeout")
        then = self.steps(data.get("then"), f"{path}.then", after)
        on_timeout = self.steps(data.get("on_timeout"), f"{path}.on_timeout", after)
        self.add(
            Node(
                node_path,
                "wait_until",
                after,
                rule=rule,
                timeout=timeout,
                then=then,
                otherwise=on_timeout,
            )
        )

    def split(self, value: Any, path: str, node_path: str, after: str | None) -> None:
        data = _mapping(value, path, "split", {"arms", "holdout"}, ("arms",))
        arms_data = data["arms"]
        if not isinstance(arms_data, list) or not arms_data:
            raise _Bad(f"{path}.arms", "a non-empty list of {name, percent, steps}")
        arms, names = [], set()
        for i, arm in enumerate(arms_data):
            apath = f"{path}.arms[{i}]"
            a = _mapping(arm, apath, "arm", {"name", "percent", "steps"}, ("name", "percent"))
            name = self.arm_name(a["name"], f"{apath}.name", names)
            first = self.steps(a.get("steps"), f"{apath}.steps", after)
            arms.append(Arm(name, self.percent(a["percent"], f"{apath}.percent"), first))
        holdout = None
        if data.get("holdout") is not None:
            hpath = f"{path}.holdout"
            h = _mapping(
                data["holdout"], hpath, "holdout", {"name", "percent"}, ("name", "percent")
            )
            name = self.arm_name(h["name"], f"{hpath}.name", names)
            holdout = Arm(name, self.percent(h["percent"], f"{hpath}.percent"), None)
        total = sum(a.percent for a in arms) + (holdout.percent if holdout else 0)
        if abs(total - 100) > 1e-9:
            raise _Bad(path, f"the percentages add up to {total:g}, not 100")
        self.add(Node(node_path, "split", after, arms=tuple(arms), holdout=holdout))

    @staticmethod
    def arm_name(value: Any, path: str, seen: set[str]) -> str:
        if not isinstance(value, str) or not ARM_NAME.match(value):
            raise _Bad(path, f"{value!r}: letters, digits, space, '.', '_', '-', at most 64")
        if value in seen:
            raise _Bad(path, f"two arms are named {value!r}")
        seen.add(value)
        return value

    @staticmethod
    def percent(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
            raise _Bad(path, f"{value!r} must be a percentage above 0 and at most 100")
        return float(value)

    def add(self, node: Node) -> None:
        self.nodes[node.path] = node


def _reason(exc: Exception) -> str:
    from pydantic import ValidationError

    from core.errors import validation_reason

    if isinstance(exc, ValidationError):
        loc, msg = validation_reason(exc)
        return f"{loc}: {msg}" if loc else msg
    return str(exc)


def _trigger(value: Any, reg: Registry) -> tuple[Trigger, Any]:
    if not isinstance(value, dict) or len(value) != 1:
        known = ", ".join(sorted(reg.triggers)) or "none"
        raise _Bad("trigger", f"one trigger, a mapping like {{segment_entered: NAME}} ({known})")
    ((name, params),) = value.items()
    if name not in reg.triggers:
        known = ", ".join(sorted(reg.triggers)) or "none"
        raise _Bad(
            "trigger",
            f"unknown trigger '{name}' (no loaded plugin registers it; triggers: {known})",
        )
    trigger = reg.triggers[name]
    try:
        return trigger, trigger.validate(params)
    except Exception as exc:  # noqa: BLE001 - the plugin's own wording
        raise _Bad(f"trigger.{name}", _reason(exc)) from None


def _reentry(value: Any) -> tuple[str, timedelta | None]:
    if value in ("once", "always"):
        return value, None
    if isinstance(value, dict) and set(value) == {"every"}:
        return "every", _duration(value["every"], "reentry.every")
    raise _Bad("reentry", f"{value!r}: once, always or {{every: 30d}}")


def parse_workflow(
    data: Any, reg: Registry, *, file: str | None = None, lines: Any = None
) -> Workflow:
    """Validate one workflow definition against the registry; WorkflowError names
    where (``lines``: the YAML node it came from, for line numbers)."""
    name = data.get("name") if isinstance(data, dict) else None
    try:
        if not isinstance(data, dict):
            raise _Bad("", "a workflow is a mapping with name, trigger and steps")
        if not is_snake_name(name, WORKFLOW_NAME_MAX_LENGTH):
            raise _Bad(
                "name",
                f"{name!r} must be snake_case (a-z, 0-9, _), at most "
                f"{WORKFLOW_NAME_MAX_LENGTH} characters",
            )
        unknown = set(data) - TOP_KEYS
        if unknown:
            raise _Bad(
                "",
                f"unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                f"(keys: {', '.join(sorted(TOP_KEYS))})",
            )
        for key in ("trigger", "steps"):
            if key not in data:
                raise _Bad("", f"{key} is required")
        trigger, params = _trigger(data["trigger"], reg)
        entry = _rule(data["entry"], reg, "entry") if data.get("entry") is not None else None
        filt = _rule(data["filter"], reg, "filter") if data.get("filter") is not None else None
        exit_value = data.get("exit_when")
        exit_rule, on_leave = None, False
        if exit_value == "left_segment":
            if trigger.segment(params) is None:
                raise _Bad("exit_when", "left_segment needs a trigger about a segment")
            on_leave = True
        elif exit_value is not None:
            exit_rule = _rule(exit_value, reg, "exit_when")
        reentry, every = _reentry(data.get("reentry", "once"))
        cap = parse_cap(data["frequency_cap"]) if data.get("frequency_cap") else None
        quiet = parse_quiet_hours(data["quiet_hours"]) if data.get("quiet_hours") else None
        migrate = data.get("migrate", False)
        if not isinstance(migrate, bool):
            raise _Bad("migrate", f"{migrate!r} must be true or false")
        compiler = _Compiler(reg)
        first = compiler.steps(data["steps"], "steps", None)
        if not isinstance(data["steps"], list) or not data["steps"]:
            raise _Bad("steps", "a non-empty list of steps")
    except _Bad as bad:
        raise WorkflowError(
            bad.message,
            file=file,
            line=line_of(lines, bad.path),
            workflow=name,
            path=bad.path or None,
        ) from None
    return Workflow(
        name=name,
        description=str(data.get("description") or ""),
        trigger=trigger,
        trigger_params=params,
        entry=entry,
        filter=filt,
        exit_rule=exit_rule,
        exit_on_leave=on_leave,
        reentry=reentry,
        reentry_every=every,
        cap=cap,
        quiet_hours=quiet,
        migrate=migrate,
        nodes=compiler.nodes,
        first=first,
        definition=data,
    )


# -- files and line numbers ------------------------------------------------------------

_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def line_of(node: Any, path: str | None) -> int | None:
    """The line (1-based) of ``path`` (``steps[1].wait.until``) in a composed YAML
    node: the deepest part of the path that exists there."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key, index in _PATH_PART.findall(path or ""):
        child = None
        if index and isinstance(node, yaml.SequenceNode):
            i = int(index)
            child = node.value[i] if i < len(node.value) else None
        elif key and isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line


@dataclass(frozen=True)
class WorkflowFile:
    workflow: Workflow
    file: str


def load_workflow_file(path: Path, reg: Registry) -> list[WorkflowFile]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise WorkflowError(not_utf8(exc), file=str(path)) from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise WorkflowError(
            f"not valid YAML: {getattr(exc, 'problem', exc)}", file=str(path), line=line
        ) from None
    if isinstance(data, list):
        nodes = root.value if isinstance(root, yaml.SequenceNode) else [None] * len(data)
        pairs = list(zip(data, nodes, strict=True))
    else:
        pairs = [(data, root)]
    return [
        WorkflowFile(parse_workflow(d, reg, file=str(path), lines=n), str(path)) for d, n in pairs
    ]


def default_registry() -> Registry:
    """The loaded plugins' condition kinds, triggers and actions."""
    from core.plugins import actions, condition_kinds, triggers

    return Registry(condition_kinds(), triggers(), actions())


def load_workflow_files(directory: Path, reg: Registry | None = None) -> dict[str, Workflow]:
    """Every workflow in the YAML files of ``directory``, by name."""
    reg = reg or default_registry()
    if not directory.is_dir():
        raise WorkflowError(f"{directory}: no such directory")
    found: dict[str, WorkflowFile] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        for item in load_workflow_file(path, reg):
            name = item.workflow.name
            if name in found:
                raise WorkflowError(
                    f"defined twice (also in {found[name].file})", file=str(path), workflow=name
                )
            found[name] = item
    return {name: item.workflow for name, item in found.items()}
