"""The package-level API stays callable once every submodule has been imported (a submodule named like a
package function would replace it on import)."""

import importlib
import pkgutil

import lagoon.automix as automix


def test_run_and_validate_stay_functions_after_all_submodules_load():
    for module in pkgutil.iter_modules(automix.__path__):
        importlib.import_module(f"lagoon.automix.{module.name}")
    assert callable(automix.run) and callable(automix.validate)
    assert automix.validate.__module__ == "lagoon.automix"
