"""Reading a GGUF's tokenizer fields (``gguf.GGUFReader`` keeps each as parts and indices)."""

from __future__ import annotations

from typing import Any

#: llama.cpp's token types (``tokenizer.ggml.token_type``).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
#: The types llama.cpp matches whole in the text before tokenizing the rest (with ``special=True``).
MATCHED_WHOLE = frozenset({UNKNOWN, CONTROL, USER_DEFINED})


def strings(reader: Any, key: str) -> list[str]:
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def string(reader: Any, key: str) -> str:
    field = reader.fields.get(key)
    return "" if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")


def numbers(reader: Any, key: str) -> list[float]:
    field = reader.fields.get(key)
    return [] if field is None else [float(field.parts[i][0]) for i in field.data]


def integer(reader: Any, key: str, default: int) -> int:
    field = reader.fields.get(key)
    return default if field is None else int(field.parts[field.data[0]][0])


def flag(reader: Any, key: str, default: bool) -> bool:
    field = reader.fields.get(key)
    return default if field is None else bool(field.parts[field.data[0]][0])
