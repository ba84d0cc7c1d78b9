"""One registry type: collisions are errors, unknown names list the known ones, plug-ins are found
without an import list, and every registry of the package is one."""

import sys

import pytest

from unlearn_audit.errors import UserError
from unlearn_audit.utils.registry import Registry


def test_a_name_registered_twice_by_two_definitions_is_an_error():
    reg = Registry("widget")

    @reg.register("a")
    def first():
        pass

    def second():
        pass

    with pytest.raises(ValueError, match="two widgets are registered as 'a'"):
        reg.add("a", second)
    reg.add("a", first)  # the same definition again (a module imported twice) is not a collision
    assert reg.get("a") is first


def test_unknown_names_are_user_errors_listing_the_known_ones_in_order():
    reg = Registry("widget")
    for name in ("zeta", "alpha", "mid"):
        reg.add(name, object())
    assert reg.names() == ["alpha", "mid", "zeta"] and list(reg) == reg.names() and len(reg) == 3
    with pytest.raises(UserError, match="unknown widget 'nope'; choose one of alpha, mid, zeta"):
        reg.get("nope")
    assert "mid" in reg and "nope" not in reg


def test_plugins_are_found_by_their_registration_without_an_import_list(tmp_path, monkeypatch):
    pkg = tmp_path / "plugs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("from unlearn_audit.utils.registry import Registry\n"
                                 "REG = Registry('plug', 'plugs', '@REG.register')\n")
    (pkg / "one.py").write_text("from .base import REG\n\n@REG.register('one')\ndef one():\n    return 1\n")
    (pkg / "two.py").write_text("from .base import REG\n\n@REG.register('two')\ndef two():\n    return 2\n")
    (pkg / "broken.py").write_text("raise RuntimeError('not a plug-in: never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        from plugs.base import REG

        assert REG.names() == ["one", "two"] and REG.get("two")() == 2
    finally:
        for name in [m for m in sys.modules if m == "plugs" or m.startswith("plugs.")]:
            del sys.modules[name]


def test_every_plugin_kind_uses_the_one_registry_type():
    from unlearn_audit.attacks.registry import FAMILIES
    from unlearn_audit.evaluate.benchmark import BENCHMARKS
    from unlearn_audit.quantize.backends import BACKENDS
    from unlearn_audit.quantize.schemes import SCHEME_FAMILIES
    from unlearn_audit.unlearn.methods import FORGET_LOSSES, REGULARIZERS

    for reg in (FAMILIES, BENCHMARKS, BACKENDS, SCHEME_FAMILIES, FORGET_LOSSES, REGULARIZERS):
        assert isinstance(reg, Registry) and len(reg) > 0
    assert FORGET_LOSSES.names() == ["ga", "npo", "rmu", "simnpo"] and REGULARIZERS.names() == ["gdr", "klr"]
    assert BENCHMARKS.names() == ["muse", "tofu", "wmdp"]
    assert SCHEME_FAMILIES.names() == BACKENDS.names()  # every scheme family can be run
