"""Built-in contrastive pairs and a small sentiment lexicon for scoring generations.

:func:`sentiment_pairs` returns ``(positive, negative)`` prompts that differ only
in their sentiment-bearing words (same template, so the difference of activations
at the last token isolates sentiment). :func:`sentiment_score` scores a text with
the lexicon: ``(n_pos - n_neg) / n_words`` over lower-cased word tokens, with a
simple negation rule (a sentiment word within two words after ``not``/``never``/
``no``/``n't`` counts with the opposite sign).
"""

from __future__ import annotations

import re

# (template, positive fillers, negative fillers): each filler pair yields one contrastive pair.
_TEMPLATES = [
    ("I watched the movie last night and it was {}", "wonderful", "terrible"),
    ("The food at this restaurant is {}", "delicious", "disgusting"),
    ("My day at work today was {}", "great", "awful"),
    ("The hotel staff were {}", "friendly", "rude"),
    ("I feel {} about the future", "hopeful", "hopeless"),
    ("This new phone is {}", "excellent", "useless"),
    ("The concert was {}", "amazing", "horrible"),
    ("Our vacation turned out to be {}", "fantastic", "miserable"),
    ("The teacher said my essay was {}", "brilliant", "poor"),
    ("Honestly, the service here is {}", "superb", "dreadful"),
    ("The weather this weekend was {}", "lovely", "nasty"),
    ("I think this book is {}", "beautiful", "boring"),
    ("Meeting my neighbours was {}", "pleasant", "unpleasant"),
    ("The party last night was {}", "fun", "dull"),
    ("Her performance on stage was {}", "outstanding", "disappointing"),
    ("The customer support team was {}", "helpful", "unhelpful"),
    ("I am so {} with my purchase", "happy", "unhappy"),
    ("The ending of the story was {}", "delightful", "depressing"),
    ("Working with him has been {}", "wonderful", "painful"),
    ("The new update makes the app {}", "better", "worse"),
    ("My experience with this company was {}", "positive", "negative"),
    ("The garden looks {} this spring", "gorgeous", "ugly"),
    ("I would describe the trip as {}", "joyful", "stressful"),
    ("Today I feel {}", "cheerful", "sad"),
    ("The result of the game made me {}", "glad", "angry"),
    ("The coffee this morning tasted {}", "perfect", "bitter"),
    ("Everyone agreed the plan was {}", "smart", "stupid"),
    ("The kids thought the show was {}", "awesome", "awful"),
    ("Living in this city is {}", "wonderful", "horrible"),
    ("The news this morning was {}", "good", "bad"),
    ("I love how {} this place is", "charming", "filthy"),
    ("The review called the film {}", "a masterpiece", "a disaster"),
]


def sentiment_pairs() -> list[tuple[str, str]]:
    """Contrastive ``(positive, negative)`` sentiment prompts (32 pairs, same template within a pair)."""
    return [(t.format(p) + ".", t.format(n) + ".") for t, p, n in _TEMPLATES]


#: Neutral openings for steered generation (no sentiment word in them).
NEUTRAL_PROMPTS = [
    "I went to the store today and",
    "My thoughts on the new movie:",
    "Yesterday my friend told me that",
    "The weather this afternoon",
    "Here is what I think about my job:",
    "When I opened the letter, I",
    "The meeting this morning was",
    "Let me tell you about my weekend.",
    "This morning, on the way to school,",
    "The email from my manager said",
    "After dinner we decided to",
    "Our new neighbours are",
    "The book I am reading right now is",
    "When the train finally arrived,",
    "My brother called me last night and",
    "The city where I live is",
]

