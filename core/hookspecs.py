"""Plugin hook specifications.

Every hook has a docstring here and a page in docs/hooks/; a test fails when a
hook lacks either. Hooks that contribute named things take a ``register``
callback, so one plugin can contribute several.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from typing import TYPE_CHECKING, Any

import pluggy

from core.types import (
    Action,
    Change,
    ConditionKind,
    EspConnector,
    EventSource,
    MonitorCheck,
    Recommender,
    ScoringModel,
    StoredEvent,
    Trigger,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from typer.core import TyperGroup

    from core.types import TemplateMessage

hookspec = pluggy.HookspecMarker("segflow")
hookimpl = pluggy.HookimplMarker("segflow")


@hookspec
def register_event_sources(register: Callable[[EventSource], None]) -> None:
    """Contribute event sources.

    Call ``register(EventSource(...))`` once per source. A source that reads
    files names the suffixes it understands and supplies ``read``; one that
    receives events over HTTP supplies ``mount(router, api)`` to add its routes
    (helpers in ``core.http``); one that polls or consumes another system adds
    its command with ``register_commands`` and its settings with
    ``register_settings``. Source names must be unique across plugins.
    """


@hookspec
def on_events_ingested(events: Sequence[StoredEvent], engine: Engine) -> None:
    """Called after a batch of new events has been committed.

    ``events`` holds only events that were stored (duplicates are left out),
    each with the ``profile_id`` it was attributed to after identity
    resolution; ``engine`` is the database they were stored in. Runs in the
    ingesting process, after the commit, so an error here never loses events:
    inline for imports, on a hook thread after the answer for the HTTP API
    (one call may then hold many requests' events). Keep it quick or hand work
    to a queue. The built-in real-time segment evaluation is an implementation
    of this hook. Ingestion calls it when its caller passes
    ``on_stored=core.events_ingested_hook(engine)`` (the import command, the
    API, the flow, polling and streams do).
    """


@hookspec
def on_profiles_loaded(profile_ids: Set[int], engine: Engine) -> None:
    """Called once at the end of a bulk load with every profile it stored events on.

    A plugin that implements it gets this one call for a bulk load instead of
    ``on_events_ingested`` per batch: re-evaluating per batch costs a big
    import more than storing it, and a profile whose events span many batches
    would be evaluated once per batch. ``profile_ids`` are the ids the load's
    events were attributed to (some may since have been merged into another
    profile of the set); ``engine`` is the database. It runs after the load's
    last transaction, so the events' indexes are rebuilt and merged profiles'
    events moved. Plugins that implement only ``on_events_ingested`` keep
    their calls per batch. Ingestion calls it when its caller passes
    ``on_loaded=core.profiles_loaded_hook(engine)`` and ``on_stored=
    core.events_ingested_hook(engine, bulk=True)`` (``segflow import`` does
    for the files it bulk-loads). Should the process die before the call, the
    profiles are not lost: the next incremental ``segflow segments run``
    evaluates every profile with events stored since the run before.
    """


@hookspec
def on_segment_change(changes: Sequence[Change], engine: Engine) -> None:
    """Called after a segment run committed membership changes.

    ``changes`` lists every entry and exit of the run: ``segment`` (name),
    ``profile_id``, ``change`` ("entered" or "exited"), ``at`` (the run's
    as_of) and ``version`` (of the segment's definition); ``engine`` is the
    database. Workflows start from here; like ``on_events_ingested`` it runs
    after the commit.
    """


@hookspec
def register_conditions(register: Callable[[ConditionKind], None]) -> None:
    """Contribute segment condition kinds.

    Call ``register(ConditionKind(name, description, python, sql, validate))``.
    The kind is used in segment rules as ``{name: params}``; ``validate``
    checks the params when definitions load, ``python`` answers for one
    profile in real time and ``sql`` gives the same answer as a boolean SQL
    expression for the batch evaluator. The built-in kinds register through
    the same call into the same registry, so a name they hold (or all / any /
    not) is refused; the optional ``features``, ``next_change_at`` and
    ``figures`` forms they use are open to plugins too.
    """


@hookspec
def register_scoring_models(register: Callable[[ScoringModel], None]) -> None:
    """Contribute scoring model kinds (points, rfm, bgnbd, ...).

    Call ``register(ScoringModel(kind, description, score_all, validate,
    score_one))``. Score definitions (YAML) name a kind and give its params;
    ``validate`` checks them, ``score_all(conn, params, as_of, name)`` scores
    every profile in batch and returns ``{score name: {profile_id:
    ScoreValue}}``, and the optional ``score_one(profile, params, as_of)``
    scores one profile in real time with the same result.
    """


@hookspec
def register_commands(cli: TyperGroup) -> None:
    """Add commands or command groups to the ``segflow`` command line.

    ``cli`` is the root command group, as in ``llm`` (a typer group: the
    click-like ``cli.commands`` mapping and ``cli.add_command``). Write the
    commands with typer and add them with ``cli.add_command(
    typer.main.get_command(app), "name")``; a typer app with one command
    becomes that command, one with several a sub-group. Extend a core group
    through ``cli.commands["scores"].add_command(...)``. Inside a command,
    ``ctx.obj`` holds the settings (``ctx.obj.settings``, with
    ``.plugin(section)``) and opens the database (``ctx.obj.engine()``).
    Raise ``core.UsageError`` (exit 2) or ``core.CommandError`` (exit 1) for a
    one-line error. A name the core or another plugin took is an error.
    """


@hookspec
def register_settings(register: Callable[[str, Any], None]) -> None:
    """Declare the plugin's own settings sections of segflow.toml.

    Call ``register(section, model)`` once per section: ``section`` is a
    dotted name (``"sources.poll"`` is the table ``[sources.poll]`` or array
    ``[[sources.poll]]``, under ``[segflow]`` too), ``model`` a pydantic model
    or any type pydantic validates (``list[PollConfig]`` for an array of
    tables). The section is validated when settings load; a bad value is an
    error naming the file, section and key. ``Settings.plugin(section)``
    returns the validated value (the model's defaults, or ``[]`` for a list,
    when the file has no such section). Sections nobody registered are an error.
    """


@hookspec
def register_esp_connectors(register: Callable[[EspConnector], None]) -> None:
    """Contribute email service connectors (``smtp``, ``outbox``, ESP APIs).

    Call ``register(EspConnector(name, description, send=..., sender=...))``
    once per connector; ``segflow send --via NAME`` and
    ``core.deliver(..., via=connector)`` use it. Core records every message in
    the ``messages`` table before and after ``send``, applies the consent gate
    and retries ``TemporaryFailure`` with backoff; the connector only hands one
    message to its service. Declare the connector's settings (host, folder,
    ``*_env`` names of secrets, never the secrets) with ``register_settings``.
    Connector names must be unique across plugins.
    """


@hookspec
def template_context(
    profile: Mapping[str, Any], message: TemplateMessage
) -> Mapping[str, Any] | None:
    """Add values to the context of every email template.

    Called once per rendered email, after the core's context is built:
    ``profile`` is the ``profile`` the template sees (id, user_id, email,
    first_name, last_name, attributes, consent, locale, timezone) and
    ``message`` the ``core.types.TemplateMessage`` being rendered (template,
    version, key, profile_id, preview, as_of). Return a mapping of names to
    add, or None. A name the core's context already has (``profile``,
    ``segments``, ``cart``, ...) or another plugin returned is an error
    naming it: plugins add, they never replace. Runs inside every render, so
    keep it quick; the values are shown through the template sandbox.
    """


@hookspec
def template_filters(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Contribute Jinja2 filters to email templates.

    Call ``register(name, function)`` once per filter; templates then use
    ``{{ value|name(args) }}``. Collected once per process, when templates are
    first compiled. A name Jinja2 or segflow already defines (``money``,
    ``date``, ``truncate``, ``upper``, ...) or another plugin registered is
    refused. A filter runs inside the sandbox's output, so return plain
    values (escaping is applied to them in HTML templates); decorate with
    ``jinja2.pass_context`` to read the context (``locale``, ``timezone``).
    """


