"""Moved: the consents and their gate live in ``core.privacy.consent``; this
name stays so existing imports (plugins, scripts) keep working."""

from core.privacy.consent import *  # noqa: F403
from core.privacy.consent import (  # noqa: F401
    EMAIL,
    EMAIL_MARKETING,
    NO_CONSENT,
    PURPOSES,
    TRACKING,
    UNSUBSCRIBE_EVENT,
    UNSUBSCRIBED,
    WITHDRAWN,
    email_refusals,
    granted,
    set_consent,
    set_consents,
)
