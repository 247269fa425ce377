"""Personalised email: rendering, MIME, the messages outbox and delivery."""
