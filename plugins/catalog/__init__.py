"""Built-in catalogue plugins: ``plugins.catalog.events`` keeps the products
table current from product events."""
