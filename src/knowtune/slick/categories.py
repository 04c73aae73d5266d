"""SliCK knowledge categories from counts of correct answers.

Gekhman et al., EMNLP 2024 (arXiv 2405.05904), section 3, with
P0 = P_Correct(q, a; M, T=0) over the N_ex greedy answers and
Ps = P_Correct(q, a; M, T>0) over the N_ex * n_samples sampled answers:

    HighlyKnown  P0 = 1
    MaybeKnown   0 < P0 < 1
    WeaklyKnown  P0 = 0 and Ps > 0
    Unknown      P0 = 0 and Ps = 0

Known = HighlyKnown + MaybeKnown + WeaklyKnown. The category is decided by the greedy
answers alone whenever P0 > 0, and WeaklyKnown is final at the first correct sample:
this is what makes lazy mode exact about categories.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")
KNOWN: frozenset[str] = frozenset(CATEGORIES[:3])


def categorize(greedy_correct: int, n_greedy: int, sample_correct: int | None) -> str:
    """The SliCK category from counts.

    ``greedy_correct`` of ``n_greedy`` greedy answers were correct; ``sample_correct`` is
    the number of correct samples, or ``None`` when sampling was skipped (allowed only
    when P0 > 0, where samples cannot change the category).
    """
    if n_greedy < 1 or not 0 <= greedy_correct <= n_greedy:
        raise ValueError(f"need 0 <= greedy_correct <= n_greedy and n_greedy >= 1, got {greedy_correct}/{n_greedy}")
    if greedy_correct == n_greedy:
        return "HighlyKnown"
    if greedy_correct > 0:
        return "MaybeKnown"
    if sample_correct is None:
        raise ValueError("P0 = 0: the category needs the sample count (WeaklyKnown vs Unknown)")
    if sample_correct < 0:
        raise ValueError(f"sample_correct must be >= 0, got {sample_correct}")
    return "WeaklyKnown" if sample_correct > 0 else "Unknown"


@dataclass(frozen=True)
class Verdict:
    """The per-example outcome of the audit (what ``annotations.jsonl`` stores).

    ``p_s`` is ``None`` when not computed (lazy mode); ``samples`` is the number of
    samples actually drawn and ``sample_correct`` how many of them were correct.
    """

    category: str
    greedy_correct: int
    n_greedy: int
    sample_correct: int
    samples: int
    p_s: float | None

    @property
    def p0(self) -> float:
        """P0 = correct greedy answers / N_ex."""
        return self.greedy_correct / self.n_greedy

    @property
    def generations(self) -> int:
        """Generations spent on this example: greedy answers plus samples drawn."""
        return self.n_greedy + self.samples


def verdict(greedy_correct: int, n_greedy: int, sample_correct: int, samples: int, samples_total: int) -> Verdict:
    """Build a :class:`Verdict`; Ps is exact only when all ``samples_total`` samples were drawn.

    Lazy mode draws fewer samples (none when P0 > 0, and stops at the first correct one
    when P0 = 0); the category is still the one all samples would give.
    """
    exact = samples == samples_total and samples_total > 0
    known_sampled = sample_correct if (exact or greedy_correct == 0) else None
    category = categorize(greedy_correct, n_greedy, known_sampled)
    return Verdict(
        category=category,
        greedy_correct=greedy_correct,
        n_greedy=n_greedy,
        sample_correct=sample_correct,
        samples=samples,
        p_s=sample_correct / samples_total if exact else None,
    )
