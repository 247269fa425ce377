"""Email service connectors (``register_esp_connectors``): smtp and outbox."""
