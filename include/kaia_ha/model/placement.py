"""Live placement: where each core cell's validator runs now, which hosts stand by, which nodes are fenced.

The inventory says what a person decided (the validator's keys and node ID, the hosts, how to reach them);
the placement says what the DAGs did since. A failover writes a new generation once its new node is
verified in sync; maintenance, readiness, the next failover and the enrolment read it. Generation 0 is
the inventory itself (nothing recorded yet). Pure data: no I/O here (kaia_ha.live stores it).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kaia_ha.model.inventory import Cell


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Active(BaseModel):
    """The node that runs the validator now and how to reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str  # bare metal: the inventory CN whose host runs it; cloud: the validator's name
    instance_id: str | None = None  # cloud
    private_ip: str | None = None  # cloud replacement: where SSH reaches it (the inventory's connection otherwise)
    host_key: str | None = None  # its SSH host key, learned from the EC2 console output during the failover
    ssh_conn_id: str | None = None  # cloud replacement: the launch template connection (login and key)


class Standby(_Model):
    host: str
    node_id: str | None = None  # its OWN identity, learned at enrolment (the inventory's otherwise)


class Fenced(_Model):
    host: str
    instance_id: str | None = None
    run_id: str
    dag_id: str
    at: str
    how: str


class Change(_Model):
    """Why this generation exists: the history a postmortem reads."""

    dag_id: str
    run_id: str
    at: str
    why: str
    before: str  # summary() of the generation it replaced
    after: str


class Placement(_Model):
    cell: str
    scheme: str
    generation: int = Field(default=0, ge=0)
    validator: str  # the inventory's role: active entry (keys, node ID)
    active: Active
    standbys: list[Standby] = []
    fenced: list[Fenced] = []
    change: Change | None = None

    def summary(self) -> str:
        where = self.active.instance_id or self.active.host
        spare = ", ".join(s.host for s in self.standbys) or "none"
        fenced = ", ".join(f.instance_id or f.host for f in self.fenced) or "none"
        standby = f"; standby {spare}" if self.scheme == "bare-metal" else ""
        return f"{self.validator} on {where}{standby}; fenced {fenced}"

    def standby(self, host: str) -> Standby | None:
        return next((s for s in self.standbys if s.host == host), None)

    def is_fenced(self, host: str) -> bool:
        return any(f.host == host and f.instance_id is None for f in self.fenced)

    def next(self, *, active: Active | None = None, standbys: list[Standby] | None = None,
             fenced: list[Fenced] | None = None) -> Placement:
        return self.model_copy(update={"generation": self.generation + 1, "change": None,
                                       **{k: v for k, v in (("active", active), ("standbys", standbys),
                                                            ("fenced", fenced)) if v is not None}})


def initial(cell: Cell) -> Placement:
    """Generation 0: the placement the inventory describes (a cell no DAG has changed yet)."""
    validator = cell.validator
    return Placement(cell=cell.name, scheme=cell.scheme, validator=validator.name,
                     active=Active(host=validator.name, instance_id=validator.instance_id),
                     standbys=[Standby(host=cn.name) for cn in cell.cns if cn.role == "standby"])


def after_failover(placement: Placement, active: Active, fenced: Fenced) -> Placement:
    """The new node runs the validator; the one it replaced is fenced; a promoted standby stands by no more."""
    return placement.next(active=active, standbys=[s for s in placement.standbys if s.host != active.host],
                          fenced=[f for f in placement.fenced
                                  if (f.host, f.instance_id) != (fenced.host, fenced.instance_id)] + [fenced])


def after_enrolment(placement: Placement, standby: Standby) -> Placement:
    """A repaired or new host stands by with its own identity; it is no longer fenced."""
    return placement.next(standbys=[s for s in placement.standbys if s.host != standby.host] + [standby],
                          fenced=[f for f in placement.fenced
                                  if not (f.host == standby.host and f.instance_id is None)])
