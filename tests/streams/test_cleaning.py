import csv
import re
import unicodedata
from pathlib import Path

import pytest

from streams.cleaning import CARD, EMAIL, PHONE, URL, clean_event, clean_text
from streams.records import Event, Reason, RejectedEvent

DATA = Path("/work/shared/data")
PHRASEBANK = DATA / "financial_phrasebank" / "Sentences_AllAgree.txt"
BANKING77 = DATA / "banking77" / "train.csv"


def _tidy(text: str) -> str:
    """What the cleaner should make of text that has nothing to remove."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


PII = [
    # e-mail
    ("email", "write to jo@example.com please", f"write to {EMAIL} please"),
    ("email_plus_subdomain", "jo.doe+tag@mail.example.co.uk.", f"{EMAIL}."),
    ("email_in_brackets", "(ops-team@corp.io)", f"({EMAIL})"),
    ("email_before_url", "mail admin@www.example.com", f"mail {EMAIL}"),
    # URL
    ("http", "see http://example.com/a?b=1 now", f"see {URL} now"),
    ("https_trailing_dot", "at https://shop.example.org/x.", f"at {URL}."),
    ("ftp", "ftp://files.example.org/pub/x.tar.gz", URL),
    ("www", "visit www.cerner.com .", f"visit {URL} ."),
    ("www_uppercase_in_parens", "(WWW.Example.com/Path)", f"({URL})"),
    ("url_with_credentials", "https://user:pw@host.com/a", URL),
    # card
    ("card_spaces", "card 4111 1111 1111 1111 blocked", f"card {CARD} blocked"),
    ("card_dashes", "4111-1111-1111-1111", CARD),
    ("card_bare", "number 4111111111111111.", f"number {CARD}."),
    ("card_amex", "amex 3782 822463 10005", f"amex {CARD}"),
    ("card_13_digits", "4222222222222", CARD),
    ("card_19_digits", "6011 0009 9013 9424 123", CARD),
    # phone
    ("phone_international", "call +44 20 7946 0958 today", f"call {PHONE} today"),
    ("phone_us_parens", "(555) 123-4567", PHONE),
    ("phone_us_dashes", "555-123-4567", PHONE),
    ("phone_us_dots", "555.123.4567", PHONE),
    ("phone_plus_dashes", "+1-202-555-0173", PHONE),
    ("phone_plus_parens", "+1 (555) 123-4567", PHONE),
    ("phone_trunk_zero", "+44 (0)20 7946 0958", PHONE),
    ("phone_finnish", "tel. +358 9 591 8342 .", f"tel. {PHONE} ."),
    ("phone_bare_10", "call 2025550173 now", f"call {PHONE} now"),
    ("phone_bare_12", "id 442079460958", f"id {PHONE}"),
    ("phone_after_colon", "tel:555-123-4567", f"tel:{PHONE}"),
    ("several", "jo@x.io, 555-123-4567, www.x.io", f"{EMAIL}, {PHONE}, {URL}"),
]

NOT_PII = [
    ("year", "in 2010"),
    ("amount_glued", "EUR131m"),
    ("amount_spaced", "EUR 205.5 mn"),
    ("percent", "5.2 %"),
    ("dollars", "$1,250.00"),
    ("decimal", "1.50"),
    ("iso_date", "2024-03-15"),
    ("slash_date", "15/03/2024"),
    ("dotted_date", "11.01.2008"),
    ("time", "12:30"),
    ("year_range", "2004-2005"),
    ("short_code", "quote 877417 as conference ID"),
    ("business_id", "business ID 1944757-4"),
    ("big_amount", "ISK 400,000,000"),
    ("nine_digits", "123456789"),
    ("thirteen_grouped_in_thousands", "EUR 45,031,513.80"),
    ("plus_percent", "+5.2 %"),
    ("version", "v1.2.3"),
    ("isbn", "ISBN 978-3-16-148410-0"),
    ("comparison", "profit < 5 % and > 3 %"),
    ("at_word", "rosendal at outotec.com"),
    ("placeholder_text", "[EMAIL] [URL] [CARD] [PHONE]"),
]

# Real lines: ordinary numbers must survive (only whitespace is tidied).
REAL_LINES = [
    # financial_phrasebank/Sentences_AllAgree.txt
    "For the last quarter of 2010 , Componenta 's net sales doubled to EUR131m from EUR76m for "
    "the same period a year earlier , while it moved to a zero pre-tax profit from a pre-tax loss "
    "of EUR7m .",
    "In the third quarter of 2010 , net sales increased by 5.2 % to EUR 205.5 mn , and operating "
    "profit by 34.9 % to EUR 23.5 mn .",
    "The share capital of Alma Media Corporation business ID 1944757-4 is EUR 44,767,513.80 and "
    "it is divided into 74,612,523 shares .",
    "Stock Exchange Release 10/3/2011 12:00 Sanoma has published its Annual Report and Financial "
    "Statements for 2010 and its first Corporate Responsibility Report .",
    "China Unicom , NYSE : CHU , HKSE : 0762 , and SHSE : 600050 , the second largest mobile "
    "carrier in the country .",
    "Frost sold shares for $ 19 million at $ 6.06-7 .12 per share , compared with Friday 's high "
    "of $ 11.33 and low of $ 10.14 .",
    "The price of the 10,000 kroon par value bonds was 9663,51 kroons in the primary issue .",
    # banking77/train.csv
    "What can I do if my card still hasn't arrived after 2 weeks?",
    "I still have not received an answer as to why I was charged $1.00 in a transaction?",
    "There is a pending 1£ charge on my statement.  I haven't purchased anything for 1£.  "
    "Why is it on my statement?",
    '"I tried to withdraw $100, all it gave me was $20."',
]

MARKUP = [
    ("tags", "<b>Great</b> <i>app</i>", "Great app"),
    ("link", '<a href="http://x.com" class="c">link</a> text', "link text"),
    ("script", "before<script type='text/javascript'>alert('x<b>')</script>after", "before after"),
    ("style", "a<STYLE>p { color: red }</STYLE>b", "a b"),
    ("comment", "a<!-- hidden -->b", "a b"),
    ("self_closing", "line<br/>next<br>end", "line next end"),
    ("unclosed_script_keeps_text", "<script>open", "open"),
    ("entities", "Fish &amp; Chips &#39;n&#x27; more&nbsp;now", "Fish & Chips 'n' more now"),
    ("escaped_tag_stays_text", "&lt;b&gt;", "<b>"),
    ("entity_is_normalised", "&#xFF21;&#x200B;B", "AB"),
    ("only_markup", "<p> </p><br/>", ""),
    ("fullwidth_tag_is_stripped", "＜b＞bold＜/b＞", "bold"),
]

UNICODE = [
    ("fullwidth", "ＡＢＣ１２３", "ABC123"),
    ("ligature", "ﬁne ﬂow", "fine flow"),
    ("nbsp_and_ideographic_space", "a\u00a0b\u3000c", "a b c"),
    ("ellipsis", "when…", "when..."),
    ("zero_width_and_soft_hyphen", "in\u200bter\u00adnal\ufeff", "internal"),
    ("bidi_controls", "\u202eabc\u202c", "abc"),
    ("c0_c1_controls", "a\x00b\x07c\x1bd\x9fe", "abcde"),
    ("whitespace_controls", "a\tb\nc\rd\x0be\x0cf\x85g\u2028h", "a b c d e f g h"),
    ("runs_and_ends", "  lots \n\n of   space  ", "lots of space"),
    ("emoji_kept", "love it 👍", "love it 👍"),
    ("accents_kept", "très bien", "très bien"),
    ("empty", "", ""),
    ("only_controls", "\u200b\x00 \n", ""),
]


def _table(cases):
    return pytest.mark.parametrize(
        "text, expected", [c[1:] for c in cases], ids=[c[0] for c in cases]
    )


@_table(PII)
def test_pii_is_masked(text, expected):
    assert clean_text(text) == expected


@pytest.mark.parametrize("text", [c[1] for c in NOT_PII], ids=[c[0] for c in NOT_PII])
def test_ordinary_numbers_are_kept(text):
    assert clean_text(text) == text


@pytest.mark.parametrize("line", REAL_LINES)
def test_real_lines_are_kept(line):
    assert clean_text(line) == _tidy(line)


@_table(MARKUP)
def test_markup_is_removed(text, expected):
    assert clean_text(text) == expected


@_table(UNICODE)
def test_unicode_is_normalised(text, expected):
    assert clean_text(text) == expected


# Not "escaped_tag_stays_text": its output is a literal tag, which a second pass strips.
IDEMPOTENT = [c for c in PII + MARKUP + UNICODE if c[0] != "escaped_tag_stays_text"]


@pytest.mark.parametrize("text", [c[1] for c in IDEMPOTENT], ids=[c[0] for c in IDEMPOTENT])
def test_cleaning_is_idempotent(text):
    once = clean_text(text)
    assert clean_text(once) == once


@pytest.mark.parametrize(
    "text",
    ["<script>" * 5000, "<!--" * 5000, "+1 " * 7000, "1" * 20000, "a@" * 10000, "&" * 20000],
    ids=["open_scripts", "open_comments", "plus_runs", "digits", "ats", "ampersands"],
)
@pytest.mark.timeout(5)
def test_adversarial_input_stays_fast(text):
    clean_text(text)  # linear patterns: 20k characters take milliseconds


@pytest.mark.skipif(not BANKING77.exists(), reason="banking77 data not available")
def test_banking77_is_left_alone():
    with BANKING77.open(encoding="utf-8", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    assert [t for t in texts if clean_text(t) != _tidy(t)] == []


@pytest.mark.skipif(not PHRASEBANK.exists(), reason="financial_phrasebank data not available")
def test_phrasebank_only_loses_urls_and_phones():
    lines = [
        line.rsplit("@", 1)[0]
        for line in PHRASEBANK.read_text(encoding="latin-1").splitlines()
    ]
    placeholder = re.compile(r"\[(?:URL|PHONE)\]")
    for line in lines:
        cleaned = clean_text(line)
        if cleaned != _tidy(line):
            assert placeholder.search(cleaned), line


def _event(text: str) -> Event:
    return Event(id="1", task="feedback", text=text, ts=1.0, label="pos", fields={"a": "b"})


def test_clean_event_returns_a_cleaned_copy():
    event = _event("<b>Hi</b>  jo@x.io")
    cleaned = clean_event(event)
    assert cleaned == _event(f"Hi {EMAIL}")
    assert event.text == "<b>Hi</b>  jo@x.io"


@pytest.mark.parametrize("text", ["<p></p>", "\u200b", " &nbsp; "])
def test_clean_event_rejects_empty_result(text):
    with pytest.raises(RejectedEvent) as info:
        clean_event(_event(text))
    assert info.value.reason is Reason.empty_after_cleaning
    assert "'text'" in info.value.message
