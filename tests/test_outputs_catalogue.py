"""The output catalogue (mcdropout_client.outputs) agrees with the proto, the engine and the client.

It is the one declaration the codecs, the server's output rules and the client derive from, so
each fact it states is checked against the thing it describes.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from mcdropout_client import HeadResult, PredictResult
from mcdropout_client import outputs as catalogue
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb

from mcdropout import Prediction
from mcdropout.engine import MCDropoutPredictor
from mcdropout.engine.prediction import ROW_STATISTICS


def test_every_output_is_an_enum_value_and_a_response_field() -> None:
    enum = {name.lower() for name, value in pb.Output.items() if value}
    assert set(catalogue.OUTPUT_NAMES) == enum
    fields = set(pb.PredictResponse.DESCRIPTOR.fields_by_name)
    assert set(catalogue.OUTPUT_NAMES) <= fields


def test_a_head_result_holds_every_output_as_a_response_does() -> None:
    # The codecs fill a HeadResult and a PredictResponse with one function: same names, types.
    response = pb.PredictResponse.DESCRIPTOR.fields_by_name
    head = pb.HeadResult.DESCRIPTOR.fields_by_name
    for name in catalogue.OUTPUT_NAMES:
        assert name in head, name
        assert (head[name].number, head[name].message_type) == (
            response[name].number, response[name].message_type), name
    client = {f.name for f in dataclasses.fields(HeadResult)}
    assert {spec.attribute for spec in catalogue.OUTPUTS} <= client


def test_every_output_is_an_engine_and_a_client_attribute() -> None:
    engine = {f.name for f in dataclasses.fields(Prediction)}
    client = {f.name for f in dataclasses.fields(PredictResult)}
    for spec in catalogue.OUTPUTS:
        assert spec.attribute in engine and spec.attribute in client, spec.name
    # The engine's per-row statistics are exactly the outputs held per row in one tensor.
    per_row = {s.attribute for s in catalogue.TENSOR_OUTPUTS if s.shape[0] == "rows"}
    assert per_row == set(ROW_STATISTICS)


def _predictor(units: int, activation: str, tau: float | None) -> MCDropoutPredictor:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dropout(0.3),
                              keras.layers.Dense(units, activation=activation)])
    return MCDropoutPredictor(model, tau=tau)


def test_dtypes_shapes_and_tasks_match_what_the_engine_computes() -> None:
    for predictor in (_predictor(2, "linear", 5.0), _predictor(2, "linear", None),
                      _predictor(3, "softmax", None)):
        got = predictor.predict(np.zeros((3, 4)), samples=4, seed=0, interval_levels=[0.5],
                                return_samples=True)
        for spec in catalogue.TENSOR_OUTPUTS:
            value = getattr(got, spec.attribute)
            if not spec.applies(predictor.task, predictor.tau is not None):
                assert value is None, spec.name
                continue
            assert value is not None, spec.name
            assert value.ndim == len(spec.shape), spec.name
            assert value.shape[spec.shape.index("rows")] == 3, spec.name
            assert value.dtype.kind == np.dtype(spec.dtype).kind, spec.name


def test_defaults_are_allowed_and_oip_names_are_unique() -> None:
    for task in ("regression", "classification"):
        for tau in (True, False):
            assert set(catalogue.defaults(task, tau)) <= set(catalogue.allowed(task, tau))
        names = [n for s in catalogue.OUTPUTS for n in s.oip.get(task, ())]
        assert len(names) == len(set(names))
