"""The two named capture points, as TransformerLens names ``hook_q`` / ``hook_rot_q``: the same names in
the config's meaning, the Python API, the metadata and the card."""

from __future__ import annotations

from enum import Enum


class CapturePoint(str, Enum):
    # After any q/k norm, before the rotation (``capture.pre_rope=true``).
    PRE_ROPE = "pre_rope"
    # What the attention function receives: after the rotation (the default).
    POST_ROPE = "post_rope"

    @classmethod
    def of(cls, pre_rope: bool) -> CapturePoint:
        return cls.PRE_ROPE if pre_rope else cls.POST_ROPE

    @property
    def meaning(self) -> str:
        if self is CapturePoint.PRE_ROPE:
            return "after any q/k norm, before the rotation"
        return "as the attention sees them, after the rotation"