POSITIVE_WORDS = frozenset(
    """
    good great excellent amazing awesome wonderful fantastic superb outstanding brilliant perfect lovely
    beautiful gorgeous delightful delicious pleasant nice happy happier happiest glad joy joyful joyous
    cheerful delighted pleased love loved loves loving lovable enjoy enjoyed enjoying enjoyable fun funny
    exciting excited thrilled grateful thankful thanks hopeful optimistic positive best better win won
    winning success successful helpful friendly warm charming sweet calm peaceful relaxed relaxing
    comfortable cozy favorite favourite fabulous terrific marvelous marvellous incredible impressive
    remarkable magnificent splendid glorious blessed lucky proud satisfied satisfying smile smiled smiling
    laugh laughed laughing celebrate celebrated celebration beloved admire admired inspiring inspired
    refreshing bright sunny cheerful heartwarming wow yay enthusiastic recommend recommended praise
    masterpiece gem treasure paradise bliss blissful ecstatic elated wonderfully beautifully perfectly
    nicely happily gladly safe healthy strong brave generous gentle clever smart talented excellent
    welcome welcoming appreciate appreciated delight hope hopes hoping fortunate wonderful congratulations
    amazed eager rewarding thriving success succeed succeeded benefit beneficial valuable glow shine
    """.split()
)

NEGATIVE_WORDS = frozenset(
    """
    bad terrible awful horrible horrendous dreadful poor worse worst disgusting gross nasty ugly boring
    dull sad sadly sadness unhappy miserable depressed depressing depression angry anger furious mad annoyed
    annoying irritated frustrated frustrating upset hate hated hates hating dislike disliked disappointing
    disappointed disappointment useless worthless pathetic stupid dumb rude cruel hostile hurt hurts
    hurting pain painful suffer suffering suffered cry cried crying tears lonely alone afraid scared fear
    fearful anxious anxiety worried worry worrying stress stressful stressed tired exhausted sick ill
    broken broke fail failed failure failing lose lost losing loss problem problems trouble wrong
    negative hopeless helpless regret regretted sorry unfortunately unfortunate disaster disastrous tragic
    tragedy grim bleak gloomy dark awful ruined ruin damage damaged dirty filthy smelly rotten bitter
    unpleasant uncomfortable unfair ridiculous waste wasted mess messy chaos nightmare evil hell
    horrible dead death die died dying kill killed grief grieving sorrow shame ashamed embarrassed
    embarrassing guilty jealous nervous dread awful terribly horribly badly lie lies lied liar cruelty
    violence violent abuse abused war crime criminal murder prison steal stole threat threatened danger
    dangerous attack attacked enemy victim poverty disease curse cursed sin slave slavery despair
    horror terrifying terrified disgusted hurtful toxic worthless weak ugly crisis panic fake
    """.split()
)

_NEGATORS = frozenset({"not", "never", "no", "nothing", "hardly", "without", "isn't", "wasn't", "don't",
                       "doesn't", "didn't", "can't", "couldn't", "won't", "wouldn't", "aren't", "weren't"})
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (keeps contractions like ``didn't``)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


#: Multi-word expressions counted before single words (their words are then skipped).
POSITIVE_PHRASES = ("looking forward", "look forward", "can't wait", "thank you", "well done")
NEGATIVE_PHRASES = ("far cry", "fed up", "let down", "give up", "gave up")


def sentiment_counts(text: str) -> tuple[int, int, int]:
    """``(n_positive, n_negative, n_words)`` with multi-word phrases and the two-word negation flip."""
    ws = words(text)
    pos = neg = 0
    joined = " ".join(ws)
    for phrase in POSITIVE_PHRASES + NEGATIVE_PHRASES:
        k = len(re.findall(r"\b" + re.escape(phrase) + r"\b", joined))
        if phrase in POSITIVE_PHRASES:
            pos += k
        else:
            neg += k
        joined = re.sub(r"\b" + re.escape(phrase) + r"\b", " ", joined)
    n_words = len(ws)
    ws = joined.split()
    for i, w in enumerate(ws):
        sign = 1 if w in POSITIVE_WORDS else -1 if w in NEGATIVE_WORDS else 0
        if sign == 0:
            continue
        if any(x in _NEGATORS or x.endswith("n't") for x in ws[max(0, i - 2) : i]):
            sign = -sign
        if sign > 0:
            pos += 1
        else:
            neg += 1
    return pos, neg, n_words


def sentiment_score(text: str) -> float:
    """Lexicon sentiment in [-1, 1]: ``(n_pos - n_neg) / max(n_words, 1)``."""
    p, n, w = sentiment_counts(text)
    return (p - n) / max(w, 1)
