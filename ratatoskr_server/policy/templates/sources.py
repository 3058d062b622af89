"""Where a model's chat template comes from, read once per file and cached.

In this order: an explicit ``[templates.sources]`` entry (a model name or glob mapped to a built-in
family, a ``.jinja`` file, a ``tokenizer_config.json``, or a ``.gguf`` whose metadata holds the
template); the files beside a local model (its folder's ``chat_template.jinja`` or
``tokenizer_config.json``, else its ``.gguf``); the built-in family the name suggests; otherwise a
clear FAILED_PRECONDITION naming the ways to give one.  A ``tokenizer.json`` beside a template file
is the model's vocabulary, so its prompts are counted, not estimated.  Files are read in a worker
thread (a GGUF's metadata sits in front of hundreds of megabytes of weights) and parsed once per
modification.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ratatoskr_client.errors import FailedPrecondition
from ratatoskr_server.config import TemplateSettings
from ratatoskr_server.local.gguf_vocab import tokenizer_from_gguf
from ratatoskr_server.policy.templates.builtins import BUILTINS, FAMILY_TEMPLATES, detect

#: Special tokens passed to templates, as transformers passes them from the tokenizer's config.
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
_GGUF_TOKEN_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


@dataclass(frozen=True, slots=True)
class TemplateSource:
    """A template's text(s) and its model's special tokens, as read from one file."""

    name: str
    #: "default" and any named variants ("tool_use" …).
    variants: Mapping[str, str]
    special_tokens: Mapping[str, str]
    #: The model's own vocabulary, when it can be reproduced exactly: prompts are then counted, not estimated.
    tokenizer: Tokenizer | None = None
    #: The window the model was trained for, when the file says (a GGUF's ``<arch>.context_length``); 0: unknown.
    context_length: int = 0
    #: Where the model's turn ends, when the source says so (the built-ins); otherwise
    #: ``completion.end_of_turn`` derives it from the special tokens and the template text.
    turn_end: tuple[str, ...] | None = None
    #: Whether the model's tokenizer puts BOS before a prompt itself (``add_bos_token``); unknown counts as yes.
    adds_bos: bool = True

    def pick(self, with_tools: bool) -> tuple[str, str]:
        """(variant name, text): ``tool_use`` when tools are passed and it exists, as transformers picks."""
        if with_tools and "tool_use" in self.variants:
            return "tool_use", self.variants["tool_use"]
        if "default" in self.variants:
            return "default", self.variants["default"]
        if len(self.variants) == 1:
            return next(iter(self.variants.items()))
        raise FailedPrecondition(
            f"chat template '{self.name}' has named variants ({', '.join(sorted(self.variants))}) and no default"
        )


#: The built-in families as sources: one object each, so their compiled templates are kept.
BUILTIN_SOURCES: dict[str, TemplateSource] = {
    name: TemplateSource(f"builtin:{name}", {"default": b.template}, dict(b.special_tokens), turn_end=b.end_of_turn)
    for name, b in BUILTINS.items()
}


def _token_text(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return value if isinstance(value, str) else ""


def _variants(raw: Any, where: str) -> dict[str, str]:
    if isinstance(raw, str):
        return {"default": raw}
    if isinstance(raw, list):
        named = {str(v.get("name")): str(v.get("template")) for v in raw if isinstance(v, dict) and v.get("template")}
        if named:
            return named
    raise FailedPrecondition(f"{where} has no chat_template")


#: The Hugging Face vocabulary file that sits beside a tokenizer_config.json or chat_template.jinja.
TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: transformers' folder of named template variants (``tool_use.jinja`` …) beside chat_template.jinja.
MORE_TEMPLATES_DIR = "additional_chat_templates"


def read_tokenizer_file(folder: Path) -> Tokenizer | None:
    """``tokenizer.json`` in ``folder`` for counting: whole texts, so its padding and truncation
    (fixed-width ones are common) are switched off.  None when there is none."""
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        return None
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises plain Exception for a malformed file
        raise FailedPrecondition(f"cannot read the vocabulary in {path}: {err}") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _tokenizer_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FailedPrecondition(f"cannot read the chat template in {path}: {err}") from None
    if not isinstance(data, dict):
        raise FailedPrecondition(f"{path} is not a tokenizer_config.json object")
    return data


def _special_tokens(data: Mapping[str, Any]) -> dict[str, str]:
    return {name: _token_text(data.get(name)) for name in SPECIAL_TOKENS if data.get(name)}


def read_tokenizer_config(path: Path) -> TemplateSource:
    data = _tokenizer_config(path)
    variants = _variants(data.get("chat_template"), str(path))
    adds_bos = data.get("add_bos_token") is not False
    tokenizer = read_tokenizer_file(path.parent)
    return TemplateSource(path.name, variants, _special_tokens(data), tokenizer, adds_bos=adds_bos)


def read_folder(folder: Path) -> TemplateSource | None:
    """The template beside a local model, as transformers saves one: ``chat_template.jinja`` (and
    named variants in ``additional_chat_templates/``) or the ``chat_template`` of
    ``tokenizer_config.json``, with that file's special tokens and ``tokenizer.json``; else the
    metadata of the folder's only ``.gguf``.  None when the folder holds no template."""
    config_path = folder / TOKENIZER_CONFIG_FILE
    config = _tokenizer_config(config_path) if config_path.is_file() else {}
    jinja = folder / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        try:
            variants = {"default": jinja.read_text(encoding="utf-8")}
            more = folder / MORE_TEMPLATES_DIR
            if more.is_dir():
                variants.update({p.stem: p.read_text(encoding="utf-8") for p in sorted(more.glob("*.jinja"))})
        except OSError as err:
            raise FailedPrecondition(f"cannot read the chat template in {folder}: {err.strerror}") from None
        adds_bos = config.get("add_bos_token") is not False
        tokenizer = read_tokenizer_file(folder)
        return TemplateSource(jinja.name, variants, _special_tokens(config), tokenizer, adds_bos=adds_bos)
    if config.get("chat_template"):
        return read_tokenizer_config(config_path)
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return read_gguf(ggufs[0])
    return None


