"""The providers this service knows, in order of preference: an `auto` task goes to the first
configured one (DEFAULT_PROVIDER before the rest) whose limits its input fits, and fails over
in this order.

A provider is one module exporting a `ProviderSpec`, registered here with one line. Pure: the
specs are data, and nothing here does I/O.
"""

from __future__ import annotations

from service.domain.tasks import ProviderName
from service.providers import apikley, novita
from service.providers.spec import ProviderSpec


class UnknownProvider(KeyError):
    """No provider is registered under this name."""


_SPECS: dict[ProviderName, ProviderSpec] = {}


def register(spec: ProviderSpec) -> ProviderSpec:
    if spec.name in _SPECS or spec.name == "auto":
        raise ValueError(f"provider name {spec.name!r} is taken")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: ProviderName) -> None:
    _SPECS.pop(name, None)


def get(name: ProviderName) -> ProviderSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownProvider(name) from None


def all() -> tuple[ProviderSpec, ...]:
    return tuple(_SPECS.values())


def names() -> tuple[ProviderName, ...]:
    return tuple(_SPECS)


register(apikley.SPEC)
register(novita.SPEC)