@hookspec
def register_recommenders(register: Callable[[Recommender], None]) -> None:
    """Contribute product recommenders.

    Call ``register(Recommender(name, description, recommend, refresh))``.
    ``core.recommend(conn, profile_id, k=..., recommender=name)`` reads the
    person's product history (a ``ProductHistory``: their product events up
    to ``as_of``, newest first, and what they bought), calls
    ``recommend(conn, history, k, as_of)`` for ranked ``(product_id, score)``
    pairs, drops what the person bought, what is out of stock and what is not
    in the catalogue, and returns the first ``k`` with their product columns.
    ``refresh(conn, as_of)``, optional, precomputes for everyone and returns
    ``RecommenderTables`` (SELECTs or rows), which the core stores in
    ``product_related`` / ``product_popularity`` under the recommender's name
    (``core.refresh_recommendations``, ``segflow recommend refresh``); serving
    reads them back. The built-in ``related`` recommender is registered this
    way. Names must be unique across plugins.
    """


@hookspec
def register_triggers(register: Callable[[Trigger], None]) -> None:
    """Contribute workflow triggers: what starts a run (``trigger:`` in a workflow).

    Call ``register(Trigger(name, description, validate, on_changes=...,
    on_events=..., on_tick=...))`` once per trigger; a workflow's ``trigger:
    {NAME: value}`` is validated by ``validate(value)`` when it loads. The
    engine calls ``on_changes`` with every committed batch of segment changes,
    ``on_events`` with every committed batch of stored events, and ``on_tick``
    at every tick (schedules, dates), and starts a run for each ``Entry``
    returned that passes the workflow's entry rule and re-entry policy.
    Triggers only say who enters; they never write. The built-in
    ``segment_entered``, ``segment_exited``, ``event``, ``schedule`` and
    ``date_attribute`` are registered this way. Names must be unique.
    """


