"""What a remote caller may reach: ``@expose``, ``@oneway``, private names and
the metadata sent to proxies (protocol notes 8)."""

import pytest

from pyro_loops import behavior, config, expose, oneway
from pyro_loops._expose import (find_property, get_attribute, get_exposed_members, is_private_attribute,
                                reset_metadata_cache)


@pytest.fixture(autouse=True)
def _fresh_metadata_cache():
    reset_metadata_cache()
    yield
    reset_metadata_cache()


@pytest.mark.parametrize("name", ["_x", "__x", "____", "_", "__", "___", "__init__", "__call__", "__getattr__",
                                  "__class__", "__reduce_ex__", "__setstate__", "_pyroId"])
def test_private_names(name):
    assert is_private_attribute(name)


@pytest.mark.parametrize("name", ["x", "method", "__len__", "__dunder__", "__getitem__", "x_"])
def test_public_names(name):
    assert not is_private_attribute(name)


class Plain:
    def method(self):
        return "m"

    @property
    def prop(self):
        return "p"


@expose
class Exposed(Plain):
    def own(self):
        return "own"

    @oneway
    def fire(self):
        pass

    @property
    def value(self):
        return 1

    @value.setter
    def value(self, v):
        pass

    def __len__(self):
        return 3

    def _private(self):
        pass

    @staticmethod
    def static():
        return "s"

    @classmethod
    def klass(cls):
        return "c"


class Partial:
    @expose
    def visible(self):
        return "v"

    def hidden(self):
        return "h"

    @oneway
    def oneway_but_hidden(self):
        pass

    @expose
    @oneway
    def oneway_visible(self):
        pass

    @expose
    @property
    def exposed_prop(self):
        return 1

    @property
    def hidden_prop(self):
        return 2

    @staticmethod
    @expose
    def exposed_static():
        return "s"

    @classmethod
    @expose
    def exposed_class(cls):
        return "c"

    attribute = 42


def test_exposing_a_class_marks_its_own_members_but_not_inherited_ones():
    meta = get_exposed_members(Exposed)
    assert meta["methods"] == {"own", "fire", "__len__", "static", "klass"}
    assert meta["oneway"] == {"fire"}
    assert meta["attrs"] == {"value"}


def test_method_level_expose_lists_only_marked_members():
    meta = get_exposed_members(Partial())
    assert meta["methods"] == {"visible", "oneway_visible", "exposed_static", "exposed_class"}
    assert meta["oneway"] == {"oneway_visible"}  # @oneway alone does not expose
    assert meta["attrs"] == {"exposed_prop"}


def test_metadata_as_lists_for_the_connect_reply():
    meta = get_exposed_members(Partial(), as_lists=True)
    assert all(isinstance(value, list) for value in meta.values())
    assert sorted(meta["methods"]) == ["exposed_class", "exposed_static", "oneway_visible", "visible"]


def test_without_require_expose_every_public_method_and_property_counts():
    config.REQUIRE_EXPOSE = False
    meta = get_exposed_members(Plain)
    assert meta == {"methods": {"method"}, "oneway": set(), "attrs": {"prop"}}


def test_plain_class_exposes_nothing_by_default():
    assert get_exposed_members(Plain) == {"methods": set(), "oneway": set(), "attrs": set()}


def test_exposing_a_private_name_is_refused():
    def _secret():
        pass

    with pytest.raises(AttributeError, match="private"):
        expose(_secret)


def test_expose_written_above_classmethod_exposes_it_too():
    # Pyro4 raises AttributeError for this order (protocol notes 8.2); marking the
    # wrapped function instead is a harmless leniency
    class Either:
        @expose
        @classmethod
        def cm(cls):
            return "cm"

    assert "cm" in get_exposed_members(Either)["methods"]


def test_get_attribute_returns_exposed_methods():
    obj = Partial()
    assert get_attribute(obj, "visible")() == "v"
    assert get_attribute(obj, "exposed_static")() == "s"
    assert get_attribute(obj, "exposed_class")() == "c"


@pytest.mark.parametrize("name, message", [
    ("hidden", "attempt to access unexposed attribute 'hidden'"),
    ("oneway_but_hidden", "unexposed"),
    ("_private", "attempt to access private attribute '_private'"),
    ("__init__", "private"),
    ("__class__", "private"),
    ("__dict__", "unexposed"),  # a long dunder is public by the rules, but not exposed
    ("missing", "has no attribute 'missing'"),
    ("other.visible", "has no attribute"),  # dotted names are not walked
])
def test_get_attribute_refuses_what_a_remote_caller_may_not_call(name, message):
    with pytest.raises(AttributeError, match=message):
        get_attribute(Partial(), name)


def test_get_attribute_allows_public_methods_without_require_expose():
    config.REQUIRE_EXPOSE = False
    assert get_attribute(Plain(), "method")() == "m"
    with pytest.raises(AttributeError, match="private"):
        get_attribute(Plain(), "_x")


def test_find_property_only_finds_exposed_properties():
    obj = Partial()
    assert find_property(obj, "exposed_prop") is Partial.__dict__["exposed_prop"]
    assert find_property(obj, "hidden_prop") is None
    assert find_property(obj, "attribute") is None   # plain attributes are never remoted
    assert find_property(obj, "visible") is None     # a method is not a property
    assert find_property(obj, "__class__") is None


def test_behavior_validates_its_arguments():
    with pytest.raises(ValueError, match="invalid instance mode"):
        behavior("sometimes")
    with pytest.raises(TypeError):
        behavior("single")(lambda: None)


def test_behavior_records_instance_mode_and_creator():
    def make(cls):
        return cls()

    @behavior("percall", instance_creator=make)
    class PerCall:
        pass

    assert PerCall._pyroInstancing == ("percall", make)
