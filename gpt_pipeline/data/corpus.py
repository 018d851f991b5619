"""The embedded story corpus: short children's stories that the project writes itself.

This module generates stories in the TinyStories style (children and animals, places, a small
problem and how it is solved, feelings, dialogue in double quotes, paragraphs split by newlines)
from hand-written word lists and sentence templates, deterministically from a seed. It lets the
pipeline run from a fresh clone with no download and no third-party text. It does not aim at
literature: the stories only need to be varied enough that a BPE tokenizer finds real merges and
a small language model has structure to learn.

How a story is made: pick a cast (a child, an animal or two children as the hero, a friend, a
grown-up), a place, a thing and a plot. Every sentence is a template whose ``[a|b|c]`` alternatives
are chosen at random and whose ``{slots}`` are filled from the cast; a slot written with a capital
(``{He}``, ``{Friend}``) gives the same word capitalised. Small helpers handle the grammar: a/an,
he/she/they (with was/were), plurals, and the -ing and past forms of verbs.

All randomness comes from one ``random.Random(seed)``: the same seed gives the same stories, and
``iter_stories(n, seed)`` yields the first ``n`` stories of the seed's endless stream.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections.abc import Iterator

from gpt_pipeline.data.corpus_words import (
    ACTIVITIES,
    ANIMALS,
    BOYS,
    COLORS,
    CREATURE_ADJECTIVES,
    FOODS,
    GIRLS,
    GROWN_UPS,
    PET_NAMES,
    PLACES,
    TEMPLATES,
    THINGS,
    THING_ADJECTIVES,
    TIMES,
    TRAITS,
)

DEFAULT_NUM_STORIES = 5000  # stories in the embedded corpus (issue 2: at least 5,000)
PARQUET_BATCH = 10_000  # stories per Parquet row group when writing large corpora

_CHOICE = re.compile(r"\[([^\[\]]*)\]")

# --- grammar helpers -------------------------------------------------------------------------

_CONSONANT_SOUND = ("uni", "use", "eu", "one", "once")  # vowel letter, consonant sound
_VOWEL_SOUND = ("hour", "honest")  # consonant letter, vowel sound


def with_article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front, chosen by the sound of its first word.

    Example:
        >>> [with_article(w) for w in ("apple", "big apple", "unicorn", "owl", "hour")]
        ['an apple', 'a big apple', 'a unicorn', 'an owl', 'an hour']
    """
    word = phrase.lower()
    vowel = (word[0] in "aeiou" and not word.startswith(_CONSONANT_SOUND)) or word.startswith(
        _VOWEL_SOUND
    )
    return ("an " if vowel else "a ") + phrase


_IRREGULAR_PLURALS = {
    "mouse": "mice", "goose": "geese", "sheep": "sheep", "fish": "fish", "deer": "deer",
    "child": "children", "wolf": "wolves", "leaf": "leaves", "loaf": "loaves", "scarf": "scarves",
    "potato": "potatoes", "tomato": "tomatoes", "mango": "mangoes", "octopus": "octopuses",
}


def plural(noun: str) -> str:
    """The plural of ``noun`` (of its last word, for phrases like "teddy bear").

    Example:
        >>> [plural(w) for w in ("cat", "bunny", "fox", "mouse", "teddy bear", "day")]
        ['cats', 'bunnies', 'foxes', 'mice', 'teddy bears', 'days']
    """
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        last = _IRREGULAR_PLURALS[last]
    elif last.endswith("y") and last[-2:-1] not in tuple("aeiou"):
        last = last[:-1] + "ies"
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    else:
        last += "s"
    return f"{head} {last}" if head else last


_IRREGULAR_PAST = {
    "build": "built", "draw": "drew", "sing": "sang", "swim": "swam", "dig": "dug", "run": "ran",
    "ride": "rode", "fly": "flew", "make": "made", "read": "read", "throw": "threw",
    "catch": "caught", "eat": "ate", "feed": "fed", "hide": "hid", "find": "found", "go": "went",
    "blow": "blew", "tell": "told", "write": "wrote", "sit": "sat", "take": "took",
}
_DOUBLE_FINAL = {"hop", "skip", "jog", "swim", "run", "dig", "clap", "nap", "hug", "stop", "drop",
                 "plan", "shop"}


def ing_form(phrase: str) -> str:
    """``phrase`` with its first word (a verb) in the -ing form.

    Example:
        >>> ing_form("fly kites"), ing_form("ride a bike"), ing_form("swim in the lake")
        ('flying kites', 'riding a bike', 'swimming in the lake')
    """
    verb, _, rest = phrase.partition(" ")
    if verb in _DOUBLE_FINAL:
        verb += verb[-1]
    elif verb.endswith("e") and not verb.endswith(("ee", "ye")):
        verb = verb[:-1]
    return f"{verb}ing {rest}".rstrip()