def read_gguf(path: Path) -> TemplateSource:
    """The template and special tokens from a GGUF's metadata (``tokenizer.chat_template[.NAME]``)."""
    import gguf  # imported on first use: it is only needed for GGUF templates

    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as err:
        raise FailedPrecondition(f"cannot read GGUF metadata from {path}: {err}") from None

    def text(key: str) -> str | None:
        entry = reader.fields.get(key)
        return None if entry is None else bytes(entry.parts[entry.data[0]]).decode("utf-8")

    variants: dict[str, str] = {}
    for key in reader.fields:
        if key == "tokenizer.chat_template":
            variants["default"] = text(key) or ""
        elif key.startswith("tokenizer.chat_template."):
            variants[key.removeprefix("tokenizer.chat_template.")] = text(key) or ""
    if not variants:
        raise FailedPrecondition(f"{path} holds no chat template (no tokenizer.chat_template in its metadata)")
    tokens: dict[str, str] = {}
    vocabulary = reader.fields.get("tokenizer.ggml.tokens")
    for name, key in _GGUF_TOKEN_IDS.items():
        entry = reader.fields.get(key)
        if entry is None or vocabulary is None:
            continue
        token_id = int(entry.parts[entry.data[0]][0])
        if 0 <= token_id < len(vocabulary.data):
            tokens[name] = bytes(vocabulary.parts[vocabulary.data[token_id]]).decode("utf-8", "replace")
    architecture = text("general.architecture")
    window = reader.fields.get(f"{architecture}.context_length") if architecture else None
    context_length = int(window.parts[window.data[0]][0]) if window is not None else 0
    add_bos = reader.fields.get("tokenizer.ggml.add_bos_token")
    adds_bos = add_bos is None or bool(add_bos.parts[add_bos.data[0]][0])
    return TemplateSource(
        path.name, variants, tokens, tokenizer_from_gguf(reader), context_length=context_length, adds_bos=adds_bos
    )


def read_source(path: Path) -> TemplateSource:
    if path.suffix == ".gguf":
        return read_gguf(path)
    if path.suffix == ".json":
        return read_tokenizer_config(path)
    try:
        return TemplateSource(path.name, {"default": path.read_text(encoding="utf-8")}, {})
    except OSError as err:
        raise FailedPrecondition(f"cannot read the chat template file {path}: {err.strerror}") from None


