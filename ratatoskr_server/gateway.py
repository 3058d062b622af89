"""The façade every way in calls: the daemon's servicers and the embedded ``auto()`` alike.

It validates requests against the configured limits, picks the model and
strategy, and leaves blocking work to the local pool's batchers, which run
it in one bounded executor so the event loop never stalls.  It speaks domain
types only; protobuf stays at the RPC edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from ratatoskr_client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RatatoskrError,
    Unavailable,
    Unimplemented,
)
from ratatoskr_client.types import (
    ChatEvent,
    ChatOptions,
    ChatResult,
    ClassifyResult,
    CountTokensResult,
    Done,
    EmbedResult,
    GenerateResult,
    LabelScore,
    LoadedModel,
    Message,
    ModelInfo,
    ModelMetadata,
    NliPrediction,
    NliResult,
    ParameterAvailability,
    Pricing,
    Task,
    Timing,
    TokenizeResult,
    Usage,
    UsageEvent,
)
from ratatoskr_server.config import Settings
from ratatoskr_server.local.cross_encoder import entailment_index, label_index, softmax
from ratatoskr_server.local.manifest import ModelManifest
from ratatoskr_server.local.model import Inference, LocalModel
from ratatoskr_server.local.pool import LOCAL_PREFIX, LocalModelPool
from ratatoskr_server.policy.params import ParameterGuard
from ratatoskr_server.policy.presets import apply_preset
from ratatoskr_server.providers.base import Capability, Provider
from ratatoskr_server.registry import ModelRecord, ModelRegistry, ParameterSpec, RefreshReport
from ratatoskr_server.registry.cache import load_live
from ratatoskr_server.registry.cache import update as update_registry
from ratatoskr_server.routing.router import Router

log = logging.getLogger(__name__)

DEFAULT_HYPOTHESIS_TEMPLATE = "This example is {}."
#: The embedding strategy compares the text with a sentence about each label, not the bare label:
#: on the labelled set in tests/test_nli_classify.py (16 texts, 4 topics) MiniLM ranks the right
#: topic first for 16 with this template, 13 with bare labels and 14 with "This example is {}.".
DEFAULT_EMBEDDING_TEMPLATE = "This text is about {}."
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
#: Embedding-based zero-shot turns cosines into a distribution with softmax(cos / T); cosines of
#: unrelated MiniLM sentences sit within a few hundredths, so a small T keeps the ranking legible.
EMBEDDING_SOFTMAX_TEMPERATURE = 0.05


def availability_of(spec: ParameterSpec) -> ParameterAvailability:
    return ParameterAvailability(spec.availability, spec.min, spec.max, spec.default, spec.value or "")


def pricing_of(record: ModelRecord | None) -> Pricing | None:
    if record is None or record.pricing is None:
        return None
    p = record.pricing
    return Pricing(
        float(p.input_per_million),
        float(p.output_per_million),
        float(p.cached_input_per_million) if p.cached_input_per_million is not None else 0.0,
    )


AnswerT = TypeVar("AnswerT", ChatResult, GenerateResult)


def _stamped(result: AnswerT, provider: Provider, model: str, arrived: float) -> AnswerT:
    """A unary answer with who answered and how long the whole call took."""
    elapsed = (time.perf_counter() - arrived) * 1000
    timing = Timing(
        inference_ms=elapsed,
        total_ms=elapsed,
        input_tokens=result.usage.prompt_tokens,
        output_tokens=result.usage.completion_tokens,
    )
    return replace(result, timing=timing, provider=provider.name, model=result.model or model)


def _timing(arrived: float, inference: Inference, extra_inference_ms: float = 0.0) -> Timing:
    return Timing(
        queue_ms=inference.queue_ms,
        tokenization_ms=inference.tokenization_ms,
        inference_ms=inference.inference_ms + extra_inference_ms,
        total_ms=(time.perf_counter() - arrived) * 1000,
        input_tokens=sum(inference.tokens),
    )


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(
            max_workers=settings.local.inference_workers, thread_name_prefix="ratatoskr-infer"
        )
        self._loader = ThreadPoolExecutor(max_workers=settings.local.load_workers, thread_name_prefix="ratatoskr-load")
        self.pool = LocalModelPool(settings, self._executor, self._loader)
        self.router = Router(settings)
        self.registry = ModelRegistry.embedded()
        load_live(self.registry, settings.registry.cache_file.expanduser())
        self.params = ParameterGuard(settings)
        #: Routers replaced by a reload; their connections may still carry streams, so they close at shutdown.
        self._retired: list[Router] = []
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Load the models named in ``local.preload``; the daemon reports SERVING after this."""
        self.pool.start()
        if self.settings.registry.refresh_at_start:
            # In the background: a slow or unreachable catalogue must not hold SERVING back.
            task = asyncio.get_running_loop().create_task(self._refresh_in_background())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        for name in self.settings.local.preload:
            await self.load_model(name)

    async def _refresh_in_background(self) -> None:
        try:
            report = await self.refresh_registry()
        except Exception:
            log.exception("registry refresh at start failed; the shipped catalogue stays in use")
            return
        for source in report.sources:
            if not source.ok:
                log.warning("registry source failed at start", extra={"source": source.name, "error": source.error})

    async def refresh_registry(self) -> RefreshReport:
        """Live metadata from OpenRouter and every enabled Ollama provider; failures keep the old data."""
        return await update_registry(self.registry, self.settings)

    def apply_settings(self, settings: Settings) -> None:
        """Take reloadable settings (limits, declarations, budget); the executor size needs a restart."""
        routing_changed = (settings.providers, settings.aliases, settings.http) != (
            self.settings.providers,
            self.settings.aliases,
            self.settings.http,
        )
        self.settings = settings
        self.pool.update_settings(settings)
        self.params.settings = settings
        load_live(self.registry, settings.registry.cache_file.expanduser())
        if routing_changed:
            self._retired.append(self.router)
            self.router = Router(settings)

    # -- helpers -----------------------------------------------------------------------------------
    @asynccontextmanager
    async def _model(self, name: str, tasks: tuple[Task, ...], timeout: float | None) -> AsyncIterator[LocalModel]:
        """Lease ``name`` (or the local model its alias names), check it can do one of ``tasks``, and
        bound the whole call by ``timeout``."""
        try:
            async with asyncio.timeout(timeout), self.pool.lease(self.router.target(name)) as model:
                if model.task not in tasks:
                    wanted = " or ".join(t.value for t in tasks)
                    raise FailedPrecondition(
                        f"model '{model.name}' serves the {model.task.value} task; this call needs one that "
                        f"serves {wanted}"
                    )
                yield model
        except TimeoutError:
            raise DeadlineExceeded(f"the request's deadline passed before model '{name}' answered") from None

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return time.monotonic() + timeout if timeout is not None else None

    def _check_texts(self, texts: Sequence[str], field: str = "inputs", item: str = "input") -> None:
        limits = self.settings.limits
        if not texts:
            raise InvalidArgument(f"{field} is empty: send at least one")
        if len(texts) > limits.max_inputs_per_request:
            raise InvalidArgument(
                f"{len(texts)} {field} exceed the limit of {limits.max_inputs_per_request} per request "
                "(limits.max_inputs_per_request); split them over several calls"
            )
        for i, text in enumerate(texts):
            if len(text) > limits.max_input_chars:
                raise InvalidArgument(
                    f"{item} {i} is {len(text)} characters; the limit is {limits.max_input_chars} "
                    "(limits.max_input_chars)"
                )

    # -- model calls -------------------------------------------------------------------------------
    async def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult:
        arrived = time.perf_counter()
        self._check_texts(inputs)
        name = model or self.settings.local.default_embed_model
        if self.router.split(name) is not None:
            return await self._remote_embed(inputs, name, arrived, timeout)
        async with self._model(name, (Task.EMBED,), timeout) as m:
            out = await m.infer(inputs, truncate=truncate, deadline=self._deadline(timeout), what="input")
            tokens = sum(out.tokens)
            return EmbedResult(
                vectors=out.rows.tolist(),
                tokens=out.tokens,
                truncated=out.truncated,
                dimension=m.dimension,
                model=m.name,
                normalized=m.normalized,
                usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
                timing=_timing(arrived, out),
            )

    async def _remote_embed(
        self, inputs: Sequence[str], name: str, arrived: float, timeout: float | None
    ) -> EmbedResult:
        provider, model = self.router.resolve(name, Capability.EMBED)
        async with self._deadline_for(timeout):
            vectors = await provider.embed(model, inputs)
        if len(vectors) != len(inputs):
            raise Unavailable(f"{provider.name}: answered {len(vectors)} embeddings for {len(inputs)} inputs")
        elapsed = (time.perf_counter() - arrived) * 1000

        def unit_norm() -> bool:  # numpy, off the loop: a 2048 x 1536 answer is 3 million floats
            matrix = np.asarray(vectors, dtype=np.float64)
            return bool(matrix.size == 0 or np.all(np.abs(np.linalg.norm(matrix, axis=1) - 1.0) < 1e-3))

        normalized = await asyncio.get_running_loop().run_in_executor(self._executor, unit_norm)
        return EmbedResult(
            vectors=vectors,
            tokens=[0] * len(vectors),  # the upstream does not say per input
            truncated=[False] * len(vectors),
            dimension=len(vectors[0]) if vectors else 0,
            model=name,
            normalized=normalized,
            timing=Timing(inference_ms=elapsed, total_ms=elapsed),
        )

    # -- chat through providers ------------------------------------------------------------------
    @asynccontextmanager
    async def _deadline_for(self, timeout: float | None) -> AsyncIterator[None]:
        """The caller's deadline or http.total_timeout_s, whichever is sooner."""
        limit = self.settings.http.total_timeout_s
        budget = limit if timeout is None else min(timeout, limit)
        try:
            async with asyncio.timeout(budget):
                yield
        except TimeoutError:
            raise DeadlineExceeded(
                f"no answer within {budget:g}s (the call's deadline or http.total_timeout_s)"
            ) from None

    def _check_messages(self, messages: Sequence[Message]) -> None:
        if not messages:
            raise InvalidArgument("messages is empty: send at least one message")
        limits = self.settings.limits
        if len(messages) > limits.max_messages:
            raise InvalidArgument(
                f"{len(messages)} messages exceed the limit of {limits.max_messages} (limits.max_messages)"
            )
        total = 0
        for i, m in enumerate(messages):
            if m.role not in _ROLES:
                raise InvalidArgument(f"message {i} has role {m.role[:40]!r}; use one of {', '.join(sorted(_ROLES))}")
            total += len(m.content) + sum(len(t.arguments) for t in m.tool_calls)
        self._check_prompt_chars(total, "the messages")

    def _check_prompt_chars(self, chars: int, what: str) -> None:
        limit = self.settings.limits.max_prompt_chars
        if chars > limit:
            raise InvalidArgument(f"{what} hold {chars} characters; the limit is {limit} (limits.max_prompt_chars)")

    def _check_chat_options(self, options: ChatOptions) -> None:
        limits = self.settings.limits
        if len(options.stop) > limits.max_stop_sequences or any(len(s) > 1000 for s in options.stop):
            raise InvalidArgument(
                f"stop takes at most {limits.max_stop_sequences} strings of at most 1000 characters "
                "(limits.max_stop_sequences)"
            )
        if len(options.tools) > limits.max_tools:
            raise InvalidArgument(
                f"{len(options.tools)} tools exceed the limit of {limits.max_tools} (limits.max_tools)"
            )

    def _prepare(self, options: ChatOptions, capability: Capability) -> tuple[Provider, str, ChatOptions]:
        """Preset defaults, the provider and model, then the parameter policy: what will be sent."""
        self._check_chat_options(options)
        options = apply_preset(options, self.settings.presets)
        provider, model = self.router.resolve(options.model, capability)
        record = self.registry.lookup(provider.name, model)
        known = {name: availability_of(spec) for name, spec in record.parameters.items()} if record else {}
        checked = self.params.check(
            options, provider=provider.name, model=model, supported=provider.supported_parameters, known=known
        )
        return provider, model, checked

    @asynccontextmanager
    async def _learning(self, provider: Provider, model: str, sent: ChatOptions) -> AsyncIterator[None]:
        """Remember parameters an upstream refuses by name, so the next call does not repeat the failure."""
        try:
            yield
        except InvalidArgument as err:
            self.params.remember_rejection(provider.name, model, err.message, sent)
            raise

    async def chat(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> ChatResult:
        arrived = time.perf_counter()
        self._check_messages(messages)
        provider, model, options = self._prepare(options or ChatOptions(), Capability.CHAT)
        async with self._deadline_for(timeout), self._learning(provider, model, options):
            result = await provider.chat(model, messages, options)
        return _stamped(result, provider, model, arrived)

    async def chat_stream(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[ChatEvent]:
        self._check_messages(messages)
        provider, model, options = self._prepare(options or ChatOptions(), Capability.CHAT)
        async with self._learning(provider, model, options):
            async for event in self._relay(provider, model, provider.chat_stream(model, messages, options), timeout):
                yield event

    async def generate(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> GenerateResult:
        arrived = time.perf_counter()
        if not prompt:
            raise InvalidArgument("prompt is empty")
        self._check_prompt_chars(len(prompt), "the prompt")
        provider, model, options = self._prepare(options or ChatOptions(), Capability.GENERATE)
        async with self._deadline_for(timeout), self._learning(provider, model, options):
            result = await provider.generate(model, prompt, options)
        return _stamped(result, provider, model, arrived)

    async def generate_stream(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[ChatEvent]:
        if not prompt:
            raise InvalidArgument("prompt is empty")
        provider, model, options = self._prepare(options or ChatOptions(), Capability.GENERATE)
        async with self._learning(provider, model, options):
            async for event in self._relay(provider, model, provider.generate_stream(model, prompt, options), timeout):
                yield event

    async def _relay(
        self, provider: Provider, model: str, source: AsyncIterator[ChatEvent], timeout: float | None
    ) -> AsyncIterator[ChatEvent]:
        """Pass events through one by one (no buffering), stamping the last one with who answered and timing.

        The deadline bounds each wait for the next event, not the time an event spends with the
        consumer: a timer must never cancel a generator suspended in its consumer's hands.
        """
        arrived = time.perf_counter()
        limit = self.settings.http.total_timeout_s
        budget = limit if timeout is None else min(timeout, limit)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        first: float | None = None
        usage = Usage()
        async with aclosing(source):  # type: ignore[type-var]
            iterator = aiter(source)
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(iterator)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"the stream ran past {budget:g}s (the call's deadline or http.total_timeout_s)"
                    ) from None
                now = time.perf_counter()
                first = first or now
                if isinstance(event, UsageEvent):
                    usage = event.usage
                if isinstance(event, Done):
                    event = Done(
                        finish_reason=event.finish_reason,
                        timing=Timing(
                            queue_ms=(first - arrived) * 1000,
                            inference_ms=(now - first) * 1000,
                            total_ms=(now - arrived) * 1000,
                            input_tokens=usage.prompt_tokens,
                            output_tokens=usage.completion_tokens,
                        ),
                        provider=provider.name,
                        model=model,
                    )
                yield event

    async def nli(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> NliResult:
        arrived = time.perf_counter()
        self._check_texts([p + h for p, h in pairs], "pairs", "pair")
        name = model or self.settings.local.default_nli_model
        if not name:
            raise InvalidArgument("no model given and no default NLI model is configured (local.default_nli_model)")
        async with self._model(name, (Task.NLI, Task.CLASSIFY), timeout) as m:
            if m.manifest.output_kind != "logits":
                raise FailedPrecondition(f"model '{m.name}' has no classification head")
            out = await m.infer(list(pairs), truncate=truncate, deadline=self._deadline(timeout), what="pair")
            probs = softmax(out.rows)
            labels = m.manifest.labels
            predictions = [
                NliPrediction(
                    scores=[LabelScore(label, float(p)) for label, p in zip(labels, row, strict=True)],
                    label=labels[int(np.argmax(row))],
                )
                for row in probs
            ]
            tokens = sum(out.tokens)
            return NliResult(
                predictions=predictions,
                model=m.name,
                usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
                timing=_timing(arrived, out),
            )

    async def classify(
        self,
        text: str,
        labels: Sequence[str],
        *,
        model: str = "",
        multi_label: bool = False,
        hypothesis_template: str = "",
        timeout: float | None = None,
    ) -> ClassifyResult:
        """Zero-shot: NLI strategy for cross-encoders, embedding strategy for embedding models."""
        arrived = time.perf_counter()
        self._check_texts([text], "text", "text")
        if not labels:
            raise InvalidArgument("candidate_labels is empty: give at least one label")
        if len(set(labels)) != len(labels):
            raise InvalidArgument("candidate_labels has duplicates")
        self._check_texts(list(labels), "candidate_labels", "label")
        if hypothesis_template:
            self._check_texts([hypothesis_template], "hypothesis_template", "template")
            outside = hypothesis_template.replace("{}", "", 1)
            if "{}" not in hypothesis_template or "{" in outside or "}" in outside:
                raise InvalidArgument(
                    "hypothesis_template needs exactly one {} for the label and no other braces, e.g. "
                    f"'This example is {{}}.'; got {hypothesis_template[:80]!r}"
                )
        name = model or self.settings.local.default_classify_model
        if self.router.split(name) is not None:
            provider, upstream_model = self.router.resolve(name, Capability.CLASSIFY)
            async with self._deadline_for(timeout):
                remote = await provider.classify(
                    upstream_model, text, labels, multi_label=multi_label, hypothesis_template=hypothesis_template
                )
            elapsed = (time.perf_counter() - arrived) * 1000
            return ClassifyResult(
                scores=[LabelScore(label, score) for label, score in remote],
                model=name,
                strategy="nli",  # the remote zero-shot pipelines are NLI-based
                timing=Timing(inference_ms=elapsed, total_ms=elapsed),
            )
        deadline = self._deadline(timeout)
        async with self._model(name, (Task.NLI, Task.CLASSIFY, Task.EMBED), timeout) as m:
            if m.manifest.output_kind == "logits":
                template = hypothesis_template or DEFAULT_HYPOTHESIS_TEMPLATE
                # The label goes in literally: str.format would run format specs a caller wrote.
                pairs = [(text, template.replace("{}", label)) for label in labels]
                out = await m.infer(pairs, truncate=True, deadline=deadline, what="pair")
                scores = self._nli_scores(m, out.rows, multi_label)
                strategy = "nli"
                timing = _timing(arrived, out)
                tokens = sum(out.tokens)
            else:
                template = hypothesis_template or DEFAULT_EMBEDDING_TEMPLATE
                descriptions = [template.replace("{}", label) for label in labels]
                out = await m.infer([text, *descriptions], truncate=True, deadline=deadline, what="input")
                vectors = out.rows / np.maximum(np.linalg.norm(out.rows, axis=1, keepdims=True), 1e-12)
                cosines = vectors[1:] @ vectors[0]
                if multi_label:
                    scores = np.clip(cosines, 0.0, 1.0).astype(np.float64)
                else:
                    scores = softmax((cosines / EMBEDDING_SOFTMAX_TEMPERATURE).astype(np.float32))
                strategy = "embedding"
                timing = _timing(arrived, out)
                tokens = sum(out.tokens)
            ranked = sorted(
                (LabelScore(label, float(s)) for label, s in zip(labels, scores, strict=True)),
                key=lambda ls: ls.score,
                reverse=True,
            )
            return ClassifyResult(
                scores=ranked,
                model=m.name,
                strategy=strategy,
                usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
                timing=timing,
            )

    @staticmethod
    def _nli_scores(m: LocalModel, logits: np.ndarray, multi_label: bool) -> np.ndarray:
        """As the NLI zero-shot recipe: softmax of entailment across labels, or per label vs contradiction."""
        entail = entailment_index(m.manifest, m.name)
        if not multi_label:
            return softmax(logits[:, entail].astype(np.float32), axis=0)
        contra = label_index(m.manifest, "contradict")
        if contra is None:
            # Two-label heads ("entailment" vs "not"): the other column plays contradiction.
            others = [i for i in range(logits.shape[1]) if i != entail]
            if len(others) != 1:
                raise FailedPrecondition(f"model '{m.name}' has no contradiction label for multi_label scoring")
            contra = others[0]
        return softmax(logits[:, [contra, entail]].astype(np.float32))[:, 1]

    async def tokenize(
        self, text: str, *, model: str = "", add_special_tokens: bool = True, timeout: float | None = None
    ) -> TokenizeResult:
        arrived = time.perf_counter()
        self._check_texts([text], "text", "text")
        tokenizer = await self.pool.tokenizer(self.router.target(model or self.settings.local.default_embed_model))
        tokens = tokenizer.tokens(text, add_special_tokens=add_special_tokens)
        elapsed = (time.perf_counter() - arrived) * 1000
        return TokenizeResult(
            tokens=tokens,
            model=tokenizer.model_name,
            timing=Timing(tokenization_ms=elapsed, total_ms=elapsed, input_tokens=len(tokens)),
        )

    async def count_tokens(
        self, texts: Sequence[str], *, model: str = "", timeout: float | None = None
    ) -> CountTokensResult:
        arrived = time.perf_counter()
        self._check_texts(texts, "texts", "text")
        tokenizer = await self.pool.tokenizer(self.router.target(model or self.settings.local.default_embed_model))
        if len(texts) > 16:
            counts = await asyncio.get_running_loop().run_in_executor(self._executor, tokenizer.count, list(texts))
        else:
            counts = tokenizer.count(texts)
        elapsed = (time.perf_counter() - arrived) * 1000
        return CountTokensResult(
            counts=counts,
            total=sum(counts),
            model=tokenizer.model_name,
            timing=Timing(tokenization_ms=elapsed, total_ms=elapsed, input_tokens=sum(counts)),
        )

    async def count_message_tokens(self, *, model: str = "") -> CountTokensResult:
        raise Unimplemented("counting chat messages needs chat templates, which are not built yet; send texts")

    # -- model catalogue ---------------------------------------------------------------------------
    def _aliases(self) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {}
        for alias, target in self.settings.aliases.items():
            names.setdefault(target, []).append(alias)
        return names

    def _local_metadata(self, name: str, path: Path, aliases: Mapping[str, list[str]]) -> ModelMetadata | None:
        try:
            manifest = ModelManifest.read(path)
        except (OSError, ValueError):
            return None  # a broken folder is reported when someone loads it
        model_id = f"{LOCAL_PREFIX}{name}"
        tasks = [Task(manifest.task)] + ([Task.CLASSIFY] if manifest.task in ("embed", "nli") else [])
        record = self.registry.match_embedded(name)
        return ModelMetadata(
            info=ModelInfo(model_id, "local", tasks, True, manifest.architecture, aliases.get(model_id, [])),
            embedding_dimension=(manifest.dimension or 0) if manifest.task == "embed" else 0,
            max_sequence_length=manifest.max_length,
            context_window=manifest.max_length,
            labels=list(manifest.labels),
            source="local",
            pricing=Pricing(),  # it runs here: nothing to pay
            tokenizer_family=record.tokenizer_family if record else manifest.architecture,
        )

    def _provider_metadata(self, provider: Provider, model: str, aliases: Mapping[str, list[str]]) -> ModelMetadata:
        record = self.registry.lookup(provider.name, model)
        known = {name: availability_of(spec) for name, spec in record.parameters.items()} if record else {}
        model_id = f"{provider.name}/{model}"
        tasks = [Task(c.value) for c in sorted(provider.capabilities)]
        return ModelMetadata(
            info=ModelInfo(
                model_id,
                provider.name,
                tasks,
                provider.local,
                record.description if record else "",
                aliases.get(model_id, []),
            ),
            context_window=record.context_window if record else 0,
            max_output_tokens=record.max_output_tokens if record else 0,
            source=record.source if record else "",
            parameters=self.params.availability(provider.name, model, provider.supported_parameters, known),
            pricing=Pricing() if provider.local else pricing_of(record),
            tokenizer_family=record.tokenizer_family if record else "",
        )

    async def model_metadata(self, model: str) -> ModelMetadata:
        """What the gateway knows of one model: parameters per provider, prices, windows."""
        if not model:
            raise InvalidArgument("no model given")
        aliases = self._aliases()
        preset = self.settings.presets.get(model)
        target = self.settings.aliases.get(preset.model if preset else model, preset.model if preset else model)
        found = self.router.split(target)
        if found is not None:
            provider = self.router.providers[found[0]]
            meta = self._provider_metadata(provider, found[1], aliases)
        else:
            name = self.pool.canonical(target)
            path = self.pool.available().get(name)
            local = self._local_metadata(name, path, aliases) if path else None
            if local is None:
                raise NotFound(
                    f"unknown model '{model}': neither a local model nor provider/model of a configured provider"
                )
            meta = local
        if preset is not None:
            info = replace(meta.info, id=model, description=preset.description or f"preset for {preset.model}")
            meta = replace(meta, info=info)
        return meta

    async def list_models(self, *, task: Task | None = None, local_only: bool = False) -> list[ModelMetadata]:
        """Presets, local models from their manifests, then what each provider lists right now."""
        aliases = self._aliases()
        out: list[ModelMetadata] = []
        for name in sorted(self.settings.presets):
            with contextlib.suppress(RatatoskrError):
                out.append(await self.model_metadata(name))
        for name, path in sorted(self.pool.available().items()):
            local = self._local_metadata(name, path, aliases)
            if local is not None:
                out.append(local)
        listed = await self.router.list_models()
        for provider_name, answer in listed.items():
            provider = self.router.providers[provider_name]
            if isinstance(answer, RatatoskrError):
                log.warning(
                    "provider did not list its models", extra={"provider": provider_name, "reason": str(answer)}
                )
                continue
            for model in answer:
                meta = self._provider_metadata(provider, model, aliases)
                out.append(replace(meta, source="live" if not meta.source else meta.source))
        return [m for m in out if (task is None or task in m.info.tasks) and (not local_only or m.info.local)]

    # -- administration ------------------------------------------------------------------------------
    async def load_model(self, name: str) -> LoadedModel:
        async with self.pool.lease(name):
            pass
        name = self.pool.canonical(name)
        return next(m for m in self.pool.loaded() if m.name == name)

    async def unload_model(self, name: str) -> bool:
        return await self.pool.unload(name)

    def loaded_models(self) -> list[LoadedModel]:
        return self.pool.loaded()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for router in (self.router, *self._retired):
            await router.aclose()
        await self.pool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)