def past_form(phrase: str) -> str:
    """``phrase`` with its first word (a verb) in the simple past.

    Example:
        >>> [past_form(p) for p in ("play tag", "bake cookies", "fly kites", "hop", "carry it")]
        ['played tag', 'baked cookies', 'flew kites', 'hopped', 'carried it']
    """
    verb, _, rest = phrase.partition(" ")
    if verb in _IRREGULAR_PAST:
        verb = _IRREGULAR_PAST[verb]
    elif verb in _DOUBLE_FINAL:
        verb += verb[-1] + "ed"
    elif verb.endswith("e"):
        verb += "d"
    elif verb.endswith("y") and verb[-2] not in "aeiou":
        verb = verb[:-1] + "ied"
    else:
        verb += "ed"
    return f"{verb} {rest}".rstrip()


class _Slots(dict):
    """Template slots; ``{Key}`` gives the value of ``{key}`` with a capital first letter."""

    def __missing__(self, key: str) -> str:
        if not key[:1].isupper():
            raise KeyError(key)
        value = self[key[0].lower() + key[1:]]
        return value[:1].upper() + value[1:]


def expand(template: str, slots: dict, rng: random.Random) -> str:
    """Pick one alternative in every ``[a|b]`` group (left to right), then fill the ``{slots}``.

    Example:
        >>> expand("[Once|One day], {he} saw {a_animal}.", _Slots(he="she", a_animal="an owl"),
        ...        random.Random(1))
        'Once, she saw an owl.'
    """
    literals, options = _compiled(template)
    if options:
        choice = rng.choice
        parts = [literals[0]]
        for alternatives, literal in zip(options, literals[1:]):
            parts.append(choice(alternatives))
            parts.append(literal)
        template = "".join(parts)
    return template.format_map(slots)


@functools.lru_cache(maxsize=None)
def _compiled(template: str) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """The literal text around each ``[a|b]`` group and each group's alternatives, parsed once.

    Example:
        >>> _compiled("[Once|One day], {he} [ran|hid].")
        (('', ', {he} ', '.'), (('Once', 'One day'), ('ran', 'hid')))
    """
    parts = _CHOICE.split(template)  # literal, group, literal, ..., literal
    return tuple(parts[0::2]), tuple(tuple(group.split("|")) for group in parts[1::2])


def _parse_templates(text: str) -> tuple[dict[str, list[str]], list[dict[str, list[str]]]]:
    # Joins continuation lines, then files each line under its section (and plot part).
    lines: list[str] = []
    for raw in text.strip().splitlines():
        if raw.startswith(" ") and lines:
            lines[-1] += " " + raw.strip()
        else:
            lines.append(raw.strip())
    sections: dict[str, list[str]] = {}
    plots: list[dict[str, list[str]]] = []
    current: list[str] = []
    for line in lines:
        if line.startswith("## plot "):
            plots.append({"problem": [], "fix": [], "lesson": []})
        elif line.startswith("## "):
            current = sections.setdefault(line[3:], [])
        elif plots and line.split(":", 1)[0] in plots[-1]:
            part, template = line.split(":", 1)
            plots[-1][part].append(template.strip())
        else:
            current.append(line)
    return sections, plots


_SECTIONS, PLOTS = _parse_templates(TEMPLATES)
OPENINGS, SETTINGS = _SECTIONS["openings"], _SECTIONS["settings"]
FRIENDS, ENDINGS = _SECTIONS["friends"], _SECTIONS["endings"]

# --- the cast ----------------------------------------------------------------------------------

_PRONOUNS = {  # subject, object, possessive, reflexive, was/were
    "he": ("he", "him", "his", "himself", "was"),
    "she": ("she", "her", "her", "herself", "was"),
    "they": ("they", "them", "their", "themselves", "were"),
}


def _person(rng: random.Random, prefix: str, slots: _Slots, taken: set[str], pair: bool) -> None:
    # Fills one character's slots: ``prefix`` "" for the hero, "f_" for the friend.
    if pair:
        first, second = rng.choice(GIRLS), rng.choice(BOYS)
        if rng.random() < 0.5:
            first, second = second, first
        names, gender, kind = (first, second), "they", "children"
        who = rng.choice(("two friends", "a brother and sister", "two cousins", "two neighbors"))
        intro = f"{who} named {first} and {second}"
    elif rng.random() < 0.65:
        gender = rng.choice(("she", "he"))
        kind = "girl" if gender == "she" else "boy"
        names = (rng.choice([n for n in (GIRLS if gender == "she" else BOYS) if n not in taken]),)
        size = rng.choice(("little", "little", "young", "small"))
        intro = f"{with_article(size + ' ' + kind)} named {names[0]}"
    else:
        gender, kind = rng.choice(("she", "he")), rng.choice(ANIMALS)
        names = (rng.choice([n for n in PET_NAMES if n not in taken]),)
        intro = f"{with_article(rng.choice(CREATURE_ADJECTIVES) + ' ' + kind)} named {names[0]}"
    taken.update(names)
    he, him, his, himself, was = _PRONOUNS[gender]
    slots.update({
        f"{prefix}name": " and ".join(names), f"{prefix}speaker": names[0], f"{prefix}intro": intro,
        f"{prefix}kind": kind, f"{prefix}he": he, f"{prefix}him": him, f"{prefix}his": his,
        f"{prefix}himself": himself, f"{prefix}was": was,
    })


