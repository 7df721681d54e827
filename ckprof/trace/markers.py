"""Names shared by the capture side (which writes them) and the analysis side
(which reads them). No torch import here: both sides import this module.

# NOTE [ ckprof markers ]
# Capture wraps parts of a training step in ``torch.profiler.record_function``
# ranges (cat ``user_annotation`` in the Chrome trace) and, when a tool is
# attached, NVTX ranges of the same name in the ``ckprof`` NVTX domain:
#
#   ckprof::forward                  model forward + loss, up to backward
#   ckprof::backward                 one autograd engine run (loss.backward / autograd.grad)
#   ckprof::optimizer                optimizer.step()
#   ckprof::zero_grad                optimizer.zero_grad()  (counted as "optimizer")
#   ckprof::phase::<name>            user range from ckprof.phase(name)
#   ckprof::checkpoint::<region>     the first (forward) run of a checkpointed region
#   ckprof::recompute::<region>      its recomputation inside backward
#   ckprof::variant::<name>          a short range at the start of a step run under an
#                                    A/B variant (``on`` / ``off``: checkpointing on or
#                                    off; a sweep policy's name); ``...::oom`` after an
#                                    out-of-memory in that step (the step is excluded)
#
# A region name never contains "::" (capture replaces it), so the text after the
# prefix is the region. The innermost marker wins when ranges nest: a recompute
# range inside a backward range is recompute time, never backward time.
#
# Trace metadata: capture stores one JSON object under the top-level key
# ``ckprof`` (see ``METADATA_KEY``); its fields are listed in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

PREFIX = "ckprof::"
FORWARD = "ckprof::forward"
BACKWARD = "ckprof::backward"
OPTIMIZER = "ckprof::optimizer"
ZERO_GRAD = "ckprof::zero_grad"
PHASE_PREFIX = "ckprof::phase::"
CHECKPOINT_PREFIX = "ckprof::checkpoint::"
RECOMPUTE_PREFIX = "ckprof::recompute::"
VARIANT_PREFIX = "ckprof::variant::"

#: A/B variants of ``capture(ab=True)``: checkpointing on / off (checkpointed callables
#: called directly); ``OOM_VARIANT`` tags a step whose variant ran out of memory.
AB_ON = "on"
AB_OFF = "off"
OOM_VARIANT = "oom"

NVTX_DOMAIN = "ckprof"
METADATA_KEY = "ckprof"

# Phases every report knows, in display order. zero_grad counts as optimizer.
PHASES: tuple[str, ...] = ("forward", "backward", "recompute", "optimizer", "other")

# Stable colours per phase (ARGB for NVTX, hex for plots and HTML).
PHASE_COLORS: dict[str, str] = {
    "forward": "#4C72B0",
    "backward": "#DD8452",
    "recompute": "#C44E52",
    "optimizer": "#55A868",
    "other": "#8C8C8C",
}

# Marker name -> standard phase.
MARKER_PHASE: dict[str, str] = {
    FORWARD: "forward",
    BACKWARD: "backward",
    OPTIMIZER: "optimizer",
    ZERO_GRAD: "optimizer",
}


def region_marker(region: str, *, recompute: bool) -> str:
    """Marker name for a checkpointed region's forward run or its recompute."""
    clean = sanitize_region(region)
    return (RECOMPUTE_PREFIX if recompute else CHECKPOINT_PREFIX) + clean


def sanitize_region(region: str) -> str:
    """Region names never contain '::' so that the marker parses back uniquely."""
    return str(region).replace("::", ".").strip() or "region"


def phase_of_user_marker(name: str) -> str:
    """``ckprof::phase::<x>``: a standard phase when x is one, else ``other``."""
    x = name[len(PHASE_PREFIX):]
    if x == "zero_grad":
        return "optimizer"
    return x if x in PHASES else "other"


def variant_marker(variant: str) -> str:
    """Marker name tagging a step with its A/B (or sweep) variant."""
    return VARIANT_PREFIX + sanitize_region(variant)
