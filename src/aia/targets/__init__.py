"""AIA targets: the paper's presets and the :class:`TargetProfile` format (:mod:`.presets`),
and stage-level targets derived from measured profiles (:mod:`.stages`)."""

from aia.targets.presets import PRESETS, Stage, TargetProfile, preset_names
from aia.targets.stages import derive_stages, derive_targets, segment

__all__ = ["PRESETS", "Stage", "TargetProfile", "derive_stages", "derive_targets", "preset_names", "segment"]
