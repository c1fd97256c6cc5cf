"""Text cleaning for incoming events: normalise, de-HTML, mask PII, tidy spaces.

>>> clean_text("<p>Mail me at jo@example.com &amp; call +1-202-555-0173</p>")
'Mail me at [EMAIL] & call [PHONE]'
>>> clean_text("Net sales rose 5.2 % to EUR 205.5 mn in 2010 .")
'Net sales rose 5.2 % to EUR 205.5 mn in 2010 .'

The patterns are deliberately conservative about numbers: amounts, years,
dates and percentages in financial news must survive untouched.
"""

import html
import re
import unicodedata

from streams.records import Event, Reason, RejectedEvent

__all__ = [
    "CARD",
    "EMAIL",
    "PHONE",
    "URL",
    "clean_event",
    "clean_text",
]

EMAIL = "[EMAIL]"
URL = "[URL]"
CARD = "[CARD]"
PHONE = "[PHONE]"

# Control, format and surrogate code points are dropped; whitespace is not.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
_OTHER_WHITESPACE = re.compile(r"[^\S ]")  # every whitespace character except ' '
_WHITESPACE_RUN = re.compile(r"\s+")

# Script and style bodies are code, not text. Tags must start with a letter, '/'
# or '!' so that "profit < 5 % and > 3 %" is left alone.
# The bodies stop at the next opening tag so that unclosed tags stay linear.
_SCRIPT_STYLE = re.compile(
    r"<(script|style)\b[^<>]*>(?:(?!<\1\b).)*?</\1\s*>", re.IGNORECASE | re.DOTALL
)
_TAG = re.compile(r"<!--(?:(?!<!--).)*?-->|<(?:/?[A-Za-z][^<>]*|![^<>]*)>", re.DOTALL)

_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}\b")
# The last character may not be trailing punctuation: "see www.x.com." keeps its '.'.
_URL = re.compile(r"""(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>"']*[^\s<>"'.,;:!?)]""", re.IGNORECASE)

# Digits not glued to a word, another digit or a decimal part on either side.
_LEFT = r"(?<![\w.,/-])"
_RIGHT = r"(?![\w/]|[.,-]\d)"
# 13-19 digits, bare or in groups of 3-6 with one kind of separator.
_CARD = re.compile(
    _LEFT + r"(?:\d{13,19}|\d{4}(?P<sep>[ -])\d{3,6}(?:(?P=sep)\d{3,6}){1,3})" + _RIGHT
)
_PHONE = re.compile(
    _LEFT
    + r"(?:"
    # international: +CC then 2-5 groups, e.g. +44 20 7946 0958, +1-202-555-0173
    + r"\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,5}"
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567
    + r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
    + r"|\d{3}(?P<sep>[.-])\d{3}(?P=sep)\d{4}"
    # bare runs of 10-12 digits
    + r"|\d{10,12}"
    + r")"
    + _RIGHT
)
# Digit counts are checked after matching; E.164 numbers have at most 15 digits.
_PHONE_MIN_DIGITS, _PHONE_MAX_DIGITS = 8, 15
_CARD_MIN_DIGITS, _CARD_MAX_DIGITS = 13, 19


def _digit_count(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


def _mask_card(match: re.Match) -> str:
    n = _digit_count(match.group())
    return CARD if _CARD_MIN_DIGITS <= n <= _CARD_MAX_DIGITS else match.group()


def _mask_phone(match: re.Match) -> str:
    n = _digit_count(match.group())
    return PHONE if _PHONE_MIN_DIGITS <= n <= _PHONE_MAX_DIGITS else match.group()


def _normalise_chars(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = _OTHER_WHITESPACE.sub(" ", text)
    if text.isprintable():  # fast path: nothing left to drop
        return text
    kept = "".join(ch for ch in text if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    # A dropped character can sit between a letter and its combining mark ("e\x00\u0301"):
    # compose again. NFKC never produces Cc/Cf/Cs, so nothing new to drop.
    return unicodedata.normalize("NFKC", kept) if len(kept) != len(text) else kept


def _strip_html(text: str) -> str:
    if "<" in text:
        text = _SCRIPT_STYLE.sub(" ", text)
        text = _TAG.sub(" ", text)
    if "&" in text:
        unescaped = html.unescape(text)
        if unescaped != text:
            # Entities can encode anything (&#xFF21; or &#x200B;): normalise again.
            text = _normalise_chars(unescaped)
    return text


# Cheap C-level scans that rule a pattern out before its (much slower) substitution runs:
# most texts have no URL and no digit at all.
_URL_HINT = re.compile(r"://|www\.", re.IGNORECASE)
_DIGIT = re.compile(r"\d")


def _mask_pii(text: str) -> str:
    if "@" in text:
        text = _EMAIL.sub(EMAIL, text)
    if _URL_HINT.search(text):
        text = _URL.sub(URL, text)
    if _DIGIT.search(text):
        text = _CARD.sub(_mask_card, text)
        text = _PHONE.sub(_mask_phone, text)
    return text


def clean_text(text: str) -> str:
    """Return ``text`` cleaned for the model; ``""`` when nothing is left.

    Steps, in order: NFKC and control/format characters; HTML tags and
    entities; e-mails, URLs, card numbers and phone numbers replaced by
    :data:`EMAIL`, :data:`URL`, :data:`CARD`, :data:`PHONE`; whitespace runs
    collapsed to one space.

    >>> clean_text("ＡＢＣ  \\u200bﬁne\\n\\tcard 4111-1111-1111-1111")
    'ABC fine card [CARD]'
    """
    text = _normalise_chars(text)
    text = _strip_html(text)
    text = _mask_pii(text)
    return _WHITESPACE_RUN.sub(" ", text).strip()


def clean_event(event: Event) -> Event:
    """Return a copy of ``event`` with cleaned text.

    Raises :class:`RejectedEvent` (``empty_after_cleaning``) when nothing is left.
    """
    text = clean_text(event.text)
    if not text:
        raise RejectedEvent(Reason.empty_after_cleaning, "field 'text' is empty after cleaning")
    # Field by field rather than dataclasses.replace (a third of this function's cost per
    # event); tests/streams/test_cleaning_fast_paths.py checks that no field is left behind.
    return Event(id=event.id, task=event.task, text=text, ts=event.ts, label=event.label,
                 fields=event.fields)