def _cast(rng: random.Random) -> _Slots:
    # Everything a story's templates can name, drawn once per story.
    slots = _Slots()
    taken: set[str] = set()
    _person(rng, "", slots, taken, pair=rng.random() < 0.1)
    _person(rng, "f_", slots, taken, pair=False)
    slots["friend"] = slots["f_name"]
    grown_up, vocative, gender = rng.choice(GROWN_UPS)
    he, him, his = _PRONOUNS[gender][:3]
    slots.update({"adult": f"{slots['his']} {grown_up}", "adult_voc": vocative,
                  "a_he": he, "a_him": him, "a_his": his})
    place, prep, spots = rng.choice(PLACES)
    spot, spot2 = rng.sample(spots, 2)
    slots.update({"place": place, "at_place": f"{prep} {place}", "spot": spot, "spot2": spot2})
    color, thing = rng.choice(COLORS), rng.choice(THINGS)
    adjective = rng.choice(THING_ADJECTIVES)
    desc = rng.choice((f"{color} {thing}", f"{adjective} {thing}", f"{adjective} {color} {thing}"))
    food, animal = rng.choice(FOODS), rng.choice(ANIMALS)
    activity, activity2 = rng.sample(ACTIVITIES, 2)
    slots.update({
        "thing": thing, "thing_desc": desc, "things": plural(thing), "color": color,
        "food": food, "a_food": with_article(food), "foods": plural(food),
        "animal": animal,
        "a_adj_animal": with_article(f"{rng.choice(CREATURE_ADJECTIVES)} {animal}"),
        "activity": activity, "activity2": activity2, "activity2_ing": ing_form(activity2),
        "trait": rng.choice(TRAITS), "time": rng.choice(TIMES),
    })
    return slots


# --- stories -----------------------------------------------------------------------------------


def _story(rng: random.Random) -> str:
    slots = _cast(rng)
    plot = rng.choice(PLOTS)
    opening = [rng.choice(OPENINGS), *rng.sample(SETTINGS, rng.choice((1, 2, 2, 3))),
               rng.choice(FRIENDS)]
    paragraphs = [
        " ".join(expand(t, slots, rng) for t in opening),
        expand(rng.choice(plot["problem"]), slots, rng),
        expand(rng.choice(plot["fix"]), slots, rng),
        expand(rng.choice(plot["lesson"]) + " " + rng.choice(ENDINGS), slots, rng),
    ]
    separator = "\n\n" if rng.random() < 0.8 else "\n"
    return separator.join(paragraphs)


def iter_stories(num_stories: int = DEFAULT_NUM_STORIES, seed: int = 0) -> Iterator[str]:
    """Yield ``num_stories`` stories; the first ``k`` are the same for any ``num_stories >= k``.

    Example:
        >>> a = list(iter_stories(3, seed=7))
        >>> a == list(iter_stories(5, seed=7))[:3], a == list(iter_stories(3, seed=8))
        (True, False)
    """
    if isinstance(num_stories, bool) or not isinstance(num_stories, int) or num_stories < 0:
        raise ValueError(f"num_stories must be an integer >= 0, got {num_stories!r}")
    rng = random.Random(seed)
    return (_story(rng) for _ in range(num_stories))


def iter_story_batches(
    num_stories: int = DEFAULT_NUM_STORIES, seed: int = 0, batch_size: int | None = None
) -> Iterator[list[str]]:
    """The stories of ``iter_stories(num_stories, seed)`` in lists of ``batch_size`` (the last
    may be shorter; default ``PARQUET_BATCH``), so that a large corpus streams in bounded memory.

    Example:
        >>> [len(b) for b in iter_story_batches(5, seed=1, batch_size=2)]
        [2, 2, 1]
        >>> sum(iter_story_batches(5, seed=1, batch_size=2), []) == generate_stories(5, seed=1)
        True
    """
    stories = iter_stories(num_stories, seed)  # validates num_stories now, not at the first next()
    size = PARQUET_BATCH if batch_size is None else batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return iter(lambda: list(itertools.islice(stories, size)), [])


def generate_stories(num_stories: int = DEFAULT_NUM_STORIES, seed: int = 0) -> list[str]:
    """The embedded corpus as a list: ``num_stories`` stories generated from ``seed``."""
    return list(iter_stories(num_stories, seed))
