"""Sentences for the synthetic world: a seeded generator for training and validation, a fixed test list.

Every sentence comes with its *spoken words* (lowercase, numbers written out the way espeak-ng's en-us voice
reads them, no punctuation), the reference transcript for WER. Words are everyday English that pocketsphinx's
dictionary knows. The held-out test list is written by hand in other templates than the generator's, and the
generator never returns one of its sentences.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["TEST_SENTENCES", "SentenceGenerator", "number_words", "spoken_words"]

NAMES = (
    "Anna", "Ben", "Carla", "David", "Emma", "Frank", "Grace", "Henry", "Julia", "Kevin", "Laura", "Martin",
    "Nina", "Oscar", "Paul", "Rachel", "Simon", "Sarah", "Thomas", "Victor", "Helen", "Peter", "Lucy", "James",
    "Maria", "Daniel", "Alice", "George", "Karen", "Steven", "Rose", "Jack", "Linda", "Robert", "Susan", "Adam",
)  # fmt: skip
PLACES = (
    "the station", "the market", "the library", "the garden", "the office", "the harbor", "the school",
    "the bakery", "the museum", "the hospital", "the river", "the park", "the hotel", "the airport", "the farm",
    "the kitchen", "the bridge", "the beach", "the village", "the theater", "the bank", "the church",
)  # fmt: skip
OBJECTS = (
    "book", "letter", "table", "window", "bottle", "basket", "ticket", "camera", "jacket", "bicycle", "lamp",
    "chair", "clock", "blanket", "guitar", "pencil", "wallet", "garden hose", "suitcase", "map", "radio", "box",
    "cup", "key", "phone", "picture", "apple", "candle", "coat", "boat", "ladder", "shirt", "computer", "bag",
)  # fmt: skip
ADJECTIVES = (
    "red", "blue", "green", "old", "new", "small", "large", "heavy", "bright", "quiet", "clean", "broken",
    "yellow", "warm", "cold", "simple", "strange", "beautiful", "empty", "wooden", "dark", "soft", "little",
)  # fmt: skip
VERBS_PAST = (
    "found", "bought", "carried", "painted", "moved", "opened", "sold", "cleaned", "fixed", "lost", "wanted",
    "brought", "watched", "checked", "dropped", "borrowed", "ordered", "packed", "washed", "repaired",
)  # fmt: skip
VERBS_BASE = (
    "find", "buy", "carry", "paint", "move", "open", "sell", "clean", "fix", "bring", "watch", "check",
    "order", "pack", "wash", "repair", "call", "visit", "help", "meet",
)  # fmt: skip
VERBS_PEOPLE = ("call", "visit", "help", "meet", "thank", "ask", "find", "join")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "March", "April", "June", "July", "August", "October", "November", "December")
TIMES = ("in the morning", "at night", "this evening", "after lunch", "before dinner", "last week", "today")
UNITS = ("miles", "minutes", "dollars", "people", "boxes", "pages", "days", "hours", "years", "houses")
OPENERS = ("Well,", "Yes,", "No,", "Honestly,", "Of course,", "Sadly,", "Luckily,", "Now,", "Listen,")

# Hand-written, never produced by the generator: the fixed held-out test list.
TEST_SENTENCES: tuple[str, ...] = (
    "The sun came out after three days of rain.",
    "Please close the door when you leave the room.",
    "My brother plays the piano every single night.",
    "How far is it from here to the nearest town?",
    "We planted seven trees along the north fence.",
    "She told me a long story about her first job.",
    "The coffee was too hot to drink right away.",
    "Where did you put the keys to the car?",
    "A small dog ran across the street and barked.",
    "They moved to a new house near the sea.",
    "It takes about 45 minutes to walk to the lake.",
    "The teacher wrote the answer on the board.",
    "Can you hear the birds singing outside?",
    "Our train leaves at 8 and arrives at noon.",
    "He forgot his umbrella at the restaurant.",
    "The soup needs a little more salt and pepper.",
    "Why is the sky so dark this afternoon?",
    "I have read that book at least 4 times.",
    "The children built a castle out of sand.",
    "Turn left at the corner and walk two blocks.",
    "The old man fed bread to the ducks.",
    "Did anyone call while I was out?",
    "There are 12 eggs in the white carton.",
    "The wind blew the papers off the desk.",
    "We watched the game with our friends on Sunday.",
    "Her garden is full of roses and tall grass.",
    "What time does the show start tonight?",
    "The price of the ticket went up to 60 dollars.",
    "He speaks slowly so everyone can follow.",
    "The river flooded the fields in the spring.",
    "Bring a warm sweater, it gets cold at night.",
    "Who left the lights on in the kitchen?",
    "The baby slept quietly for most of the trip.",
    "A letter from my aunt arrived this morning.",
    "The city has more than 300 parks and gardens.",
    "Please write your name at the top of the page.",
    "The cat jumped onto the roof of the shed.",
    "Is this the road that leads to the castle?",
    "We need to finish the report before Friday.",
    "The lamp on the desk gives a soft yellow light.",
)

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_NUMBER_RE = re.compile(r"\d{1,3}(?:,\d{3})*")


def number_words(n: int) -> str:
    """``n`` (0..999999) in words as espeak-ng en-us reads its digits: "342" → "three hundred forty two"."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_words handles 0..999999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))


