"""The GPT interpretability workbench. `import workbench as wb` for notebooks and scripts (workbench/api.py):

    m = wb.load("circuits")
    wb.patch(m, clean, corrupted, answer=" cloud", wrong=" lemon").figure()

The facade's names load on first use, so `import workbench` stays cheap (no torch) and
`import workbench.model` etc. work as before. Four views share their name with their analysis
module (`workbench.attention`, `.lens`, `.graph`, `.features`): that module is the view, made
callable, so `wb.lens(m, prompt)` runs the facade's lens and `wb.lens.lens_points` is still the
module's function.
"""

from __future__ import annotations

import importlib
import sys
import types

# facade names (workbench/api.py) and the views whose name is also their analysis module's
FACADE = ("load", "run", "edits", "head_types", "patch", "attribute", "intervene", "from_json", "Result", "InputError")
VIEW_MODULES = ("attention", "lens", "graph", "features")
__all__ = [*FACADE, *VIEW_MODULES]


class _View(types.ModuleType):
    """An analysis module that is also its view's facade function: calling it calls workbench.api's function of that name."""

    def __call__(self, *args, **kwargs):
        api = importlib.import_module("workbench.api")
        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # the import system sets each submodule on its package once loaded: the four views' modules become callable there
        if name in VIEW_MODULES and isinstance(value, types.ModuleType) and type(value) is types.ModuleType:
            value.__class__ = _View
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in VIEW_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in FACADE:
        return getattr(importlib.import_module(f"{__name__}.api"), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
