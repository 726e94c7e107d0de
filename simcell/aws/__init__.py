"""AWS side of the simulated core cell: ``AwsFront`` (proxy in front of moto) and ``WorldHooks``.

``AwsFront`` is imported on first use, so that importing ``simcell.aws.hooks`` stays light (no moto).
"""

from typing import TYPE_CHECKING, Any

from .hooks import WorldHooks

if TYPE_CHECKING:
    from .proxy import AwsFront

__all__ = ["AwsFront", "WorldHooks"]


def __getattr__(name: str) -> Any:
    if name == "AwsFront":
        from .proxy import AwsFront

        return AwsFront
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
