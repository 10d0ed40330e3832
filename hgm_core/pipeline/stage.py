"""The stage interface: what a pipeline component is, and which components make each request level.

A stage is a small object with a `name`, the `Frame` fields it `needs` and the ones it `provides`,
and `run(frame) -> frame`. The `Reconstructor` (`hgm_core.pipeline.reconstructor`) chains the
components of a level (`LEVELS`) over one `Frame`, times each, and reports the names it ran; it has
no stage-specific code. Adding a stage (`refine_body`, `back_view`, `fuse`, `animate`) means writing
one component and registering it — `Reconstructor.run` does not change. See docs/architecture.md.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from hgm_core.types import Mesh, ReconstructionRequest

if TYPE_CHECKING:
    from hgm_core.body.fit import BodyFit
    from hgm_core.gaussians import Gaussians
    from hgm_core.perception.perceive import Perception
    from hgm_core.pipeline.back_view import BackView

LEVELS: dict[str, tuple[str, ...]] = {
    "prior": ("perceive", "fit_body", "prior"),
    "coarse": ("perceive", "fit_body", "coarse"),
    "refined": ("perceive", "fit_body", "coarse", "refine_body"),
    "full": ("perceive", "fit_body", "coarse", "refine_body", "back_view", "fuse", "mesh"),
}
"""Request level (`hgm_core.types.STAGES`) -> the components that produce it, in order. The `mesh`
component may also follow any level on request (`ReconstructionRequest.mesh`), and `align_depth`
follows the avatar stages (before `mesh`) of any request that carries a depth image."""
OPTIONAL: dict[str, tuple[str, ...]] = {"full": ("refine_body",)}
"""Components a level runs only when they are built (and skips, saying why in the report, when not):
`full` runs `refine_body` only where it is enabled, because with the embedded checkpoint it makes the
body fit worse (docs/architecture.md §4). `refined` is that stage, so it always needs it."""


@dataclass
class Frame:
    """Everything known about one request as it passes through the stages.

    Attributes:
        request: the job.
        perception: mask, landmarks, box and intrinsics (`perceive`).
        body: the fitted body in the camera's optical frame (`fit_body`).
        gaussians: the avatar so far, in the camera's optical frame.
        mesh: the avatar's surface (`mesh`).
        back_view: the avatar's back view, rendered and refined (`back_view`), for `fuse`.
        reports: per-stage JSON-ready facts (fallbacks, residuals, what was used), by stage name.
        warnings: human-readable notes for the caller (several people, a fallback taken).
    """

    request: ReconstructionRequest
    perception: Perception | None = None
    body: BodyFit | None = None
    gaussians: Gaussians | None = None
    mesh: Mesh | None = None
    back_view: BackView | None = None
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Stage(abc.ABC):
    """One pipeline component.

    Class attributes:
        name: the component's name in `LEVELS`, timings and `stages_run`.
        needs: `Frame` fields that must be set before it runs.
        provides: `Frame` fields it sets.
    """

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def run(self, frame: Frame) -> Frame:
        """Return `frame` with `provides` filled in (raises a `PipelineError` on unusable input)."""

    def __call__(self, frame: Frame) -> Frame:
        missing = [n for n in self.needs if getattr(frame, n) is None]
        if missing:
            raise RuntimeError(f"stage {self.name!r} needs {', '.join(missing)}, which no earlier stage provided")
        return self.run(frame)


def update(frame: Frame, **changes: Any) -> Frame:
    """`frame` with some fields replaced (stages return new frames rather than mutate shared ones)."""
    return dataclasses.replace(frame, **changes)