@hookspec
def register_actions(register: Callable[[Action], None]) -> None:
    """Contribute workflow actions: steps that do something (``- NAME: {...}``).

    Call ``register(Action(name, description, validate, perform, ...))`` once
    per action. A workflow naming an action no loaded plugin registers fails
    validation, naming it. When a run reaches the step the engine records the
    action with its idempotency key in the transaction that moves the run on,
    then calls ``perform(ActionCall)`` and records the ``ActionResult``;
    ``perform`` may be called again for a key after a crash, so it must be
    idempotent by ``call.key`` (``transactional`` actions get the transaction
    their result commits in, and so run exactly once). ``marketing(params)``
    true makes the action subject to frequency caps and quiet hours. The
    built-in ``send``, ``update_profile``, ``tag`` and ``webhook`` are
    registered this way. Names must be unique and not a step keyword
    (``wait``, ``if``, ``split``, ``exit``).
    """


@hookspec
def register_monitor_checks(register: Callable[[MonitorCheck], None]) -> None:
    """Contribute monitoring checks: what the monitor flow looks for every day.

    Call ``register(MonitorCheck(name, description, run))`` once per check.
    ``core.run_checks`` (the ``monitor`` flow, ``segflow monitor check``)
    calls ``run(engine, settings, day, now)`` for every check and stores what
    it returns, ``core.Alert`` s whose ``check`` is the check's name: a
    subject that fires for the first time opens an alert (and performs the
    ``[monitor] on_alert`` actions once), one still firing is updated, and an
    open alert the check no longer returns is resolved. A check that raises
    is reported and its open alerts are left as they were. The built-in
    ``segment_drift``, ``source_freshness`` and ``data_quality`` are
    registered this way. Names must be unique.
    """
