"""The import-linter contract type behind "plugins import only the public API".

import-linter's built-in types forbid or protect listed modules; this one
allows a list, so a module added to core later is private until it is
exported on purpose. Configured in pyproject.toml, run by tests/test_architecture.py.
"""

from __future__ import annotations

import grimp
from importlinter import Contract, ContractCheck, fields, output


class PublicApiContract(Contract):
    """Modules under ``source_modules`` may import from ``internal_package`` only
    the modules named in ``public_modules`` (each itself, not its descendants)."""

    type_name = "public_api"

    source_modules = fields.ListField(subfield=fields.ModuleField())
    internal_package = fields.ModuleField()
    public_modules = fields.ListField(subfield=fields.ModuleField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        internal = self.internal_package.name  # type: ignore[attr-defined]
        public = {m.name for m in self.public_modules}  # type: ignore[attr-defined]
        illegal: list[dict[str, object]] = []
        for source in self.source_modules:  # type: ignore[attr-defined]
            importers = {source.name} | graph.find_descendants(source.name)
            for importer in sorted(importers):
                for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                    inside = imported == internal or imported.startswith(internal + ".")
                    if not inside or imported in public:
                        continue
                    lines = graph.get_import_details(importer=importer, imported=imported)
                    illegal.append(
                        {
                            "importer": importer,
                            "imported": imported,
                            "lines": [d["line_number"] for d in lines],
                        }
                    )
        return ContractCheck(kept=not illegal, metadata={"illegal": illegal})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for item in check.metadata["illegal"]:
            lines = ", ".join(f"l.{n}" for n in item["lines"])
            output.print_error(
                f"{item['importer']} imports {item['imported']} ({lines}), "
                "which is not part of the public API",
                bold=False,
            )
            output.new_line()
