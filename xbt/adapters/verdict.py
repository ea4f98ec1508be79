"""An adapter's backward-compatibility verdict per query modality, and which queries a gallery's old part gets.

Stage 2 compares each kept query path with the OLD model's own queries on the same held-out pairs
(``method.guard.versus_old_model``: the paired per-query log-rank gain and its standard error). This
module reads that record back from ``adapter.training`` as one ``Verdict`` per query modality, which
the model card, ``xbt fit``'s last lines, ``MixedGallery`` and ``xbt gallery search --explain`` all
show in the same words. ``old_part_queries`` is the one rule that turns it into what a gallery in
migration searches its old part with: the adapter's queries, or the old model's own queries where the
adapter's verdict is "not backward compatible" (then the curve runs from old->old to new->new instead
of starting below what the user had).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from ..core.errors import XBTError

#: what a gallery's old part is searched with
QUERY_PATHS = ("adapter", "old model")
#: the guard's record -> the verdict's words
WORDS = {"better": "backward compatible", "within noise": "within noise", "worse": "not backward compatible"}
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Verdict:
    """Does the adapter's ``modality`` query beat the old model's own queries on the old gallery?

    Attributes:
        modality: the query modality, ``"text"`` (text->image search) or ``"image"`` (image->text).
        verdict: ``"backward compatible"`` (ahead by more than one standard error), ``"within noise"``,
            ``"not backward compatible"`` (behind by more than one standard error) or ``"not measured"``
            (fitted without held-out pairs: only the advisor, ``xbt.advise``, can say anything then).
        gain: mean per-query gain in log rank of the right item over the old model's queries (> 0: the
            adapter ranks it higher); ``standard_error`` its paired standard error; ``n`` queries.
        on: what the ``n`` queries were: the fit's held-out pairs, or a gallery's own pairs in its layout
            (``xbt.gallery.pair_vectors.layout_verdict``).
    """

    modality: str
    verdict: str
    gain: float | None = None
    standard_error: float | None = None
    n: int = 0
    on: str = "held-out pairs"

    @classmethod
    def from_record(cls, modality: str, record: dict[str, Any], on: str = "held-out pairs") -> Verdict:
        """The verdict of a ``method.guard.versus_old_model`` record on ``modality`` queries."""
        return cls(
            modality,
            WORDS[record["verdict"]],
            record["mean_log_rank_gain"],
            record["standard_error"],
            int(record["n"]),
            on,
        )

    @property
    def interval(self) -> tuple[float, float] | None:
        """The gain's one-standard-error interval (about 68 % confidence), the band the verdict is read from."""
        if self.gain is None or self.standard_error is None:
            return None
        return self.gain - self.standard_error, self.gain + self.standard_error

    @property
    def compatible(self) -> bool | None:
        """False only for a clear "not backward compatible"; None when not measured."""
        return None if self.verdict == NOT_MEASURED else self.verdict != "not backward compatible"

    def sentence(self) -> str:
        """One line: the verdict, its gain and interval, and what it was measured on."""
        what = "text->image" if self.modality == "text" else "image->text"
        if self.interval is None:
            return f"{what}: not measured on held-out pairs (XBT with pairs measures it; xbt.advise predicts it)"
        lo, hi = self.interval
        return (
            f"{what}: {self.verdict} (log-rank gain over the old model's own queries {self.gain:+.3f}, "
            f"one-standard-error interval {lo:+.3f} to {hi:+.3f}, {self.n} {self.on})"
        )


def verdicts(training: dict[str, Any] | None) -> dict[str, Verdict]:
    """``{"text": Verdict, "image": Verdict}`` from an adapter's training record (``adapter.training``)."""
    stage2 = ((training or {}).get("metrics") or {}).get("stage2") or {}
    versus = stage2.get("versus_old_model") or {}
    out = {}
    for modality in ("text", "image"):
        rec = versus.get(modality)
        if isinstance(rec, dict) and rec.get("verdict") in WORDS:
            out[modality] = Verdict.from_record(modality, rec)
        else:
            out[modality] = Verdict(modality, NOT_MEASURED)
    return out


def old_part_queries(
    training: dict[str, Any] | None, query_modality: str, force: str | None = None, verdict: Verdict | None = None
) -> tuple[str, str]:
    """``(path, reason)``: what a gallery's old part is searched with for ``query_modality`` queries.

    ``"old model"`` where the verdict is "not backward compatible" (or ``force="old model"``); else
    ``"adapter"``. Forcing the adapter against that verdict warns, naming it. The verdict is the adapter's own
    (from its fit's held-out pairs), or ``verdict`` where the gallery measured one on pairs laid out as it is
    (``xbt.gallery.pair_vectors.layout_verdict``): an adapter fitted on one caption per image is judged on
    finding an image's one caption, which can go the other way from finding any of its five.
    """
    if query_modality not in ("text", "image"):
        raise XBTError(f"query modality is 'text' or 'image', got {query_modality!r}")
    if force is not None and force not in QUERY_PATHS:
        raise XBTError(f"old-part queries are one of {list(QUERY_PATHS)}, got {force!r}")
    own = verdicts(training)[query_modality]
    v = own if verdict is None else verdict
    if v.modality != query_modality:
        raise XBTError(f"a verdict on {v.modality} queries cannot decide what {query_modality} queries search")
    if verdict is not None:  # say what the fit's held-out pairs said too: the two can differ
        said = own.verdict + (f", {own.gain:+.3f}" if own.gain is not None else "")
        v = dataclasses.replace(v, on=f"{v.on}; on its fit's held-out pairs: {said}")
    if force == "old model":
        return force, f"the old model's queries, as asked ({v.sentence()})"
    if v.compatible is False:
        if force == "adapter":
            warnings.warn(
                f"serving the adapter's {query_modality} queries on the old part although its verdict is "
                f"{v.sentence()}: those searches rank below what the old model gave before the upgrade",
                stacklevel=3,
            )
            return "adapter", f"the adapter's queries, forced against its verdict ({v.sentence()})"
        return "old model", f"the old model's queries: the adapter's verdict is {v.sentence()}"
    return "adapter", f"the adapter's queries ({v.sentence()})"
