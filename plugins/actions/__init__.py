"""Built-in plugin: the workflow actions ``send``, ``update_profile``, ``tag`` and
``webhook`` (one module each), registered like any plugin's."""

from __future__ import annotations

from core import hookimpl


@hookimpl
def register_actions(register) -> None:
    from plugins.actions.profile import TAG, UPDATE_PROFILE
    from plugins.actions.send import SEND
    from plugins.actions.webhook import WEBHOOK

    for action in (SEND, UPDATE_PROFILE, TAG, WEBHOOK):
        register(action)
