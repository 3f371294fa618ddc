"""The one Temporal client factory used by the API, the worker, the CLI and the tests."""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)
from temporalio.envconfig import ClientConfigProfile
from temporalio.runtime import Runtime

from core.encryption import encryption_codec
from core.settings import Settings

# Keel's payload types all live in `schemas/`, passed through the workflow sandbox, so one
# adapter per type serves every workflow run. Bounded, in case a hint is ever sandbox-local.
_type_adapter = functools.lru_cache(maxsize=512)(TypeAdapter)


class _SharedAdaptersJSONConverter(PydanticJSONPlainPayloadConverter):
    """Pydantic JSON with one process-wide cache of type adapters. Temporal builds a payload
    converter per workflow run, and the stock one caches adapters per converter: every
    parked task kept its own adapters (~18 KB) and every run rebuilt them."""

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        return _type_adapter(Any if type_hint is None else type_hint).validate_json(payload.data)


class KeelPayloadConverter(CompositePayloadConverter):
    """Temporal's default converters, with JSON done by pydantic over shared adapters."""

    def __init__(self) -> None:
        json_converter = _SharedAdaptersJSONConverter()
        super().__init__(
            *(
                json_converter if isinstance(converter, JSONPlainPayloadConverter) else converter
                for converter in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


_data_converter = DataConverter(payload_converter_class=KeelPayloadConverter)


def data_converter(settings: Settings | None) -> DataConverter:
    """The pydantic data converter for Keel's payload models; with encryption on
    (KEEL_ENCRYPTION_KEYS), payloads and failure messages are encrypted as well."""
    codec = encryption_codec(settings) if settings is not None else None
    if codec is None:
        return _data_converter
    return dataclasses.replace(
        _data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def connect_temporal(
    address: str | None = None,
    namespace: str | None = None,
    *,
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """Connect with Temporal's standard client configuration (`TEMPORAL_ADDRESS`,
    `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, TLS, profiles in the config file), then the
    explicit overrides, using Keel's data converter (encrypting when `settings` say so).
    `runtime` (metrics) and `interceptors` (tracing) apply to workers built on the client."""
    config = ClientConfigProfile.load().to_client_connect_config()
    if address is not None:
        config["target_host"] = address
    if namespace is not None:
        config["namespace"] = namespace
    config.setdefault("target_host", "127.0.0.1:7233")
    return await Client.connect(
        **config,
        data_converter=data_converter(settings),
        runtime=runtime,
        interceptors=interceptors,
    )