#: Template files read, by (path, modification time): shared by every TemplateSources, so a reload
#: (which builds a new one) does not read a multi-gigabyte GGUF's metadata again.
_CACHE: OrderedDict[tuple[Path, int], TemplateSource] = OrderedDict()
_CACHE_MAX = 64
_CACHE_LOCK = threading.Lock()


#: The folder of the local model a name stands for (``local/NAME`` or ``NAME``), or None.
LocalFolder = Callable[[str], Path | None]
#: The registry's tokenizer family for a model name ("" when it has no record).
Family = Callable[[str], str]

#: Files whose change means a folder's template must be read again.
_FOLDER_FILES = (CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, MORE_TEMPLATES_DIR)


def _folder_key(folder: Path) -> tuple[Path, int]:
    """A cache key that changes when any template file in ``folder`` (or the folder) changes."""
    stamps = [folder.stat().st_mtime_ns]
    for name in _FOLDER_FILES:
        try:
            stamps.append((folder / name).stat().st_mtime_ns)
        except OSError:
            stamps.append(0)
    return folder, hash(tuple(stamps))


class TemplateSources:
    def __init__(
        self, settings: TemplateSettings, local_folder: LocalFolder | None = None, family: Family | None = None
    ) -> None:
        self.settings = settings
        self.local_folder = local_folder
        self.family = family

    def configured(self, *names: str) -> str | None:
        for pattern, where in self.settings.sources.items():
            if any(name and fnmatch.fnmatchcase(name, pattern) for name in names):
                return where
        return None

    def _load(self, where: str) -> TemplateSource:
        path = Path(where).expanduser()
        try:
            key = (path, path.stat().st_mtime_ns)
        except OSError as err:
            raise FailedPrecondition(f"chat template file {path} is not readable: {err.strerror}") from None
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
            if cached is not None:
                _CACHE.move_to_end(key)
                return cached
        source = read_source(path)
        with _CACHE_LOCK:
            _CACHE[key] = source
            while len(_CACHE) > _CACHE_MAX:
                _CACHE.popitem(last=False)
        return source

    def _beside_local_model(self, names: tuple[str, ...]) -> TemplateSource | None:
        """The template in the folder of the local model one of ``names`` stands for, if any."""
        if self.local_folder is None:
            return None
        for name in names:
            folder = self.local_folder(name) if name else None
            if folder is None or not folder.is_dir():
                continue
            key = _folder_key(folder)
            with _CACHE_LOCK:
                cached = _CACHE.get(key)
            if cached is None:
                cached = read_folder(folder)
                if cached is None:
                    continue
                with _CACHE_LOCK:
                    _CACHE[key] = cached
                    while len(_CACHE) > _CACHE_MAX:
                        _CACHE.popitem(last=False)
            return cached
        return None

    async def lookup(self, *names: str) -> TemplateSource | None:
        """The template source for a model known by any of ``names`` (as asked, and as resolved):
        the configured one, else the one beside its local model, else the built-in family the name
        suggests; None when nothing is known."""
        where = self.configured(*names)
        if where is not None:
            if where in BUILTIN_SOURCES:
                return BUILTIN_SOURCES[where]
            return await asyncio.to_thread(self._load, where)
        beside = await asyncio.to_thread(self._beside_local_model, names)
        if beside is not None:
            return beside
        if self.family is not None:  # the registry knows the model (llama3:8b is Llama 3 whatever its name)
            for name in names:
                builtin = FAMILY_TEMPLATES.get(self.family(name)) if name else None
                if builtin is not None:
                    return BUILTIN_SOURCES[builtin]
        for name in names:
            family = detect(name)
            if family is not None:
                return BUILTIN_SOURCES[family]
        return None

    async def find(self, *names: str) -> TemplateSource:
        """As :meth:`lookup`, but a model with no known template is a FAILED_PRECONDITION saying how to give one."""
        source = await self.lookup(*names)
        if source is not None:
            return source
        raise FailedPrecondition(
            f"no chat template is known for model '{names[0]}': map it (or a glob) in [templates.sources] to a "
            f"built-in ({', '.join(sorted(BUILTINS))}), a .jinja file, a tokenizer_config.json or a .gguf, or put a "
            f"{CHAT_TEMPLATE_FILE} or {TOKENIZER_CONFIG_FILE} in a local model's folder"
        )
