"""Server settings, declared once: defaults, environment variables and command-line flags.

Each field of :class:`ServerSettings` is one setting. Its environment variable is
``MCDROPOUT_<FIELD NAME>`` and its flag ``--<field-name>``; both are generated from the field, so
adding a setting here adds it everywhere (``mcdropout serve --help`` included). Precedence:
flag, then environment, then the default. No other module reads the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcdropout.loading import IMPORT_MODULE_HELP, parse_modules

ENV_PREFIX = "MCDROPOUT_"
ON_LOAD_ERROR = ("serve", "exit")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "keyvalue")
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
             "false": False, "0": False, "no": False, "off": False}


def _meta(help: str, *, choices: tuple[str, ...] = (), minimum: float | None = None,
          secret: bool = False, flag: str | None = None, metavar: str | None = None
          ) -> dict[str, Any]:
    # ``flag``: the flag's name where the field's reads badly as one (the field's stays an alias).
    return {"help": help, "choices": choices, "minimum": minimum, "secret": secret, "flag": flag,
            "metavar": metavar}


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server can be told at start.

    Raises:
        ValueError: (at construction) a value outside its allowed range, naming the setting.
    """

    model_root: Path | None = field(default=None, metadata=_meta(
        "Model store directory (<root>/<name>/<version>/). Unset: the built-in default models, "
        "trained on first use and cached."))
    host: str = field(default="0.0.0.0", metadata=_meta("Address the gRPC server binds to."))
    port: int = field(default=50051, metadata=_meta(
        "gRPC port; 0 picks a free port (the bound one is logged).", minimum=0))
    metrics_port: int = field(default=9090, metadata=_meta(
        "Prometheus metrics port; 0 disables the endpoint.", minimum=0))
    metrics_host: str | None = field(default=None, metadata=_meta(
        "Address the metrics endpoint binds to (plain HTTP, no token: bind it to an internal "
        "address); unset: the same as host."))
    workers: int = field(default=4, metadata=_meta(
        "Threads that run model passes, off the gRPC event loop (TensorFlow parallelises each "
        "pass itself).", minimum=1))
    processes: int = field(default=1, metadata=_meta(
        "Server processes sharing the gRPC port (SO_REUSEPORT, Linux: connections are spread "
        "over them), each with its own models, batching and worker threads; started and "
        "drained together. One metrics endpoint: counters, histograms and in-flight/queue "
        "counts summed, the rolling calibration and drift gauges per process (label "
        "'process'). Worth it for many small requests from many connections (batch-1 "
        "traffic, bound by one process's Python, the GIL), or wherever one process leaves "
        "cores idle; for isolation or several machines use replicas. Every process loads "
        "every model (memory x N). A process that dies makes the others drain and the server "
        "exit 1.", minimum=1))
    max_concurrent_rpcs: int = field(default=64, metadata=_meta(
        "RPCs handled at once; more get RESOURCE_EXHAUSTED (bounds the queue). Health checks "
        "and OIP ServerLive/ServerReady are not counted (Watch streams have their own limits).",
        minimum=1))
    max_health_watches: int = field(default=256, metadata=_meta(
        "Health Watch streams open at once, all clients together; more get RESOURCE_EXHAUSTED "
        "(0 refuses every Watch; Check is never limited).", minimum=0))
    max_health_watches_per_peer: int = field(default=8, metadata=_meta(
        "Health Watch streams open at once from one client address (IP); more get "
        "RESOURCE_EXHAUSTED.", minimum=0))
    max_queue: int = field(default=32, metadata=_meta(
        "Predict requests that may wait for a worker; beyond it new ones get RESOURCE_EXHAUSTED "
        "at once (running work is never dropped). Requests whose deadline is sooner than the "
        "expected queue wait get DEADLINE_EXCEEDED at once.", minimum=1))
    batching: bool = field(default=True, metadata=_meta(
        "Dynamic batching: merge queued Predict requests for the same model version and sample "
        "count into one engine call (each keeps its own seed and gets the answer it would get "
        "alone). Adaptive sampling, intervals and raw samples always run alone."))
    batch_max_rows: int = field(default=64, metadata=_meta(
        "Most input rows in one merged engine call.", minimum=1))
    batch_max_wait_ms: float = field(default=2.0, metadata=_meta(
        "While workers are busy, how long a request may wait for others to merge with, ms "
        "(on an idle server requests start at once).", minimum=0))
    max_message_bytes: int = field(default=64 * 2**20, metadata=_meta(
        "Largest request or response message, bytes.", minimum=1024))
    received_bytes_budget_mb: int = field(default=256, metadata=_meta(
        "Received request messages that calls in progress may hold at once, all clients "
        "together, MiB: a call counts its message from when the server first sees it until the "
        "call ends, and one that would go beyond gets RESOURCE_EXHAUSTED. Bytes gRPC buffers "
        "while a message is still arriving are not counted.", minimum=1))
    max_rows: int = field(default=10_000, metadata=_meta(
        "Largest number of input rows per request.", minimum=1))
    max_row_samples: int = field(default=10_000_000, metadata=_meta(
        "Largest rows x samples (total row-passes) per request.", minimum=1))
    max_samples: int = field(default=10_000, metadata=_meta(
        "Ceiling on passes per request for every model (a model's own limit may be lower).",
        minimum=1))
    max_raw_sample_values: int = field(default=10_000_000, metadata=_meta(
        "Largest passes x rows x outputs kept for raw samples and intervals.", minimum=1))
    memory_budget_mb: int = field(default=256, metadata=_meta(
        "Memory one request's passes may use at once, MiB; passes run in chunks that fit.",
        minimum=1))
    warmup_sample_classes: bool = field(default=False, metadata=_meta(
        "At load, also compile the mask kernels of every power-of-two class of passes up to "
        "max_samples, so that no request compiles one later (the first request of a new class "
        "otherwise waits some 60-120 ms). Costs start-up time per model version, on load and "
        "reload: about 2 s for the default diabetes model (9 classes up to T=10000)."))
    grace_seconds: float = field(default=20.0, metadata=_meta(
        "On SIGTERM/SIGINT: how long in-flight requests may take to finish, seconds.",
        minimum=0))
    log_level: str = field(default="INFO", metadata=_meta(
        "Log level (DEBUG logs one line per request).", choices=LOG_LEVELS))
    log_format: str = field(default="json", metadata=_meta(
        "Log line format.", choices=LOG_FORMATS))
    tls_cert_file: Path | None = field(default=None, metadata=_meta(
        "PEM server certificate chain; with tls_key_file, the gRPC port speaks TLS only."))
    tls_key_file: Path | None = field(default=None, metadata=_meta(
        "PEM private key of tls_cert_file."))
    tls_client_ca_file: Path | None = field(default=None, metadata=_meta(
        "PEM CA certificates; when set, clients must present a certificate they signed "
        "(mutual TLS). Needs tls_cert_file."))
    auth_tokens_file: Path | None = field(default=None, metadata=_meta(
        "Bearer tokens, one per line (# comments and blank lines ignored); when set, every RPC "
        "but health checks needs 'authorization: Bearer <token>'. Re-read on SIGHUP."))
    auth_tokens: str = field(default="", metadata=_meta(
        "Comma-separated bearer tokens, accepted beside those of auth_tokens_file.",
        secret=True))
    allow_unsafe_models: bool = field(default=False, metadata=_meta(
        "UNSAFE: load model files that run arbitrary Python code when loaded (e.g. Keras Lambda "
        "layers). Only for a model store whose every writer you trust."))
    allow_store_symlinks: bool = field(default=False, metadata=_meta(
        "Serve model versions that symbolic links in the model store lead to outside model_root "
        "(a model or version folder, model.keras or metadata.json); off, such a version is "
        "refused. Links that stay inside the root always work."))
    reload_interval_seconds: float = field(default=10.0, metadata=_meta(
        "How often the model store is checked for new, changed or removed versions, seconds; "
        "0 turns polling off (SIGHUP still reloads).", minimum=0))
    on_load_error: str = field(default="serve", metadata=_meta(
        "What a model version that fails to load at start does: 'serve' serves every good "
        "version, logs each bad one with its reason and reports it not ready (health of its "
        "name NOT_SERVING when no version of it serves, OIP ModelReady false); 'exit' tries "
        "every version, then exits 1 listing each bad one (for CI). Either way the server exits "
        "1 when no version at all loads; on reload a bad version is always rejected and logged "
        "while the served ones stay.", choices=ON_LOAD_ERROR))
    import_modules: tuple[str, ...] = field(default=(), metadata=_meta(
        IMPORT_MODULE_HELP, flag="import-module", metavar="MODULE"))
    feedback_store_rows: int = field(default=100_000, metadata=_meta(
        "Rows of recent Predict answers (native and OIP) kept for the Feedback RPC to match "
        "targets against, all models together; the oldest answers are dropped first. Memory: "
        "about 8 bytes x (2 x outputs) per regression row, 8 bytes x classes per classifier row. "
        "0 keeps none: Feedback answers FAILED_PRECONDITION.", minimum=0))
    feedback_store_mb: int = field(default=256, metadata=_meta(
        "Memory the kept answers may take, MiB, all models together (a wide classifier's rows "
        "are large); the oldest answers are dropped first to stay under it.", minimum=1))
    feedback_ttl_seconds: float = field(default=3600.0, metadata=_meta(
        "How long an answer may wait for its Feedback, seconds; 0: until the row bound drops "
        "it.", minimum=0, flag="feedback-ttl"))
    feedback_window: int = field(default=1000, metadata=_meta(
        "Rows the rolling gauges average over, per model, version and head: the last rows fed "
        "back (coverage, ECE, NLL, accuracy) and the last rows served (abstention rate, drift "
        "shares).", minimum=1))
    monitored_levels: tuple[float, ...] = field(default=(0.9, 0.95), metadata=_meta(
        "Levels at which fed-back rows' interval and prediction-set coverage are tracked, each "
        "in (0, 1).", metavar="LEVEL"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            minimum, choices = f.metadata["minimum"], f.metadata["choices"]
            if minimum is not None and value < minimum:
                raise ValueError(f"{env_name(f.name)} must be >= {minimum}, got {value}")
            if choices and value not in choices:
                raise ValueError(f"{env_name(f.name)} must be one of {', '.join(choices)}, "
                                 f"got {value!r}")
        if not all(0.0 < level < 1.0 for level in self.monitored_levels):
            raise ValueError(f"MCDROPOUT_MONITORED_LEVELS must each be in (0, 1), got "
                             f"{','.join(map(str, self.monitored_levels))}")
        if self.port > 65535 or self.metrics_port > 65535:
            raise ValueError(f"ports must be in 0..65535, got port={self.port}, "
                             f"metrics_port={self.metrics_port}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("MCDROPOUT_TLS_CERT_FILE and MCDROPOUT_TLS_KEY_FILE go together, got "
                             f"cert={self.tls_cert_file}, key={self.tls_key_file}")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("MCDROPOUT_TLS_CLIENT_CA_FILE (mutual TLS) needs "
                             "MCDROPOUT_TLS_CERT_FILE and MCDROPOUT_TLS_KEY_FILE, got neither")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServerSettings:
        """Settings from ``MCDROPOUT_*`` variables in ``environ``; the rest keep their defaults.

        Raises:
            ValueError: a variable that does not parse or is out of range.
        """
        return cls.from_args(argparse.Namespace(), environ)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> ServerSettings:
        """Settings from parsed flags (see :func:`add_arguments`), then ``environ``, then defaults.

        Raises:
            ValueError: a value that does not parse or is out of range.
        """
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            flag_value = getattr(args, f.name, None)
            if isinstance(flag_value, list):  # a repeated flag: every occurrence together
                values[f.name] = tuple(item for part in flag_value for item in part)
            elif flag_value is not None:
                values[f.name] = flag_value
            elif env_name(f.name) in environ:
                values[f.name] = _parse(f.name, environ[env_name(f.name)])
        return cls(**values)

    def describe(self) -> str:
        """``name=value`` pairs of every setting on one line, secrets masked, for the start log."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = "***" if f.metadata["secret"] and value else value
            if isinstance(value, tuple):
                shown = ",".join(map(str, value))
            parts.append(f"{f.name}={shown}")
        return " ".join(parts)


def env_name(name: str) -> str:
    """The environment variable of a setting, e.g. ``MCDROPOUT_PORT`` for ``port``."""
    return ENV_PREFIX + name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per setting to ``parser``; each help text names its env var and default.

    Flags default to None so :meth:`ServerSettings.from_args` can tell "not given" from a value.
    """
    for f in dataclasses.fields(ServerSettings):
        kind = _kind(f.name)
        choices = f.metadata["choices"] or None
        flags = ["--" + name.replace("_", "-") for name in (f.metadata["flag"], f.name) if name]
        # A list setting's flag may be repeated; its variable holds the items comma-separated.
        repeated = kind is tuple
        metavar = f.metadata["metavar"] or ("TEXT" if kind is str else kind.__name__.upper())
        parser.add_argument(
            *flags,
            dest=f.name,
            type=functools.partial(_parse, f.name, error=argparse.ArgumentTypeError),
            default=None,
            action="append" if repeated else "store",
            choices=choices,
            metavar=metavar if choices is None else None,
            help=f"{f.metadata['help']} [env {env_name(f.name)}"
                 f"{', comma-separated' if repeated else ''}; default: {_shown_default(f)}]",
        )


def _shown_default(f: dataclasses.Field[Any]) -> str:
    if f.default is None or f.default == ():
        return "unset"
    return ",".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)


def _kind(name: str) -> type:
    hint = typing.get_type_hints(ServerSettings)[name]
    if typing.get_origin(hint) is tuple:
        return tuple
    options = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return typing.cast(type, options[0])


def _parse(name: str, text: str, error: type[Exception] = ValueError) -> Any:
    kind = _kind(name)
    if kind is tuple:
        items = parse_modules(text)
        if typing.get_args(typing.get_type_hints(ServerSettings)[name])[0] is float:
            try:
                return tuple(float(item) for item in items)
            except ValueError:
                raise error(f"{env_name(name)} must be comma-separated numbers, got "
                            f"{text!r}") from None
        return items
    if kind is Path:
        return Path(text) if text else None
    if kind is bool:
        if text.lower() in _BOOLEANS:
            return _BOOLEANS[text.lower()]
        raise error(f"{env_name(name)} must be true or false, got {text!r}")
    if kind is str:
        choices = ServerSettings.__dataclass_fields__[name].metadata["choices"]
        # Case-insensitive choices: "debug" and "DEBUG" both mean DEBUG.
        return next((c for c in choices if c.lower() == text.lower()), text)
    try:
        return kind(text)
    except ValueError:
        raise error(f"{env_name(name)} must be {'an integer' if kind is int else 'a number'}, "
                    f"got {text!r}") from None
