"""What a remote caller may reach: ``@expose``, ``@oneway``, private names,
and the metadata (methods, oneway, attrs) sent to proxies (protocol notes 8)."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

from .configuration import config

T = TypeVar("T")
_MISSING = object()

_PRIVATE_DUNDERS = frozenset("""
__init__ __init_subclass__ __class__ __module__ __weakref__ __call__ __new__ __del__ __repr__
__unicode__ __str__ __format__ __nonzero__ __bool__ __coerce__ __cmp__ __eq__ __ne__ __hash__ __ge__
__gt__ __le__ __lt__ __dir__ __enter__ __exit__ __copy__ __deepcopy__ __sizeof__ __getattr__
__setattr__ __hasattr__ __getattribute__ __delattr__ __instancecheck__ __subclasscheck__
__getinitargs__ __getnewargs__ __getstate__ __setstate__ __reduce__ __reduce_ex__
__getstate_for_dict__ __setstate_from_dict__ __subclasshook__""".split())


def class_name(obj_or_class: Any) -> str:
    """The dotted name of a class, or of an object's class, for messages about
    what was registered (a registered class must not show up as "type")."""
    cls = obj_or_class if inspect.isclass(obj_or_class) else type(obj_or_class)
    return f"{cls.__module__}.{cls.__qualname__}"


def is_private_attribute(name: str) -> bool:
    """True for names no remote caller may touch, exposed or not."""
    if name in _PRIVATE_DUNDERS:
        return True
    if not name.startswith("_"):
        return False
    return not (len(name) > 4 and name.startswith("__") and name.endswith("__"))


def _mark(target: Any, attr: str) -> None:
    if isinstance(target, property):
        for func in (target.fget, target.fset, target.fdel):
            if func is not None:
                setattr(func, attr, True)
    elif isinstance(target, (staticmethod, classmethod)):
        setattr(target.__func__, attr, True)
    else:
        setattr(target, attr, True)


def expose(target: T) -> T:
    """Make a method, property or whole class reachable by remote callers."""
    if inspect.isdatadescriptor(target) and not isinstance(target, property):
        raise AttributeError("exposing a data descriptor other than a property is not supported")
    name = getattr(target, "__name__", None) or getattr(getattr(target, "fget", None), "__name__", "")
    if name and is_private_attribute(name):
        raise AttributeError(f"exposing private names (starting with _) is not allowed: {name}")
    if inspect.isclass(target):
        for attr_name, member in vars(target).items():
            if is_private_attribute(attr_name):
                continue
            if inspect.isfunction(member) or inspect.ismethoddescriptor(member) or isinstance(member, property):
                _mark(member, "_pyroExposed")
        target._pyroExposed = True
        return target
    _mark(target, "_pyroExposed")
    return target


def oneway(method: T) -> T:
    """Mark a method as oneway: the caller does not wait for (or get) a result."""
    _mark(method, "_pyroOneway")
    return method


def callback(method: T) -> T:
    """Mark a method that servers call back (Pyro4's ``@callback``).

    An exception it raises goes back to the server that called it, as for any
    method, and is also reported locally through the error hook: the program
    that owns the callback would otherwise never hear of it.
    """
    method._pyroCallback = True
    return method


def in_worker(target: T) -> T:
    """Run this method (or every method of this class) in a worker thread.

    Under a GUI adapter calls normally run in the GUI thread, so an object may
    touch widgets. A long call marked with this decorator runs in the daemon's
    worker pool instead; its reply is still sent from the loop's thread.
    """
    _mark(target, "_pyroInWorker")
    return target


def behavior(instance_mode: str = "session", instance_creator: Callable | None = None):
    """Set how a registered *class* is instantiated: "session", "single" or "percall"."""
    if instance_mode not in ("single", "session", "percall"):
        raise ValueError("invalid instance mode: " + instance_mode)

    def decorate(cls):
        if not inspect.isclass(cls):
            raise TypeError("behavior decorator can only be used on a class")
        cls._pyroInstancing = (instance_mode, instance_creator)
        return cls

    return decorate


def _exposed(member: Any, only_exposed: bool) -> bool:
    if not only_exposed:
        return True
    if isinstance(member, property):
        return any(getattr(f, "_pyroExposed", False) for f in (member.fget, member.fset, member.fdel) if f)
    if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
    return getattr(member, "_pyroExposed", False)


@functools.lru_cache(maxsize=512)
def _exposed_members(cls: type, only_exposed: bool) -> tuple[frozenset, frozenset, frozenset]:
    methods, oneways, attrs = set(), set(), set()
    for name in dir(cls):
        if is_private_attribute(name):
            continue
        member = inspect.getattr_static(cls, name, None)
        if member is None:
            continue
        if isinstance(member, property):
            if _exposed(member, only_exposed):
                attrs.add(name)
        elif (inspect.isfunction(member) or inspect.ismethoddescriptor(member)
              or isinstance(member, (staticmethod, classmethod))):
            if _exposed(member, only_exposed):
                methods.add(name)
                func = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                if getattr(func, "_pyroOneway", False):
                    oneways.add(name)
        elif inspect.isdatadescriptor(member):
            fget = getattr(member, "fget", None)
            if fget and _exposed(fget, only_exposed):
                attrs.add(name)
    return frozenset(methods), frozenset(oneways), frozenset(attrs)


def get_exposed_members(obj: Any, only_exposed: bool | None = None, as_lists: bool = False) -> dict:
    """The metadata of an object or class: {"methods", "oneway", "attrs"}."""
    if only_exposed is None:
        only_exposed = config.REQUIRE_EXPOSE
    cls = obj if inspect.isclass(obj) else type(obj)
    methods, oneways, attrs = _exposed_members(cls, bool(only_exposed))
    kind = list if as_lists else set
    return {"methods": kind(methods), "oneway": kind(oneways), "attrs": kind(attrs)}


def reset_metadata_cache() -> None:
    """Forget what was found out about classes (after a class changed, say); every
    decision cached from them, the daemons' call lanes included, is made again."""
    global generation
    _exposed_members.cache_clear()
    _class_exposes.cache_clear()
    _computed_attribute.cache_clear()
    _lane_methods.clear()
    generation += 1


#: counts ``reset_metadata_cache`` calls: a cache built on what this module
#: said is stale once this moved on
generation = 0


@functools.lru_cache(maxsize=4096)
def _class_exposes(cls: type, name: str) -> bool:
    member = inspect.getattr_static(cls, name, None)
    return member is not None and _exposed(member, True)


@functools.lru_cache(maxsize=4096)
def _computed_attribute(cls: type, name: str) -> bool:
    """True if ``name`` on ``cls`` is a descriptor that computes a value when read
    (a property, ``functools.cached_property``, a slot or any other descriptor
    that is not a method): such an attribute is never a method to call."""
    member = inspect.getattr_static(cls, name, None)
    if member is None or not hasattr(type(member), "__get__"):
        return False
    return not (inspect.isroutine(member) or
                isinstance(member, (staticmethod, classmethod, functools.partialmethod,
                                    functools.singledispatchmethod)))


def get_attribute(obj: Any, name: str, only_exposed: bool | None = None) -> Any:
    """The method a remote call named ``name`` may invoke, or AttributeError.

    Exposure is decided from the class (``inspect.getattr_static``) before
    anything is looked up on the object, so a refused call never runs a
    property or cached_property getter, another descriptor, or
    ``__getattr__``, nor reaches a method through what some attribute returns.
    """
    if only_exposed is None:
        only_exposed = config.REQUIRE_EXPOSE
    if is_private_attribute(name):
        raise AttributeError(f"attempt to access private attribute '{name}'")
    cls = obj if inspect.isclass(obj) else type(obj)
    exposed = not only_exposed or _class_exposes(cls, name)
    if _computed_attribute(cls, name):
        if not exposed:
            raise AttributeError(f"attempt to access unexposed attribute '{name}'")
        raise AttributeError(f"attempt to call attribute '{name}', which is a property, not a method")
    if not exposed:
        # a function stored on the instance may carry @expose itself; the
        # static lookup reads the instance dict without running anything
        value = inspect.getattr_static(obj, name, _MISSING)
        if value is _MISSING:  # what __getattr__ might make of it is not asked
            raise AttributeError(f"'{cls.__name__}' object has no attribute '{name}'")
        if not (inspect.isfunction(value) or inspect.ismethod(value)) or not getattr(value, "_pyroExposed", False):
            raise AttributeError(f"attempt to access unexposed attribute '{name}'")
        return value
    return getattr(obj, name)


_lane_methods: dict[tuple[type, str], Any] = {}


def lane_method(cls: type, name: str) -> Any:
    """The plain function a call of ``name`` on an instance of ``cls`` runs, or None.

    For the daemon's call lane, which runs such a call without asking
    ``get_attribute`` each time: a function defined on the class (no
    property, staticmethod, classmethod or other descriptor), exposed by
    ``@expose`` whatever REQUIRE_EXPOSE says (so it is exposed under either
    setting), not private, not marked ``@in_worker`` (nor its class) or
    ``@callback``, on a class whose attribute lookup is the default one (so
    looking the method up has no side effect and gives the class's function
    unless the instance holds another). Markers are read once per class and
    name, until ``reset_metadata_cache()``.
    """
    key = (cls, name)
    try:
        return _lane_methods[key]
    except KeyError:
        pass
    member = next((vars(base)[name] for base in cls.__mro__ if name in vars(base)), None)
    plain = (inspect.isfunction(member) and not is_private_attribute(name) and _class_exposes(cls, name)
             and not _computed_attribute(cls, name) and cls.__getattribute__ is object.__getattribute__
             and not getattr(member, "_pyroInWorker", False) and not getattr(cls, "_pyroInWorker", False)
             and not getattr(member, "_pyroCallback", False))
    if len(_lane_methods) >= _LANE_METHODS_MAX:
        _lane_methods.clear()
    found = _lane_methods[key] = member if plain else None
    return found


_LANE_METHODS_MAX = 4096  # as the lru caches above: classes made at runtime must not pile up


def find_property(obj: Any, name: str, only_exposed: bool | None = None) -> property | None:
    """The exposed property ``name`` of ``obj``'s class, or None."""
    if only_exposed is None:
        only_exposed = config.REQUIRE_EXPOSE
    if is_private_attribute(name):
        return None
    member = inspect.getattr_static(type(obj), name, None)
    if not inspect.isdatadescriptor(member):
        return None
    if only_exposed and not _exposed(member, True):
        return None
    return member


def marked_in_worker(obj: Any, method: Any) -> bool:
    func = getattr(method, "__func__", method)
    return bool(getattr(func, "_pyroInWorker", False) or getattr(type(obj), "_pyroInWorker", False))