def spoken_words(text: str) -> str:
    """The words of ``text`` as spoken: lowercase, numbers in words, punctuation dropped (the WER reference)."""
    text = _NUMBER_RE.sub(lambda m: " " + number_words(int(m[0].replace(",", ""))) + " ", text)
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).replace("'", "").split())


def _number(rng: np.random.Generator) -> str:
    """Digits as written: mostly small, sometimes with thousands (always with a comma: never read as a year)."""
    kind = rng.integers(3)
    if kind == 0:
        return str(rng.integers(2, 20))
    if kind == 1:
        return str(rng.integers(20, 1000))
    return f"{rng.integers(1, 100) * 1000 + rng.integers(0, 10) * 100:,}"


class SentenceGenerator:
    """Varied English sentences from a seeded generator: statements, questions, numbers, names, short and long.

    ``sentence(rng)`` draws one sentence with the given generator, so the caller decides the randomness.
    """

    def __init__(self) -> None:
        self._test = {spoken_words(s) for s in TEST_SENTENCES}
        self._templates = (
            self._short,
            self._statement,
            self._question,
            self._numbers,
            self._schedule,
            self._long,
            self._dialogue_line,
        )

    def sentence(self, rng: np.random.Generator) -> str:
        """One sentence (with final punctuation); never one of ``TEST_SENTENCES``."""
        while True:
            template = self._templates[rng.integers(len(self._templates))]
            text = template(rng)
            text = text[0].upper() + text[1:]
            if spoken_words(text) not in self._test:
                return text

    # --- templates ---------------------------------------------------------------------------------------------
    @staticmethod
    def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
        return words[rng.integers(len(words))]

    def _noun_phrase(self, rng: np.random.Generator) -> str:
        adjective = self._pick(rng, ADJECTIVES) + " " if rng.random() < 0.6 else ""
        return f"the {adjective}{self._pick(rng, OBJECTS)}"

    def _short(self, rng: np.random.Generator) -> str:
        p = self._pick
        forms = (
            f"{p(rng, NAMES)} {p(rng, VERBS_PAST)} it.",
            f"Thank you, {p(rng, NAMES)}.",
            f"See you on {p(rng, DAYS)}.",
            f"Where is {self._noun_phrase(rng)}?",
            f"{p(rng, OPENERS)} that is {p(rng, ADJECTIVES)}.",
            f"It is {_number(rng)} {p(rng, UNITS)}.",
        )
        return forms[rng.integers(len(forms))]

    def _statement(self, rng: np.random.Generator) -> str:
        p = self._pick
        return f"{p(rng, NAMES)} {p(rng, VERBS_PAST)} {self._noun_phrase(rng)} at {p(rng, PLACES)} {p(rng, TIMES)}."

    def _question(self, rng: np.random.Generator) -> str:
        p = self._pick
        forms = (
            f"did {p(rng, NAMES)} {p(rng, VERBS_BASE)} {self._noun_phrase(rng)}?",
            f"why did you leave {self._noun_phrase(rng)} at {p(rng, PLACES)}?",
            f"can we {p(rng, VERBS_PEOPLE)} {p(rng, NAMES)} on {p(rng, DAYS)}?",
            f"how many {p(rng, UNITS)} are there near {p(rng, PLACES)}?",
            f"is {self._noun_phrase(rng)} still at {p(rng, PLACES)}, {p(rng, NAMES)}?",
        )
        return forms[rng.integers(len(forms))]

    def _numbers(self, rng: np.random.Generator) -> str:
        p = self._pick
        forms = (
            f"{p(rng, NAMES)} counted {_number(rng)} {p(rng, UNITS)} and {_number(rng)} {p(rng, UNITS)}.",
            f"the {p(rng, OBJECTS)} costs {_number(rng)} dollars at {p(rng, PLACES)}.",
            f"we drove {_number(rng)} miles to {p(rng, PLACES)} in {_number(rng)} hours.",
            f"room {_number(rng)} is on floor {rng.integers(2, 20)}.",
        )
        return forms[rng.integers(len(forms))]

    def _schedule(self, rng: np.random.Generator) -> str:
        p = self._pick
        return (
            f"on {p(rng, DAYS)}, {p(rng, MONTHS)} {rng.integers(2, 29)}, {p(rng, NAMES)} will "
            f"{p(rng, VERBS_PEOPLE)} {p(rng, NAMES)} at {p(rng, PLACES)}."
        )

    def _long(self, rng: np.random.Generator) -> str:
        p = self._pick
        return (
            f"{p(rng, OPENERS)} {p(rng, NAMES)} {p(rng, VERBS_PAST)} "
            f"{self._noun_phrase(rng)} {p(rng, TIMES)}, and then {p(rng, NAMES)} {p(rng, VERBS_PAST)} "
            f"{self._noun_phrase(rng)} near {p(rng, PLACES)} because it was {p(rng, ADJECTIVES)}."
        )

    def _dialogue_line(self, rng: np.random.Generator) -> str:
        p = self._pick
        forms = (
            f"{p(rng, OPENERS)} {p(rng, NAMES)}, I think {self._noun_phrase(rng)} is at {p(rng, PLACES)}.",
            f"{p(rng, NAMES)}, please {p(rng, VERBS_BASE)} {self._noun_phrase(rng)} before {p(rng, DAYS)}.",
            f"I never {p(rng, VERBS_PAST)} {self._noun_phrase(rng)}, {p(rng, NAMES)} did!",
        )
        return forms[rng.integers(len(forms))]
