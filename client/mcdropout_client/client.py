"""The blocking client: :class:`Client`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from mcdropout_client import _messages, ranking
from mcdropout_client._base import ClientBase, Metadata, Timeout
from mcdropout_client._retry import Attempts
from mcdropout_client.errors import NotFound, raise_for
from mcdropout_client.feedback import FeedbackResult, feedback_request, feedback_result
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2, mcdropout_pb2_grpc
from mcdropout_client.ranking import RankedPool
from mcdropout_client.results import ModelDescription, ModelSummary, PredictResult

_Response = TypeVar("_Response")


class Client(ClientBase):
    """Blocking client of the mcdropout PredictionService.

    Example::

        with Client("localhost:50051") as client:
            result = client.predict(x, model="boston", samples=200, seed=0)
            print(result.mean, result.std)

    Every method raises a :class:`mcdropout_client.errors.ClientError` subclass when the call
    fails (after retrying calls that never ran), and ``ValueError`` for arguments it can check
    locally.
    The constructor's arguments are documented on :meth:`ClientBase.__init__`.
    """

    def _open(self) -> None:
        if self._credentials is None:
            self._channel = grpc.insecure_channel(self.target, options=self._options)
        else:
            self._channel = grpc.secure_channel(self.target, self._credentials, self._options)
        self._stub = mcdropout_pb2_grpc.PredictionServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def predict(
        self, x: Any, *, model: str, version: int | None = None, samples: int | None = None,
        seed: int | None = None, tolerance: float | None = None,
        interval_levels: Sequence[float] = (), outputs: Sequence[str] | None = None,
        timeout: Timeout = ..., metadata: Metadata = (), request_id: str | None = None,
        calibrated: bool = False, set_levels: Sequence[float] = (),
    ) -> PredictResult:
        """Run T stochastic passes of ``model`` over the rows of ``x``.

        Args:
            x: input rows of a one-input model, shape (rows, *input_shape); or, for any model,
                a mapping input name -> rows, every input of the model once, all with the same
                number of rows (``metadata(model).inputs`` names them). Any numeric dtype (the
                server casts to each input's dtype).
            model: model name.
            version: model version; ``None`` for the latest.
            samples: passes T; ``None`` for the model's default. With ``tolerance``, the ceiling.
            seed: seed of the dropout masks in 0..2**64-1; ``None`` lets the server draw one.
            tolerance: stop once every mean's Monte Carlo standard error is <= this (output units).
            interval_levels: coverage levels of central intervals, each in (0, 1).
            outputs: statistics to return (see ``OUTPUT_NAMES``); ``None`` for the task default.
            timeout: deadline of the call in seconds; ``...`` for the client's default.
            metadata: extra ``(key, value)`` pairs for this call.
            request_id: id echoed in server logs and the result.
            calibrated: apply the version's calibration (``metadata(model).calibration``):
                conformal intervals for regression, temperature-scaled passes for a
                classifier. Asking for ``"prediction_sets"`` or ``"abstain"``, or giving
                ``set_levels``, turns it on too.
            set_levels: classification: coverage levels of conformal prediction sets, each in
                (0, n/(n+1)] for a calibration set of n rows; adds ``"prediction_sets"``.

        Returns:
            A :class:`PredictResult`; for a model with several heads, its ``heads`` hold one
            :class:`HeadResult` per head.

        Raises:
            ValueError: an unknown output name, a seed out of range, an unsupported dtype.
            ClientError: the server refused or failed the call (e.g. ``InvalidArgument``;
                ``FailedPrecondition`` for a calibrated request to a version without
                calibration).
        """
        request = _messages.predict_request(
            x, model=model, version=version, samples=samples, seed=seed, tolerance=tolerance,
            interval_levels=interval_levels, outputs=outputs, request_id=request_id,
            calibrated=calibrated, set_levels=set_levels,
        )
        reply = self._invoke(self._stub.Predict, request, timeout, metadata)
        return _messages.predict_result(reply)

    def feedback(self, model: str, request_id: str, targets: Any, *,
                 rows: Sequence[int] | None = None, timeout: Timeout = ...,
                 metadata: Metadata = ()) -> FeedbackResult:
        """Send the observed targets of an answered :meth:`predict` (by its ``request_id``).

        The server matches them with the answer it kept and counts them in its live
        calibration gauges (interval coverage, ECE, accuracy, NLL per model and version).

        Args:
            model: model name of the answer.
            request_id: the answer's ``PredictResult.request_id``.
            targets: regression: (rows, outputs) or (rows,) values; classification: (rows,)
                integer class indices. A model with several heads: a mapping head name ->
                such an array (a head may be left out).
            rows: the answer's rows the targets are for (0-based, each at most once);
                ``None`` for every row in order.
            timeout: deadline of the call in seconds; ``...`` for the client's default.
            metadata: extra ``(key, value)`` pairs for this call.

        Returns:
            A :class:`FeedbackResult`: rows matched and the version that answered.

        Raises:
            ValueError: an empty model or request id, a negative row index.
            NotFound: no answer kept under that id (unknown, already fed back, expired or
                dropped; the message says which).
            InvalidArgument: targets of the wrong shape or dtype, labels out of range, rows out
                of range.
            FailedPrecondition: the server keeps no answers.
        """
        request = feedback_request(model, request_id, targets, rows)
        reply = self._invoke(self._stub.Feedback, request, timeout, metadata)
        return feedback_result(reply)

    def rank_pool(
        self, pool: Any, *, model: str, top_k: int, acquisition: str = "bald",
        chunk_rows: int = 1024, samples: int | None = None, seed: int | None = None,
        head: str | None = None, calibrated: bool = False, version: int | None = None,
        timeout: Timeout = None, metadata: Metadata = (), request_id: str | None = None,
    ) -> RankedPool:
        """Rank the rows of ``pool`` by an acquisition function; return the best ``top_k``.

        The pool is streamed to the server in chunks of ``chunk_rows`` rows, each made only when
        gRPC is ready to send it: the client holds one chunk and the server one chunk and the
        ``top_k`` best rows, however large the pool (pass an ``np.memmap`` or
        ``np.load(path, mmap_mode="r")`` for a pool larger than memory). Each chunk is scored as
        ``predict(chunk, samples=samples, seed=seed + c)`` would score it (chunk c from 0).
        See docs/acquisition.md for what each acquisition function measures.

        Args:
            pool: the rows: an array (rows, *input_shape); a mapping input name -> rows; or an
                iterable (not a list) of such arrays or mappings, read one at a time (like
                :meth:`predict`'s ``x``).
            model: model name.
            top_k: rows to return, >= 1 (at most the server's limit, about 3.7 million rows per
                64 MiB of message limit).
            acquisition: "bald" (mutual information), "predictive_entropy" or
                "variation_ratio" for a classification head, "predictive_std" for a
                regression head (std when the model has no tau; mean over the outputs).
            chunk_rows: rows per message, >= 1 (at most the server's ``max_rows``).
            samples: passes T per row; ``None`` for the model's default.
            seed: seed of the first chunk in 0..2**64-1; ``None`` lets the server draw one.
            head: the head to score (required for a model with several heads).
            calibrated: score with the version's calibration (a classifier's temperature).
            version: model version; ``None`` for the latest, fixed for the whole pool.
            timeout: deadline of the whole call in seconds; ``None`` (the default) for none,
                since a large pool takes long; ``...`` for the client's default.
            metadata: extra ``(key, value)`` pairs for this call.
            request_id: id of the call in the server's logs.

        Returns:
            A :class:`~mcdropout_client.ranking.RankedPool`: indices and scores best first.

        Raises:
            ValueError: bad settings, or a chunk that cannot be sent (an unsupported dtype,
                inputs of different lengths), raised as it is rather than as the cancelled call.
            ClientError: the server refused or failed the call (e.g. ``InvalidArgument`` for an
                acquisition that does not fit the head's task). The call is not retried: the
                pool's chunks are made as they are sent.
        """
        first = ranking.settings_request(
            model=model, top_k=top_k, acquisition=acquisition, samples=samples, seed=seed,
            head=head, calibrated=calibrated, version=version, request_id=request_id)
        started = threading.Event()
        calls: list[grpc.Future] = []

        def cancel() -> None:  # on gRPC's sending thread, once a chunk could not be made
            started.wait()
            calls[0].cancel()

        stream = ranking.PoolStream(pool, chunk_rows, first, on_failure=cancel)
        calls.append(self._stub.RankPool.future(
            iter(stream), timeout=self._call_timeout(timeout),
            metadata=self._call_metadata(metadata)))
        started.set()
        try:
            reply = calls[0].result()
        except (grpc.RpcError, grpc.FutureCancelledError) as error:
            stream.raise_for(error)
        return ranking.ranked_pool(reply)

    def metadata(self, model: str, version: int | None = None, *, timeout: Timeout = ...,
                 metadata: Metadata = ()) -> ModelDescription:
        """Describe ``model`` (``version`` ``None`` for the latest): task, shapes, labels, limits.

        Raises:
            NotFound: no such model or version.
        """
        request = _messages.metadata_request(model, version)
        reply = self._invoke(self._stub.GetModelMetadata, request, timeout, metadata)
        return _messages.model_description(reply)

    def models(self, *, timeout: Timeout = ..., metadata: Metadata = ()) -> list[ModelSummary]:
        """List the models the server serves, with their tasks and versions."""
        request = mcdropout_pb2.ListModelsRequest()
        return _messages.model_summaries(
            self._invoke(self._stub.ListModels, request, timeout, metadata)
        )

    def health(self, service: str = "", *, timeout: Timeout = ...,
               metadata: Metadata = ()) -> str:
        """Ask the standard gRPC health service about ``service`` ("" for the whole server).

        Returns:
            ``"SERVING"``, ``"NOT_SERVING"``, ``"UNKNOWN"``, or ``"SERVICE_UNKNOWN"`` when the
            server does not know the service name (e.g. a model it does not serve).
        """
        request = _messages.health_request(service)
        try:
            reply = self._invoke(self._health.Check, request, timeout, metadata)
        except NotFound:
            return "SERVICE_UNKNOWN"
        return _messages.health_status(reply)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _invoke(self, method: Callable[..., _Response], request: Any, timeout: Timeout,
                metadata: Metadata) -> _Response:
        attempts = Attempts(self.retry_policy, self._call_timeout(timeout))
        call_metadata = self._call_metadata(metadata)
        while True:
            try:
                return method(request, timeout=attempts.remaining(), metadata=call_metadata)
            except grpc.RpcError as error:
                delay = attempts.next_delay(error)
                if delay is None:
                    raise_for(error)
                time.sleep(delay)
