"""Validated sites as plain frozen classes, so commands that use a site need not import pydantic.

A site file is validated once by the pydantic models of :mod:`gpuhub.site`; :func:`from_model`
then copies the result into the classes below, which the validated-site cache keeps and which
``plan``, ``render`` and the backends read. Each class mirrors the model of the same name: the
same fields in the same order, with the same defaults, and the same methods (shared through the
``*Methods`` mixins, which both sides inherit). ``tests/test_sitedata.py`` fails when a field is
added to one side only. Values are not checked here: only :func:`from_model` (or code that knows
what it writes) makes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuhub.record import Factory, Record


class SiteMethods:
    """What :class:`Site` and ``gpuhub.site.Site`` compute from their fields."""

    __slots__ = ()
    if TYPE_CHECKING:  # not at run time: pydantic would take them for fields of its Site
        default_partition: str | None
        partitions: dict[str, Any]
        unverified: list[str]

    def partition_key(self) -> str:
        return self.default_partition or next(iter(self.partitions))

    def is_unverified(self, path: str) -> bool:
        """True when ``path`` or one of its parents is marked unverified."""
        return any(path == p or path.startswith(p + ".") for p in self.unverified)


class LabHostMethods:
    __slots__ = ()
    if TYPE_CHECKING:
        name: str
        host: str | None

    @property
    def address(self) -> str:
        return self.host or self.name


class Plain(Record):
    """A frozen record mirroring a model: fields by keyword only, and the fields the site file gave."""

    if TYPE_CHECKING:  # not a field: what pydantic's ``model_fields_set`` says (kept by __init__)
        # The fields the site file gave (the rest are defaults): an SSH setting left out of the
        # site file yields to ~/.ssh/config.
        model_fields_set: frozenset[str]

    def __init__(self, **values: Any) -> None:
        given = frozenset(values.pop("model_fields_set", ()))
        super().__init__(**values)
        self.__dict__["model_fields_set"] = given

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Any:
        """A copy with some fields replaced (not validated), as pydantic's ``model_copy``."""
        update = update or {}
        if not self._field_set.issuperset(update):
            unknown = ", ".join(repr(name) for name in update if name not in self._field_set)
            raise TypeError(f"{type(self).__name__}: unknown field(s) {unknown}")
        # Every field is there already: copied as they are (the broker copies a request for each
        # of some 75 partitions; building it again field by field cost more than the planning).
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__, **update)
        copy.__dict__["model_fields_set"] = self.model_fields_set | frozenset(update)
        return copy


class QoS(Plain):
    name: str
    max_walltime: int | None = None
    description: str | None = None


class Partition(Plain):
    description: str | None = None
    partition: str | None = None
    gpu_model: str | None = None
    gres_type: str | None = None
    constraint: str | None = None
    gpu_memory_gb: float | None = None
    gpu_capability: float | None = None
    gpus_per_node: int
    cpus_per_gpu: int | None = None
    cpus_per_node: int | None = None
    memory_per_node: int | None = None
    max_walltime: int | None = None
    default_walltime: int | None = None
    max_nodes: int | None = None
    exclusive: bool = False
    qos: list[QoS] = Factory(list)
    directives: list[str] = Factory(list)
    setup: list[str] = Factory(list)
    env: dict[str, str] = Factory(dict)


class Connection(Plain):
    host: str
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    proxy_jump: str | None = None
    keepalive_interval: int = 30
    connect_timeout: float = 20.0
    host_key_fingerprints: dict[str, str] = Factory(dict)
    ip_restricted: bool = False
    persist: int = 600


class Account(Plain):
    format: str | None = None
    required: bool = False


class Network(Plain):
    interface: str | None = None
    env: dict[str, str] = Factory(dict)


class Defaults(Plain):
    project: str | None = None
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    time: int | None = None
    gpu_type: str | None = None
    cpus_per_gpu: int | None = None
    mem: int | None = None
    launcher: str | None = None


class Accounting(Plain):
    normalization: dict[str, float] = Factory(dict)
    source: str | None = None
    site_tools: list[str] = Factory(list)


class OarSettings(Plain):
    gpu_property: str = "gpu"
    model_property: str = "gpumodel"


class LabHost(Plain, LabHostMethods):
    name: str
    host: str | None = None
    port: int | None = None
    lock_dir: str | None = None
    nvidia_smi: str | None = None


class Lab(Plain):
    hosts: list[LabHost] = Factory(list)
    lock_dir: str = "/var/tmp/gpuhub-locks"
    nvidia_smi: str = "nvidia-smi"
    busy_memory_mib: int = 1024
    busy_utilization: int = 10
    max_gpus_per_user: int | None = None
    max_walltime: int | None = None
    reserved_gpus: list[int] = Factory(list)
    kill_grace: int = 30
    queue_poll: float = 2.0


class HTCondorSettings(Plain):
    gpu_requirements: str = "gpus_minimum"


class Site(Plain, SiteMethods):
    name: str
    description: str = ""
    scheduler: str
    connection: Connection | None = None
    account: Account = Factory(Account)
    defaults: Defaults = Factory(Defaults)
    gpu_request: str = "gres"
    directives: list[str] = Factory(list)
    setup: list[str] = Factory(list)
    env: dict[str, str] = Factory(dict)
    network: Network = Factory(Network)
    partitions: dict[str, Partition]
    default_partition: str | None = None
    log_dir: str = "gpuhub-logs"
    template: str | None = None
    accounting: Accounting = Factory(Accounting)
    htcondor: HTCondorSettings = Factory(HTCondorSettings)
    oar: OarSettings = Factory(OarSettings)
    lab: Lab = Factory(Lab)
    unverified: list[str] = Factory(list)
    sources: list[str] = Factory(list)


MIRRORS: dict[str, type[Plain]] = {
    cls.__name__: cls
    for cls in (QoS, Partition, Connection, Account, Network, Defaults, Accounting, OarSettings, LabHost, Lab,
                HTCondorSettings, Site)
}


def from_model(value: Any) -> Any:
    """The plain copy of a validated model (a ``gpuhub.site`` instance), recursively; anything
    else (a plain instance included) is returned as it is, lists and dicts copied."""
    model_fields = getattr(type(value), "model_fields", None)
    if model_fields is not None:
        mirror = MIRRORS[type(value).__name__]
        values = {name: from_model(getattr(value, name)) for name in model_fields}
        return mirror(**values, model_fields_set=frozenset(value.model_fields_set))
    if isinstance(value, list):
        return [from_model(item) for item in value]
    if isinstance(value, dict):
        return {key: from_model(item) for key, item in value.items()}
    return value
