"""Varied sentences shared by the numerical tests: scripts, emoji, numbers, empty, over-long."""

LONG_TEXT = " ".join(
    [
        "The quick brown fox jumps over the lazy dog while the gateway streams embeddings",
        "to every client that asks, batching requests whenever the queue is busy.",
    ]
    * 4
)  # ~100 words
SENTENCES = [
    "",
    "Hi",
    "Hello, world!",
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The stock market fell 3.5% on Tuesday, closing at 12,345.67 points.",
    "What's the weather like in São Paulo today???",
    "Call me at +1 (555) 010-9999 before 10:30 p.m.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le chat dort sur le canapé depuis ce matin.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "I love pizza 🍕🍕 and tacos 🌮!!!",
    "e = mc^2; ∑_{i=1}^{n} i = n(n+1)/2",
    "https://example.com/path?query=1&lang=en#section",
    "def f(x): return x ** 2  # python code",
    "   leading and trailing whitespace   ",
    "UPPERCASE SENTENCE WITH SHOUTING",
    "A cat sits on the mat.",
    "Quarterly revenue grew by twelve percent year over year.",
    "[CLS] literal special tokens [SEP] in text [PAD]",
    LONG_TEXT,
]
